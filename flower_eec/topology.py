"""The end-edge-cloud tree: cloud -> edges -> devices, with assignment, mobility and connectivity.

FedAgg's topology (Wu et al., arXiv 2312.11489) made dynamic as in FedEEC (arXiv 2501.00693).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from flower_eec.errors import ConfigError

ASSIGNMENTS: tuple[str, ...] = ("contiguous", "round_robin", "random")
ORPHAN_POLICIES: tuple[str, ...] = ("skip", "cloud")

# One independent random stream per purpose, so that turning one feature on (say edge dropout)
# never changes the draws of another (mobility).
_ASSIGN_STREAM = 0
_MODELS_STREAM = 1
_MOBILITY_STREAM = 2
_DEVICE_DROPOUT_STREAM = 3
_EDGE_DROPOUT_STREAM = 4


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _check_int(name: str, value: object, minimum: int) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < minimum
    ):
        raise ConfigError(
            f"{name}={value!r} is not allowed; use an integer >= {minimum}"
        )


def _check_rate(name: str, value: object) -> None:
    valid = (
        isinstance(value, (int, float, np.floating))
        and not isinstance(value, bool)
        and 0.0 <= value <= 1.0
    )
    if not valid:
        raise ConfigError(
            f"{name}={value!r} is not allowed; use a probability in [0, 1]"
        )


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; use one of {allowed}")


def _check_tree(num_devices: int, num_edges: int) -> None:
    _check_int("num_edges", num_edges, 1)
    _check_int("num_devices", num_devices, 1)
    if num_devices < num_edges:
        raise ConfigError(
            f"num_devices={num_devices} is not allowed with num_edges={num_edges}; "
            "every edge needs a device, so use num_devices >= num_edges"
        )


def _readonly(array: np.ndarray) -> np.ndarray:
    # Round views are shared between callers (memoised); freezing them keeps one caller from
    # silently changing what another sees.
    array.setflags(write=False)
    return array


def default_num_edges(num_devices: int) -> int:
    """FedAgg's number of edges for ``num_devices`` devices: ``floor(sqrt(num_devices))``."""
    _check_int("num_devices", num_devices, 1)
    return math.isqrt(int(num_devices))


def assign_devices(
    num_devices: int, num_edges: int, scheme: str = "contiguous", seed: int = 0
) -> np.ndarray:
    """The edge index of every device at round 0.

    Args:
        num_devices: Devices K (>= ``num_edges``).
        num_edges: Edges E (>= 1).
        scheme: ``"contiguous"``: devices in blocks of sizes ceil(K/E) then floor(K/E), in order;
            ``"round_robin"``: device k on edge k mod E; ``"random"``: a seeded shuffle of the
            contiguous assignment (so edge sizes stay as even as possible).
        seed: Seed of the ``"random"`` scheme (ignored by the others).

    Returns:
        An int array of shape ``(K,)`` with values in ``[0, E)``.

    Raises:
        ConfigError: A count is out of range or the scheme is unknown.
    """
    _check_tree(num_devices, num_edges)
    _check_choice("assignment", scheme, ASSIGNMENTS)
    _check_int("seed", seed, 0)
    if scheme == "round_robin":
        return np.arange(num_devices, dtype=np.int64) % num_edges
    base, extra = divmod(num_devices, num_edges)
    sizes = base + (np.arange(num_edges) < extra)
    contiguous = np.repeat(np.arange(num_edges, dtype=np.int64), sizes)
    if scheme == "contiguous":
        return contiguous
    return _rng(seed, _ASSIGN_STREAM).permutation(contiguous)


def device_models(
    num_devices: int,
    model: str,
    *,
    large_model: str | None = None,
    large_fraction: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """The model name of every device: ``model`` for all, or a seeded share on ``large_model``.

    Args:
        num_devices: Devices K (>= 1).
        model: Model name of the devices not chosen for the large model.
        large_model: Model name of the chosen devices; required when ``large_fraction > 0``.
        large_fraction: Share of devices on ``large_model``; exactly ``round(large_fraction * K)``
            devices (Python's ``round``: halves go to the even count) are chosen at random.
        seed: Seed of the choice.

    Returns:
        A list of K model names.

    Raises:
        ConfigError: A value is out of range, or a fraction is given without ``large_model``.
    """
    _check_int("num_devices", num_devices, 1)
    _check_rate("large_fraction", large_fraction)
    _check_int("seed", seed, 0)
    num_large = round(large_fraction * num_devices)
    if num_large > 0 and large_model is None:
        raise ConfigError(
            f"large_fraction={large_fraction!r} needs large_model; name the larger model or use 0"
        )
    names = [model] * num_devices
    chosen = _rng(seed, _MODELS_STREAM).choice(
        num_devices, size=num_large, replace=False
    )
    for device in chosen:
        names[int(device)] = str(large_model)
    return names


@dataclass(frozen=True, eq=False)
class RoundTopology:
    """Who is attached where, and who is online, in one round.

    Args:
        round: The round number (0 = initial assignment).
        edge_of: Int array ``(K,)``: the edge each device is attached to this round, online or not.
        device_online: Bool array ``(K,)``.
        edge_online: Bool array ``(E,)``.
        orphans: What online devices of an offline edge do: ``"skip"`` (sit the round out) or
            ``"cloud"`` (attach directly to the cloud).
    """

    round: int
    edge_of: np.ndarray
    device_online: np.ndarray
    edge_online: np.ndarray
    orphans: str

    def __post_init__(self) -> None:
        """Hold the fields as read-only arrays of the right dtype; check ``orphans``."""
        _check_choice("orphans", self.orphans, ORPHAN_POLICIES)
        for name, dtype in (
            ("edge_of", np.int64),
            ("device_online", bool),
            ("edge_online", bool),
        ):
            array = np.array(getattr(self, name), dtype=dtype)
            object.__setattr__(self, name, _readonly(array))

    @property
    def num_devices(self) -> int:
        """Devices K."""
        return int(self.edge_of.size)

    @property
    def num_edges(self) -> int:
        """Edges E."""
        return int(self.edge_online.size)

    def devices_of(self, edge: int) -> list[int]:
        """Online devices attached to ``edge``, ascending; empty when the edge is offline."""
        if not 0 <= edge < self.num_edges:
            raise IndexError(
                f"edge {edge} does not exist; edges are 0..{self.num_edges - 1}"
            )
        if not self.edge_online[edge]:
            return []
        return np.flatnonzero(self.device_online & (self.edge_of == edge)).tolist()

    def cloud_direct(self) -> list[int]:
        """Online devices of offline edges when ``orphans == "cloud"``, ascending; else empty."""
        if self.orphans != "cloud":
            return []
        return np.flatnonzero(
            self.device_online & ~self.edge_online[self.edge_of]
        ).tolist()

    def participants(self) -> list[int]:
        """Devices that take part this round (under an edge or directly the cloud), ascending."""
        reachable = self.edge_online[self.edge_of] | (self.orphans == "cloud")
        return np.flatnonzero(self.device_online & reachable).tolist()

    def __eq__(self, other: object) -> bool:
        """Equal when every field is equal (arrays element-wise)."""
        if not isinstance(other, RoundTopology):
            return NotImplemented
        return (
            self.round == other.round
            and self.orphans == other.orphans
            and np.array_equal(self.edge_of, other.edge_of)
            and np.array_equal(self.device_online, other.device_online)
            and np.array_equal(self.edge_online, other.edge_online)
        )

    # Array fields compare element-wise and are not hashable, so neither is a round view.
    __hash__ = None  # type: ignore[assignment]


def _move(
    edge_of: np.ndarray, num_edges: int, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """One mobility step: each device moves with probability ``rate`` to a uniform *other* edge."""
    # Draw both arrays for every device so that the stream does not depend on who moves.
    moving = rng.random(edge_of.size) < rate
    offset = rng.integers(1, num_edges, size=edge_of.size) if num_edges > 1 else 0
    return np.where(moving, (edge_of + offset) % num_edges, edge_of)


@dataclass(frozen=True)
class Topology:
    """The tree cloud -> ``num_edges`` edges -> ``num_devices`` devices, round by round.

    Every round's view is a deterministic function of the fields and the round number: mobility is
    a Markov chain stepped with a generator seeded by ``(seed, round)``, connectivity is drawn
    independently per round from ``(seed, round)``. Positions are memoised, so ``at_round(r)``
    does not depend on the order of calls.

    Args:
        num_devices: Devices K (>= ``num_edges``).
        num_edges: Edges E (>= 1); FedAgg uses ``default_num_edges(K)``.
        assignment: Round-0 assignment scheme, one of ``ASSIGNMENTS`` (see ``assign_devices``).
        seed: Seed of every random draw (>= 0).
        mobility_rate: Per round, probability that a device moves to another edge (uniform among
            the others). Needs ``num_edges >= 2`` when > 0.
        device_dropout: Per round, probability that a device is offline.
        edge_dropout: Per round, probability that an edge is offline.
        edge_outages: Scheduled outages ``(edge, first_round, last_round)``, rounds inclusive and
            >= 1; the edge is offline in that stretch whatever ``edge_dropout`` draws.
        orphans: ``"skip"`` or ``"cloud"``: see ``RoundTopology``.

    Raises:
        ConfigError: A field is out of range or names an unknown choice.
    """

    num_devices: int
    num_edges: int
    assignment: str = "contiguous"
    seed: int = 0
    mobility_rate: float = 0.0
    device_dropout: float = 0.0
    edge_dropout: float = 0.0
    edge_outages: tuple[tuple[int, int, int], ...] = ()
    orphans: str = "skip"
    _positions: list[np.ndarray] = field(
        default_factory=list, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        """Validate every field and normalise ``edge_outages`` to a tuple of int triples."""
        _check_tree(self.num_devices, self.num_edges)
        _check_choice("assignment", self.assignment, ASSIGNMENTS)
        _check_choice("orphans", self.orphans, ORPHAN_POLICIES)
        _check_int("seed", self.seed, 0)
        for name in ("mobility_rate", "device_dropout", "edge_dropout"):
            _check_rate(name, getattr(self, name))
        if self.mobility_rate > 0 and self.num_edges < 2:
            raise ConfigError(
                f"mobility_rate={self.mobility_rate!r} is not allowed with num_edges=1; "
                "a device needs another edge to move to: use mobility_rate=0 or num_edges >= 2"
            )
        object.__setattr__(self, "edge_outages", self._checked_outages())

    def _checked_outages(self) -> tuple[tuple[int, int, int], ...]:
        outages = []
        for outage in self.edge_outages:
            if len(outage) != 3:
                raise ConfigError(
                    f"edge_outages entry {outage!r} is not allowed; "
                    "use (edge, first_round, last_round)"
                )
            edge, first, last = outage
            _check_int("edge_outages edge", edge, 0)
            _check_int("edge_outages first_round", first, 1)
            _check_int("edge_outages last_round", last, first)
            if edge >= self.num_edges:
                raise ConfigError(
                    f"edge_outages edge={edge} is not allowed; edges are 0..{self.num_edges - 1}"
                )
            outages.append((int(edge), int(first), int(last)))
        return tuple(outages)

    def _edge_of(self, round: int) -> np.ndarray:
        """Device -> edge at ``round``, stepping the mobility chain from the last memoised round."""
        if not self._positions:
            start = assign_devices(
                self.num_devices, self.num_edges, self.assignment, self.seed
            )
            self._positions.append(_readonly(start))
        while len(self._positions) <= round:
            r = len(self._positions)
            rng = _rng(self.seed, r, _MOBILITY_STREAM)
            step = _move(self._positions[-1], self.num_edges, self.mobility_rate, rng)
            self._positions.append(_readonly(step))
        return self._positions[round]

    def _edge_online(self, round: int) -> np.ndarray:
        draws = _rng(self.seed, round, _EDGE_DROPOUT_STREAM).random(self.num_edges)
        online = draws >= self.edge_dropout
        for edge, first, last in self.edge_outages:
            if first <= round <= last:
                online[edge] = False
        return online

    def at_round(self, round: int) -> RoundTopology:
        """The tree at ``round``.

        Round 0 is the initial assignment with everyone online; a round >= 1 applies that round's
        moves, then draws which devices and edges are online.
        """
        _check_int("round", round, 0)
        edge_of = self._edge_of(round)
        if round == 0:
            device_online = np.ones(self.num_devices, dtype=bool)
            edge_online = np.ones(self.num_edges, dtype=bool)
        else:
            draws = _rng(self.seed, round, _DEVICE_DROPOUT_STREAM).random(
                self.num_devices
            )
            device_online = draws >= self.device_dropout
            edge_online = self._edge_online(round)
        return RoundTopology(
            round=int(round),
            edge_of=edge_of,
            device_online=device_online,
            edge_online=edge_online,
            orphans=self.orphans,
        )

    def moves(self, round: int) -> list[tuple[int, int, int]]:
        """The moves ``(device, old_edge, new_edge)`` applied at ``round``, by device; none at 0."""
        _check_int("round", round, 0)
        if round == 0:
            return []
        before, after = self._edge_of(round - 1), self._edge_of(round)
        moved = np.flatnonzero(before != after)
        return [(int(d), int(before[d]), int(after[d])) for d in moved]

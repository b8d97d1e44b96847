"""The knobs a strategy sends in a message's ``config`` record, and the typed reads of them.

The strategy's constructor is the single source of each knob; the device only reads them here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from flwr.app import ConfigRecord, Message

from flower_eec.errors import PayloadError
from flower_eec.protocol import names

T = TypeVar("T", int, float, bool, str)


def refuse_clashes(given: Mapping[str, Any] | None, knobs: Mapping[str, Any], what: str,
                   strategy: str) -> None:
    """Refuse ``start``'s ``train_config``/``evaluate_config`` (``what``) when it sets one of the
    knobs that the strategy's constructor sets, to another value: the constructor is their one
    source. Other entries travel to the devices as given.

    Raises:
        ValueError: Naming the knobs and the strategy.
    """
    clash = sorted(k for k, v in dict(given or {}).items() if k in knobs and v != knobs[k])
    if clash:
        raise ValueError(f"{what} sets {clash}, which {strategy}'s constructor sets for its "
                         f"devices ({ {k: knobs[k] for k in clash} }): pass them to "
                         f"{strategy}(...) instead")


@dataclass(frozen=True)
class Knobs:
    """The ``config`` record of a received message, read with its types checked.

    A missing or mistyped knob is a ``PayloadError`` naming it: the strategy and the device
    disagree on the protocol, and guessing a default would hide it.
    """

    record: ConfigRecord

    @classmethod
    def of(cls, msg: Message) -> Knobs:
        """The knobs of ``msg`` (an empty record when it carries none)."""
        return cls(msg.content.config_records.get(names.CONFIG, ConfigRecord()))

    def with_defaults(self, defaults: dict[str, Any]) -> Knobs:
        """These knobs, with ``defaults`` where the message sets none (for senders, such as
        Flower's own strategies, that send only some)."""
        return Knobs(ConfigRecord({**defaults, **dict(self.record)}))

    def get(self, key: str, kind: type[T]) -> T:
        """The value of ``key`` as ``kind`` (an int is accepted where a float is asked for)."""
        if key not in self.record:
            raise PayloadError(f"the message's '{names.CONFIG}' record lacks '{key}'; the "
                               f"strategy that sent it does not speak this device's protocol")
        value = self.record[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # type: ignore[return-value]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise PayloadError(f"knob '{key}' is {value!r}, expected {kind.__name__}")
        return value

    def floats(self, key: str) -> list[float]:
        """A list-of-numbers knob."""
        value = self.record.get(key)
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
            raise PayloadError(f"knob '{key}' is {value!r}, expected a list of numbers")
        return [float(v) for v in value]  # type: ignore[arg-type]

    @property
    def server_round(self) -> int:
        """The round the message belongs to."""
        return self.get(names.SERVER_ROUND, int)


@dataclass(frozen=True)
class TrainSettings:
    """How a device trains, as the strategy sends it (every field is a knob of the message)."""

    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 32
    epochs: int = 1
    augment: bool = True
    cutout: int = 0
    seed: int = 0

    def to_config(self) -> dict[str, Any]:
        """The knobs as ``config`` record entries."""
        return {"lr": self.lr, "momentum": self.momentum, "weight-decay": self.weight_decay,
                "batch-size": self.batch_size, "local-epochs": self.epochs,
                "augment": self.augment, "cutout": self.cutout, "seed": self.seed}

    @classmethod
    def from_knobs(cls, knobs: Knobs) -> TrainSettings:
        """Inverse of ``to_config``."""
        return cls(lr=knobs.get("lr", float), momentum=knobs.get("momentum", float),
                   weight_decay=knobs.get("weight-decay", float),
                   batch_size=knobs.get("batch-size", int), epochs=knobs.get("local-epochs", int),
                   augment=knobs.get("augment", bool), cutout=knobs.get("cutout", int),
                   seed=knobs.get("seed", int))

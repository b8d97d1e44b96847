"""The method registry: one entry per method, the only place that maps a method's name to its parts.

An entry names the method's config sections (dataclasses of its knobs and their defaults, checked
by the entry's ``check``; its YAML shipped beside its module sets them per profile), its server
side (build the strategy from a config and run it) and its device side (the ``Device`` our
ClientApp registers). Adding a method: a module in ``flower_eec/run/methods/`` and its YAML, plus
one line in ``methods()``; the config schema, ``flower-eec show`` and our ClientApp follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from flower_eec.clients.device import Device
from flower_eec.errors import ConfigError
from flower_eec.grid.metered import MeteredGrid
from flower_eec.run.config import Config
from flower_eec.run.results import Recorder

METHODS_DIR = Path(__file__).resolve().parent / "methods"


@dataclass(frozen=True)
class Method:
    """One method's parts.

    Attributes:
        name: What ``method=`` and the CLI's first argument call it.
        run: Builds the method's strategy from a resolved config and runs it on a grid, adding
            one row per round to the recorder.
        device: Our ClientApp's device for this method (model and data from the run config's
            local settings). Methods that share a device protocol return the same class.
        sections: The config sections of the method's own knobs, by name (a dataclass each);
            methods may share a section (FedEEC reads FedAgg's ``fedagg``).
        check: Validates the method's sections (and what else the method needs of the
            config), raising ``ConfigError``; run on every resolved config of this method.
        bridge: Tiers carry their own models and exchange logits on bridge samples (FedAgg's
            ``fedagg`` section applies, and the central evaluator knows every tier's model).
        shift: The rounds between label shifts of its devices' data under a config
            (``flower_eec.run.shift``; 0: never); None: its devices' data never shifts.
        options: The keys of ``config.OPTIONAL_KEYS`` (shared keys only some methods read)
            that it reads; a config of another method must leave them at 0.
    """

    name: str
    run: Callable[[Config, MeteredGrid, Recorder], None]
    device: Callable[[], Device]
    sections: Mapping[str, type] = field(default_factory=dict)
    check: Callable[[Config], None] | None = None
    bridge: bool = False
    shift: Callable[[Config], int] | None = None
    options: tuple[str, ...] = ()

    @property
    def defaults(self) -> Path:
        """The method's YAML of defaults and per-profile settings, shipped in the package."""
        return METHODS_DIR / f"{self.name}.yaml"


@cache
def methods() -> dict[str, Method]:
    """Every registered method by name (the method modules are imported on first use)."""
    from flower_eec.run.methods import eclm, fedagg, fedin, weights

    return {m.name: m for m in (
        weights.FEDAVG,
        weights.HIERFAVG,
        fedagg.FEDAGG,
        fedagg.FEDEEC,
        fedin.FEDIN,
        fedin.HETEROAVG,
        eclm.ECLM_METHOD,
    )}


def sections() -> dict[str, type]:
    """Every registered method's config section, by name.

    Raises:
        ValueError: Two methods declare one section name with different dataclasses.
    """
    found: dict[str, type] = {}
    for entry in methods().values():
        for name, knobs in entry.sections.items():
            if found.setdefault(name, knobs) is not knobs:
                raise ValueError(f"section '{name}' is declared twice, differently "
                                 f"(method '{entry.name}')")
    return found


def method(name: str) -> Method:
    """The entry of ``name``; an unknown name is a ``ConfigError`` listing the registered ones."""
    entries = methods()
    if name not in entries:
        raise ConfigError(f"unknown method '{name}'. Allowed: {', '.join(entries)}")
    return entries[name]


def client_devices() -> list[Device]:
    """One device per protocol among the registered methods: what our ClientApp registers."""
    chosen: dict[type, Device] = {}
    for entry in methods().values():
        device = entry.device()
        chosen.setdefault(type(device), device)
    return list(chosen.values())

"""The run configuration: one validated object, built from YAML files or Flower's run_config.

Resolution order (later wins): schema defaults, the profile, the method's YAML file, that file's
section for the profile, then ``key=value`` overrides. Where ``fedagg.fidelity`` ends up true,
``FIDELITY_DEFAULTS`` come in after the profile: the paper's values, unless a file or an override
sets them.
"""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, make_dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from flower_eec.errors import ConfigError

if TYPE_CHECKING:
    from flower_eec.run.registry import Method

PROFILES_NAMES = ("smoke", "cpu", "paper")
DATASETS = ("synthetic", "cifar10", "cifar100", "cinic10", "fashion_mnist", "mnist", "svhn")
PARTITIONS = ("dirichlet", "iid", "pathological")
ASSIGNMENTS = ("contiguous", "round_robin", "random")
ORPHANS = ("skip", "cloud")


@dataclass
class DataConfig:
    """Which dataset, where it lives, and how it is split over devices.

    ``shift_every``: FedAvg's devices get a new Dirichlet(``alpha``) deal of the training pool
    every N rounds (0: never), the label shift of ECLM's ``eclm.shift_every`` (see
    ``flower_eec.run.shift``): FedAvg runs on ECLM's shifting data. Other methods: 0
    (``OPTIONAL_KEYS``).

    ``partition``: one of ``PARTITIONS``, or ``flwr_datasets:<Name>`` for a Flower Datasets
    partitioner (the ``flwr-datasets`` extra), built with ``partitioner_args`` as its keyword
    arguments (see ``flower_eec.data.flwr_partitioners``).
    """

    dataset: str = "synthetic"
    root: str = ""
    verify: bool = True
    subset: float = 1.0
    holdout: float = 0.0
    partition: str = "dirichlet"
    partitioner_args: dict[str, Any] = field(default_factory=dict)
    alpha: float = 1.0
    classes_per_device: int = 2
    min_size: int = 10
    local_test_size: int = 100
    synthetic_train: int = 2000
    synthetic_test: int = 500
    augment: bool = True
    cutout: int = 0
    cifar100_labels: str = "coarse"
    shift_every: int = 0


@dataclass
class TopologyConfig:
    """The tree cloud -> edges -> devices and how it changes per round.

    ``edge_outages``: scheduled outages ``[edge, first_round, last_round]`` (rounds inclusive),
    on top of the random ``edge_dropout``.
    """

    num_devices: int = 4
    num_edges: int = 2
    assignment: str = "contiguous"
    mobility: float = 0.0
    device_dropout: float = 0.0
    edge_dropout: float = 0.0
    edge_outages: list[list[int]] = field(default_factory=list)
    orphans: str = "skip"


@dataclass
class ModelConfig:
    """Model names per tier (see ``flower_eec.models.MODEL_NAMES``)."""

    device: str = "cnn3"
    edge: str = "cnn3"
    cloud: str = "cnn3"
    large_device: str = ""
    large_fraction: float = 0.0
    stem: str = "cifar"
    width: float = 1.0


@dataclass
class TrainConfig:
    """Rounds and local optimisation (kappa1 = local_epochs, kappa2 = edge_rounds)."""

    rounds: int = 2
    edge_rounds: int = 1
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0


@dataclass
class EvalConfig:
    """What is evaluated, and how often (every N rounds; the last round always).

    ``adapt_epochs``: FedAvg's devices train a copy of the received model on their current
    local data for this many epochs (the run's train settings) before testing it, the local
    adaptation ECLM's devices make before they test (0: test the model as received). Other
    methods: 0 (``OPTIONAL_KEYS``).
    """

    every: int = 1
    edges: bool = True
    devices: bool = True
    batch_size: int = 500
    adapt_epochs: int = 0


@dataclass
class CheckpointConfig:
    """Checkpoints in the results folder: after every ``every`` rounds and the last (0: none).

    A run with ``resume=true`` (``flower-eec run --resume DIR``) goes on from the last one."""

    every: int = 1


@dataclass
class SimulationConfig:
    """Flower Simulation Engine settings and server-side compute.

    ``timeout``: seconds a round's exchange waits for the devices' replies. ``node_wait``: seconds
    to wait at start for the nodes to register, and again for them to describe themselves (Ray's
    actors can take tens of seconds to start); a device that never answers stops the run.
    """

    client_cpus: int = 1
    client_gpus: float = 0.0
    timeout: float = 600.0
    node_wait: float = 60.0
    torch_device: str = "auto"
    torch_threads: int = 1


@dataclass
class Config:
    """Everything one run needs; every field has a default. The sections shared by every
    method are declared here; each method's own section comes from the registry."""

    method: str = "hierfavg"
    profile: str = "smoke"
    seed: int = 0
    out: str = ""
    overwrite: bool = False
    resume: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __getattr__(self, name: str) -> Any:
        """A method's own section (``config.fedagg``): a run's config is a ``config_class()``,
        which adds one field per section of the registered methods."""
        raise AttributeError(f"the config has no key or section '{name}'")

    def __reduce__(self) -> tuple[Any, ...]:
        # the run's class is made at run time: a pickle carries the JSON and resolves it again
        return from_json, (to_json(self),)


@cache
def config_class() -> type[Config]:
    """``Config`` with one field per registered method's section (its knobs and defaults)."""
    from flower_eec.run.registry import sections

    run_config = make_dataclass("Config", [(name, knobs, field(default_factory=knobs))
                                           for name, knobs in sections().items()],
                                bases=(Config,))
    run_config.__module__ = __name__
    return run_config


# the defaults of FedAgg's and FedEEC's `fidelity` mode where the accuracy mode's differ: the
# paper's KD weight on the edges' and the cloud's losses (accuracy mode: 1; README, "Why FedAgg
# diverged at its defaults")
FIDELITY_DEFAULTS: dict[str, Any] = {"fedagg": {"beta": 10.0}}

# Shared by every method so that methods are compared on the same data, topology and budget.
# The CIFAR-10 profiles hold out 10% of the training set from every device: the public slice the
# shipped bridge autoencoder was trained on (FedAgg) and a server's own data (ECLM).
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": {
        "data": {"dataset": "synthetic", "synthetic_train": 400, "synthetic_test": 200,
                 "local_test_size": 20, "partition": "iid"},
        "topology": {"num_devices": 4, "num_edges": 2},
        "train": {"rounds": 2, "batch_size": 32},
        "eval": {"batch_size": 200},
    },
    "cpu": {
        "data": {"dataset": "cifar10", "holdout": 0.1, "subset": 0.1, "partition": "dirichlet",
                 "alpha": 1.0, "local_test_size": 100},
        "topology": {"num_devices": 20, "num_edges": 4},
        "train": {"rounds": 20, "batch_size": 32, "lr": 0.05},
    },
    "paper": {
        "data": {"dataset": "cifar10", "holdout": 0.1, "subset": 1.0, "partition": "dirichlet",
                 "alpha": 1.0, "cutout": 16},
        "topology": {"num_devices": 225, "num_edges": 15},
        "train": {"rounds": 500, "batch_size": 8, "lr": 0.001},
        "model": {"stem": "imagenet"},
    },
}

# Shared keys that only some methods read (``Method.options``); other methods need them at 0.
OPTIONAL_KEYS = ("data.shift_every", "eval.adapt_epochs")

# Keys of Flower's run_config that are not schema keys (see pyproject's [tool.flwr.app.config]).
RUN_CONFIG_KEYS = ("method", "profile", "config-file", "overrides", "out", "config-json")


def _schema() -> DictConfig:
    return OmegaConf.structured(config_class())


def _merged(layers: Iterable[tuple[dict[str, Any], str]]) -> DictConfig:
    """The schema's defaults with every ``(layer, source)`` merged on, in order."""
    merged = _schema()
    for layer, source in layers:
        merged = _merge(merged, layer, source)
    return merged


def _merge(base: DictConfig, layer: dict[str, Any], source: str) -> DictConfig:
    _check_sections(base, layer, source)
    try:
        return OmegaConf.merge(base, layer)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{source}: {_explain(exc)}") from None


def _check_sections(base: DictConfig, layer: dict[str, Any], source: str, prefix: str = "") -> None:
    """A scalar given where the schema has a section is named here (OmegaConf's error is not)."""
    for key, value in layer.items():
        node = base.get(key) if key in base else None
        if isinstance(node, DictConfig):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{prefix}{key}' is a section, not a value; set its "
                                  f"keys instead, e.g. {prefix}{key}.{next(iter(node))!s}=...")
            _check_sections(node, value, source, f"{prefix}{key}.")


def _explain(exc: OmegaConfBaseException) -> str:
    key = getattr(exc, "full_key", "") or ""
    first = str(exc).splitlines()[0]
    if "Key" in first and "not in" in first:
        return unknown_key("config key", key, schema_names())
    return f"bad value for '{key}': {first}"


def unknown_key(kind: str, key: str, known: Iterable[str]) -> str:
    """The message for an unknown ``key``: the closest of the ``known`` dotted keys, or, when
    none is close, the names that exist beside it (never all ~80 keys)."""
    known = sorted(set(known))
    close = close_keys(key, known)
    if close:
        return f"unknown {kind} '{key}'; did you mean {' or '.join(close)}?"
    section = key.rpartition(".")[0]
    inside = [k[len(section) + 1:] for k in known if k.startswith(f"{section}.")]
    if not section or not inside:
        section, inside = "", known
    names = sorted({name.split(".")[0] for name in inside})
    where = f"the keys of '{section}'" if section else "the top-level keys and sections"
    return (f"unknown {kind} '{key}'; {where}: {', '.join(names)} "
            "(`flower-eec show` lists every key with its value)")


def close_keys(key: str, known: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` known keys close to ``key`` (difflib): by the whole dotted key, else by its
    last part (``lr`` -> ``train.lr``)."""
    close = difflib.get_close_matches(key, known, n=n, cutoff=0.75)
    if close:
        return close
    by_leaf: dict[str, list[str]] = {}
    for name in known:
        by_leaf.setdefault(name.rpartition(".")[2], []).append(name)
    leaves = difflib.get_close_matches(key.rpartition(".")[2], list(by_leaf), n=n, cutoff=0.75)
    return [name for leaf in leaves for name in by_leaf[leaf]][:n]


def schema_names(tree: dict[str, Any] | None = None, prefix: str = "") -> list[str]:
    """Every dotted name of the schema: its keys and its sections (``train``, ``train.lr``)."""
    if tree is None:
        tree = OmegaConf.to_container(_schema())  # type: ignore[assignment]
        assert tree is not None
    names = []
    for key, value in tree.items():
        names.append(f"{prefix}{key}")
        if isinstance(value, dict):
            names += schema_names(value, f"{prefix}{key}.")
    return names


def flat_keys() -> list[str]:
    """All dotted schema keys, e.g. ``train.lr``."""
    return list(_flatten(OmegaConf.to_container(_schema())).keys())  # type: ignore[arg-type]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "profiles":
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_overrides(items: list[str] | str) -> dict[str, Any]:
    """Turn ``["train.lr=0.1", "profile=cpu"]`` (or one spaced string) into a nested dict."""
    if isinstance(items, str):
        items = items.split()
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=0.1)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _entry(name: str) -> Method:
    """The registry's entry of method ``name`` (the registry imports this module: lazily)."""
    from flower_eec.run.registry import method

    return method(name)


def method_names() -> list[str]:
    """Every registered method's name."""
    from flower_eec.run.registry import methods

    return list(methods())


def unread_sections(method: str) -> tuple[str, ...]:
    """The sections of every run's config that ``method`` does not read (other methods' knobs)."""
    from flower_eec.run.registry import sections

    own = _entry(method).sections
    return tuple(name for name in sections() if name not in own)


def is_bridge(config: Config) -> bool:
    """Whether the run's method distils on bridge samples (its ``fedagg`` section applies)."""
    return _entry(config.method).bridge


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read one config file; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; give a method name "
                          f"({', '.join(method_names())}) or a path to a YAML file such as "
                          f"examples/hierfavg.yaml")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, not {type(content)}")
    return content


def resolve(file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Build the validated config from a YAML file (or the method's own) and overrides.

    ``file`` may also be a registered method's name (``fedagg``): its shipped defaults are read.
    """
    overrides = dict(overrides or {})
    if file is not None and not Path(file).exists() and str(file) in method_names():
        overrides.setdefault("method", str(file))
        file = None
    content = read_yaml(file) if file else {}
    method = overrides.get("method", content.get("method", Config.method))
    if not file:
        content = read_yaml(_entry(method).defaults)
    profile = overrides.get("profile", content.get("profile", Config.profile))
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile '{profile}'. Allowed: {', '.join(PROFILES)}")
    file_profiles = content.pop("profiles", {}) or {}
    source = str(file) if file else f"the defaults of method '{method}'"

    layers = [(PROFILES[profile], f"profile '{profile}'"), (content, source),
              (file_profiles.get(profile, {}), f"{source} (profiles.{profile})"),
              (overrides, "overrides")]
    merged = _merged(layers)
    if merged.fedagg.fidelity:  # the paper's values, unless a file or an override sets them
        merged = _merged([layers[0], (FIDELITY_DEFAULTS, "fedagg.fidelity=true"), *layers[1:]])
    merged.profile = profile
    config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config)
    return config


def from_run_config(run_config: dict[str, Any]) -> Config:
    """Build the config from Flower's flat run_config (``flwr run --run-config ...``).

    ``config-json`` holds a fully resolved config (written by ``flower-eec run``); otherwise
    ``method``, ``profile``, ``config-file``, ``overrides`` and any dotted schema key are read.
    An empty string means "not set".
    """
    if run_config.get("config-json"):
        return from_json(str(run_config["config-json"]))
    known = set(flat_keys())
    overrides: dict[str, Any] = {}
    for key, value in run_config.items():
        if value == "" or key in ("config-file", "overrides", "config-json"):
            continue
        if key not in known and key not in RUN_CONFIG_KEYS:
            raise ConfigError(unknown_key("run_config key", key, [*RUN_CONFIG_KEYS, *known]))
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    text_overrides = parse_overrides(str(run_config.get("overrides", "")))
    nested = OmegaConf.to_container(OmegaConf.merge(overrides, text_overrides))
    file = run_config.get("config-file") or None
    return resolve(file, nested)  # type: ignore[arg-type]


def to_dict(config: Config) -> dict[str, Any]:
    """The config as plain nested dicts (for results.json and YAML)."""
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]


def to_json(config: Config) -> str:
    """The resolved config as one JSON string (travels as run_config ``config-json``)."""
    return json.dumps(to_dict(config), sort_keys=True)


def from_json(text: str) -> Config:
    """Inverse of ``to_json``, validated."""
    try:
        content = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"run_config 'config-json' is not valid JSON: {exc}") from None
    merged = _merge(_schema(), content, "config-json")
    config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config)
    return config


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError naming ``key``, its ``value`` and what is ``allowed`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"bad value for '{key}': {value!r}; allowed: {allowed}")


def choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    """``check`` that ``value`` is one of ``allowed``."""
    check(value in allowed, key, value, ", ".join(allowed))


def validate(config: Config) -> None:
    """Check values beyond their types; raise ConfigError naming the key and what is allowed."""
    from flower_eec.data import flwr_partitioners
    from flower_eec.models import MODEL_NAMES

    choice("method", config.method, tuple(method_names()))
    choice("profile", config.profile, PROFILES_NAMES)
    d, t, m, tr = config.data, config.topology, config.model, config.train
    choice("data.dataset", d.dataset, DATASETS)
    if flwr_partitioners.is_flwr_datasets(d.partition):
        # built once here (no data yet): a bad name or argument stops the run at start
        flwr_partitioners.make_partitioner(
            d.partition, d.partitioner_args, t.num_devices, seed=config.seed, alpha=d.alpha,
            classes_per_device=d.classes_per_device, min_size=d.min_size)
    else:
        choice("data.partition", d.partition, PARTITIONS)
        check(not d.partitioner_args, "data.partitioner_args", d.partitioner_args,
              "{} unless data.partition is flwr_datasets:<Partitioner>")
    choice("data.cifar100_labels", d.cifar100_labels, ("coarse", "fine"))
    check(0 < d.subset <= 1, "data.subset", d.subset, "a fraction in (0, 1]")
    check(0 <= d.holdout < 1, "data.holdout", d.holdout, "a fraction in [0, 1)")
    check(d.alpha > 0 and math.isfinite(d.alpha), "data.alpha", d.alpha, "a positive number")
    check(d.local_test_size >= 1, "data.local_test_size", d.local_test_size, ">= 1")
    check(t.num_devices >= 1, "topology.num_devices", t.num_devices, ">= 1")
    check(1 <= t.num_edges <= t.num_devices, "topology.num_edges", t.num_edges,
          f"between 1 and topology.num_devices ({t.num_devices})")
    choice("topology.assignment", t.assignment, ASSIGNMENTS)
    choice("topology.orphans", t.orphans, ORPHANS)
    for key in ("mobility", "device_dropout", "edge_dropout"):
        value = getattr(t, key)
        check(0 <= value <= 1, f"topology.{key}", value, "a probability in [0, 1]")
    for key in ("device", "edge", "cloud"):
        choice(f"model.{key}", getattr(m, key), MODEL_NAMES)
    if m.large_device:
        choice("model.large_device", m.large_device, MODEL_NAMES)
    check(0 <= m.large_fraction <= 1, "model.large_fraction", m.large_fraction, "[0, 1]")
    choice("model.stem", m.stem, ("cifar", "imagenet"))
    check(m.width > 0, "model.width", m.width, "> 0")
    for key in ("rounds", "edge_rounds", "local_epochs", "batch_size"):
        check(getattr(tr, key) >= 1, f"train.{key}", getattr(tr, key), ">= 1")
    check(tr.lr > 0, "train.lr", tr.lr, "> 0")
    check(tr.momentum >= 0, "train.momentum", tr.momentum, ">= 0")
    check(tr.weight_decay >= 0, "train.weight_decay", tr.weight_decay, ">= 0")
    check(config.seed >= 0, "seed", config.seed, "an integer >= 0")
    check(d.cutout >= 0, "data.cutout", d.cutout, ">= 0 (0 turns Cutout off)")
    check(d.min_size >= 1, "data.min_size", d.min_size, ">= 1")
    check(d.classes_per_device >= 1, "data.classes_per_device", d.classes_per_device, ">= 1")
    check(config.eval.every >= 1, "eval.every", config.eval.every, ">= 1")
    check(config.checkpoint.every >= 0, "checkpoint.every", config.checkpoint.every,
          ">= 0 (0: no checkpoints)")
    check(config.eval.batch_size >= 1, "eval.batch_size", config.eval.batch_size, ">= 1")
    sim = config.simulation
    check(sim.torch_threads >= 1, "simulation.torch_threads", sim.torch_threads, ">= 1")
    check(sim.client_cpus >= 1, "simulation.client_cpus", sim.client_cpus, ">= 1")
    check(sim.client_gpus >= 0, "simulation.client_gpus", sim.client_gpus, ">= 0")
    check(sim.node_wait > 0, "simulation.node_wait", sim.node_wait, "> 0 seconds")
    check(config.simulation.timeout > 0, "simulation.timeout", config.simulation.timeout, "> 0")
    _validate_outages(t)
    entry = _entry(config.method)
    for key in OPTIONAL_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        readers = [m for m in method_names() if key in _entry(m).options]
        check(value >= 0, key, value, ">= 0 (0: off)")
        check(value == 0 or key in entry.options, key, value,
              f"0 unless method is {' or '.join(readers)} (the others do not read it)")
    if entry.check is not None:
        entry.check(config)


def edge_outages(t: TopologyConfig) -> Any:
    """``topology.edge_outages`` as tuples (``Topology`` checks that each is a triple)."""
    return tuple(tuple(outage) for outage in t.edge_outages)


def _validate_outages(t: TopologyConfig) -> None:
    from flower_eec.topology import Topology

    try:
        Topology(t.num_devices, t.num_edges, edge_outages=edge_outages(t))
    except (ConfigError, TypeError, ValueError) as err:
        raise ConfigError(f"bad value for 'topology.edge_outages': {err}") from None


def demo_fidelity(config: Config) -> bool:
    """Whether this run reproduces the FedAgg demo's train-mode BatchNorm (``fedagg.fidelity``)."""
    return is_bridge(config) and config.fedagg.fidelity

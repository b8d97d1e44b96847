"""FedAgg and FedEEC from the run config: the cloud tier with a BridgeEdge per edge, and our
app's device."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context

from flower_eec.clients.fedagg import FedAggDevice
from flower_eec.core.learning import torch_device
from flower_eec.core.losses import SKR
from flower_eec.errors import ConfigError
from flower_eec.grid.metered import MeteredGrid
from flower_eec.models import seeded
from flower_eec.models.bridge import BridgeAutoencoder, code_shape, load_bridge
from flower_eec.run.config import Config, check, choice
from flower_eec.run.devices import (
    AppDevice,
    build_device_model,
    device_model,
    device_setup,
    test_data,
    train_data,
)
from flower_eec.run.experiment import hierarchical_options, start_point
from flower_eec.run.federated import federated_data
from flower_eec.run.registry import Method
from flower_eec.run.results import Recorder
from flower_eec.run.resumable import start_hierarchical
from flower_eec.strategies.fedagg import EDGE_CLOUD, SCHEDULES, SKR_MODES, FedAgg
from flower_eec.strategies.fedeec import FedEEC


@dataclass
class FedAggConfig:
    """FedAgg's BSBODP (paper: T=3, beta=10, gamma=1; the official code's devices: beta_leaf=1).

    ``beta``: the KD weight of the edges' and the cloud's loss; 1, not the paper's 10, where
    ``fidelity`` is off (ours: stable and more accurate, README "Why FedAgg diverged at its
    defaults"); ``fidelity`` makes 10 the default (``config.FIDELITY_DEFAULTS``).
    ``fidelity`` reproduces the official demo where its defects change results (BatchNorm in
    training mode for teacher logits and testing, bridge samples in [0, 1], frozen augmentation).
    ``bridge_weights`` is a weights JSON of ``scripts/train_bridge.py``; empty takes the shipped
    CIFAR-10 bridge. ``edge_cloud``: the cloud learns from an edge's logits of before their
    exchange (``simultaneous``, ours: stable) or of after the edge learned from the cloud
    (``echo``: the paper's, which diverges; ``fidelity`` implies it). ``clip`` > 0 caps the
    gradient norm of every distillation step (ours; 0: the papers' unclipped SGD).
    ``max_codes_factor``: a device may upload codes of at most this many times the median
    device's training examples (a guard against devices that lie about their size).
    """

    T: float = 3.0
    beta: float = 1.0
    beta_leaf: float = 1.0
    gamma: float = 1.0
    schedule: str = "parallel"
    edge_cloud: str = "simultaneous"
    fidelity: bool = False
    fp16: bool = False
    bridge_weights: str = ""
    clip: float = 0.0
    max_codes_factor: float = 10.0


@dataclass
class FedEECConfig:
    """FedEEC (``method=fedeec``): FedAgg's BSBODP (the ``fedagg`` section) with self-knowledge
    rectification, our reconstruction (``losses.skr_target``).

    ``skr``: where the rectified target replaces plain KD: ``upward`` (a parent learning from a
    child), ``both`` (every direction) or ``off`` (then FedEEC is FedAgg). ``self_knowledge``:
    where the teacher is wrong and the student right, distil towards the student's own
    distribution. ``swap``: where the teacher is wrong otherwise, swap the true class to the top.
    """

    skr: str = "upward"
    self_knowledge: bool = True
    swap: bool = True


def check_fedagg(config: Config) -> None:
    """The ``fedagg`` section, and the bridge against the run's dataset."""
    f = config.fedagg
    check(f.T > 0, "fedagg.T", f.T, "> 0")
    for key in ("beta", "beta_leaf", "gamma", "clip"):
        check(getattr(f, key) >= 0, f"fedagg.{key}", getattr(f, key), ">= 0")
    check(f.max_codes_factor > 0, "fedagg.max_codes_factor", f.max_codes_factor, "> 0")
    choice("fedagg.schedule", f.schedule, SCHEDULES)
    choice("fedagg.edge_cloud", f.edge_cloud, EDGE_CLOUD)
    if f.bridge_weights:
        check(Path(f.bridge_weights).is_file(), "fedagg.bridge_weights", f.bridge_weights,
              "a weights JSON written by scripts/train_bridge.py (or empty for the shipped one)")
    _validate_bridge(config)


def _validate_bridge(config: Config) -> None:
    """The bridge must take the dataset's images, and a run on the dataset the bridge was trained
    on must hold out (at least) the slice it saw, with the same labels (the slice is stratified)."""
    from flower_eec.data import IMAGE_SHAPES
    from flower_eec.errors import DataError
    from flower_eec.models.bridge import bridge_meta

    d, path = config.data, config.fedagg.bridge_weights
    which = f"the bridge in fedagg.bridge_weights ({path})" if path else "the shipped bridge"
    try:
        meta = bridge_meta(path or None)
    except DataError as err:
        raise ConfigError(f"bad value for 'fedagg.bridge_weights': {err}") from None
    channels, height, width = IMAGE_SHAPES[d.dataset]
    bridge_channels = meta.get("in_channels", 3)
    if bridge_channels != channels or height % 4 or width % 4:
        grey = " (grey MNIST and Fashion-MNIST images are not widened to 3 channels)" if (
            channels == 1) else ""
        raise ConfigError(
            f"{which} encodes {bridge_channels}-channel images whose sides divide by 4, but "
            f"data.dataset={d.dataset} has {channels}x{height}x{width} images{grey}. Train a "
            f"bridge on a held-out slice of it: python scripts/train_bridge.py --dataset "
            f"{d.dataset} --data-root PATH --out FILE, then run with "
            "fedagg.bridge_weights=FILE and data.holdout=0.1 (the script's --fraction)")
    name = re.match(r"[a-z0-9_]+", str(meta.get("dataset", "")).strip().lower())
    trained_on = name.group(0) if name else ""
    fraction = meta.get("holdout_fraction")
    if trained_on != d.dataset or not isinstance(fraction, (int, float)):
        return
    labels = meta.get("cifar100_labels", "coarse")
    if d.dataset == "cifar100" and labels != d.cifar100_labels:
        raise ConfigError(
            f"{which} was trained on a held-out slice of CIFAR-100 drawn per {labels} label, but "
            f"data.cifar100_labels is {d.cifar100_labels}, which holds out another slice: train "
            f"one with scripts/train_bridge.py --cifar100-labels {d.cifar100_labels}")
    if d.holdout < fraction:
        raise ConfigError(
            f"data.holdout is {d.holdout}, but {which} was trained on the held-out "
            f"{fraction:.0%} of {d.dataset}'s training set: set data.holdout={fraction:g} (or "
            "more) so that no device holds an image it saw")


def check_fedeec(config: Config) -> None:
    """FedAgg's checks and the ``fedeec`` section."""
    check_fedagg(config)
    choice("fedeec.skr", config.fedeec.skr, SKR_MODES)


@lru_cache(maxsize=2)
def bridge(path: str) -> BridgeAutoencoder:
    """The frozen bridge of ``fedagg.bridge_weights`` (``""``: the shipped CIFAR-10 one),
    loaded once per process."""
    return load_bridge(path or None)


def arguments(config: Config, initial: ArrayRecord) -> dict[str, Any]:
    """Every constructor argument of ``FedAgg``/``FedEEC`` from ``config`` (the cloud model
    loaded from ``initial``): the strategy sends the devices their knobs from these."""
    data = federated_data(config)
    device = torch_device(config.simulation.torch_device)
    f, t, m, d = config.fedagg, config.train, config.model, data.dataset
    cloud_model = build_device_model(config, data, m.cloud).to(device)
    cloud_model.load_state_dict(initial.to_torch_state_dict())

    def edge_model(edge: int) -> torch.nn.Module:
        with seeded(config.seed * 1_000 + edge + 1):
            return build_device_model(config, data, m.edge).to(device)

    return dict(
        cloud_model=cloud_model, edge_model=edge_model, bridge=bridge(f.bridge_weights),
        mean=d.mean, std=d.std, T=f.T, beta=f.beta, beta_leaf=f.beta_leaf, gamma=f.gamma,
        lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, batch_size=t.batch_size,
        clip=f.clip, augment=config.data.augment, cutout=config.data.cutout,
        schedule=f.schedule, edge_cloud="echo" if f.fidelity else f.edge_cloud,
        fidelity=f.fidelity, fp16=f.fp16, num_classes=d.num_classes,
        embedding_shape=code_shape(d.x_train.shape), logits_batch=config.eval.batch_size,
        evaluate_devices=config.eval.devices, seed=config.seed,
        max_codes_factor=f.max_codes_factor, torch_device=device)


def fedagg_strategy(config: Config, initial: ArrayRecord, **options: Any) -> FedAgg:
    """FedAgg's cloud tier of ``config``; ``options`` go to ``Hierarchical`` (``topology``,
    ``on_round``, ...)."""
    return FedAgg(**arguments(config, initial), **options)


def fedeec_strategy(config: Config, initial: ArrayRecord, **options: Any) -> FedEEC:
    """FedEEC's cloud tier of ``config`` (``fedeec.skr`` and its parts); ``options`` as
    ``fedagg_strategy``'s."""
    e = config.fedeec
    return FedEEC(**arguments(config, initial), skr=e.skr,
                  rectification=SKR(self_knowledge=e.self_knowledge, swap=e.swap), **options)


def _run(build: Callable[..., FedAgg], config: Config, grid: MeteredGrid,
         recorder: Recorder) -> None:
    evaluate_fn, initial = start_point(config)
    strategy = build(config, initial, **hierarchical_options(config, grid, recorder))
    start_hierarchical(strategy, grid, config, recorder, initial, evaluate_fn)


def run_fedagg(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """FedAgg: a ``BridgeEdge`` (its own model) per edge under the cloud's tier."""
    _run(fedagg_strategy, config, grid, recorder)


def run_fedeec(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """FedEEC: FedAgg's tiers with self-knowledge rectification."""
    _run(fedeec_strategy, config, grid, recorder)


def app_bridge(context: Context) -> BridgeAutoencoder:
    """Our app's device bridge: the run's ``fedagg.bridge_weights``, as the server's."""
    config, _, _ = device_setup(context)
    return bridge(config.fedagg.bridge_weights)


class AppFedAggDevice(AppDevice, FedAggDevice):
    """Our ClientApp's FedAgg/FedEEC device: on ``simulation.torch_device``; without a checkpoint
    folder of the node's own, it keeps its past models under the run's results folder
    (``out``/devices) when the run config names one (as ``flower-eec run`` does; simulation: one
    machine)."""

    def checkpoint_dir(self, context: Context) -> Path | None:
        folder = super().checkpoint_dir(context)
        if folder is None:
            config, _, _ = device_setup(context)
            return Path(config.out) / "devices" if config.out else None
        return folder


def app_device() -> FedAggDevice:
    """Our ClientApp's FedAgg/FedEEC device."""
    return AppFedAggDevice(device_model, train_data, test_data, bridge=app_bridge)


FEDAGG = Method(name="fedagg", run=run_fedagg, device=app_device, bridge=True,
                sections={"fedagg": FedAggConfig}, check=check_fedagg)
FEDEEC = Method(name="fedeec", run=run_fedeec, device=app_device, bridge=True,
                sections={"fedagg": FedAggConfig, "fedeec": FedEECConfig}, check=check_fedeec)

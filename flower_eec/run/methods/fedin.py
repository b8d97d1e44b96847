"""FedIN and HeteroAvg from the run config: depth-heterogeneous devices, layer-wise averaging.

The run config is read here (and only here) for FedIN: the server's knobs go into ``FedIN`` /
``HierFedIN``'s constructor, and our app's device gets its depth's model from ``app_device``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord

from flower_eec.clients.fedin import FedINDevice
from flower_eec.core.learning import evaluate, torch_device
from flower_eec.errors import ConfigError
from flower_eec.grid.discovery import place_devices
from flower_eec.grid.metered import MeteredGrid
from flower_eec.models import seeded
from flower_eec.models.fedin import (
    FEDIN_DEPTHS,
    assign_depths,
    build_fedin_model,
    deepest,
    feature_shapes,
)
from flower_eec.models.resnet import ResNet
from flower_eec.protocol.arrays import to_state_dict
from flower_eec.protocol.payloads import (
    FEATURE_RECORD_OVERHEAD,
    FeatureSpec,
    feature_bytes_per_sample,
)
from flower_eec.run.config import Config, check, choice
from flower_eec.run.devices import AppDevice, device_setup, test_data, train_data
from flower_eec.run.experiment import (
    EvaluateFn,
    build_topology,
    flat_rounds,
    round_recorder,
    train_settings,
)
from flower_eec.run.federated import FederatedData, federated_data
from flower_eec.run.registry import Method
from flower_eec.run.results import Recorder
from flower_eec.run.resumable import start_flat, start_hierarchical
from flower_eec.strategies.aggregation import scalars
from flower_eec.strategies.fedin import FedIN, HierFedIN, sub_record, tensor_spec
from flower_eec.strategies.hierarchical import RoundReport


@dataclass
class FedINConfig:
    """FedIN and HeteroAvg (our reconstruction of arXiv 2304.00759; docs/methods.md, section
    FedIN and HeteroAvg).

    ``depths``: the FedIN ResNet depths, devices split evenly over them (the deepest is the global
    model); ``hierarchical``: run as the edge tier of ``Hierarchical`` instead of flat; ``mu``:
    weight of the IN gradient in the QP's target; ``feature_batch``: samples per uploaded feature
    batch (0: as many as fit in ``max_feature_bytes``, at most ``train.batch_size``); ``fp16``:
    features travel as float16.
    """

    depths: list[str] = field(default_factory=lambda: [
        "resnet10", "resnet14", "resnet18", "resnet22", "resnet26"])
    hierarchical: bool = False
    mu: float = 1.0
    feature_batch: int = 0
    max_feature_bytes: int = 1_000_000
    fp16: bool = True


def check_fedin(config: Config) -> None:
    """The ``fedin`` section."""
    f = config.fedin
    check(len(f.depths) >= 1 and len(set(f.depths)) == len(f.depths), "fedin.depths", f.depths,
          f"a non-empty list of distinct depths from {list(FEDIN_DEPTHS)}")
    for depth in f.depths:
        choice("fedin.depths", depth, FEDIN_DEPTHS)
    check(f.mu >= 0 and math.isfinite(f.mu), "fedin.mu", f.mu, "a number >= 0")
    check(f.feature_batch >= 0, "fedin.feature_batch", f.feature_batch,
          "an integer >= 0 (0: the largest batch within fedin.max_feature_bytes)")
    check(f.max_feature_bytes > 0, "fedin.max_feature_bytes", f.max_feature_bytes, "> 0 bytes")


def fedin_model(config: Config, data: FederatedData, depth: str) -> ResNet:
    """A FedIN model of ``depth`` shaped for the run's dataset, with the run's stem and width."""
    return build_fedin_model(depth, data.dataset.num_classes, data.dataset.in_channels,
                             stem=config.model.stem, width=config.model.width)


def device_depth(config: Config, device: int) -> str:
    """The depth this device carries (an even, seeded split of ``fedin.depths``)."""
    return _depths(config.topology.num_devices, tuple(config.fedin.depths), config.seed)[device]


@lru_cache(maxsize=4)
def _depths(num_devices: int, depths: tuple[str, ...], seed: int) -> list[str]:
    return assign_depths(num_devices, depths, seed)


def feature_spec(config: Config, data: FederatedData) -> FeatureSpec:
    """The run's feature batch: shapes at the E/IN split and the number of samples.

    Raises:
        ConfigError: ``fedin.feature_batch`` asks for more bytes than ``fedin.max_feature_bytes``
            allows, or not even one sample fits.
    """
    f, d = config.fedin, data.dataset
    in_shape, out_shape = _feature_shapes(f.depths[0], d.num_classes, d.in_channels,
                                          int(d.x_train.shape[-1]), config.model.stem,
                                          config.model.width)
    per_sample = feature_bytes_per_sample(in_shape, out_shape, f.fp16)
    fits = (f.max_feature_bytes - FEATURE_RECORD_OVERHEAD) // per_sample
    if fits < 1 or f.feature_batch > fits:
        raise ConfigError(
            f"bad value for 'fedin.feature_batch': {f.feature_batch}; one sample's features "
            f"take {per_sample} bytes, so fedin.max_feature_bytes={f.max_feature_bytes} allows at "
            f"most {max(fits, 0)}: lower fedin.feature_batch (0 picks the largest that fits), or "
            "raise fedin.max_feature_bytes, set fedin.fp16=true or lower model.width")
    batch = f.feature_batch or min(fits, config.train.batch_size)
    return FeatureSpec(in_shape, out_shape, batch, f.fp16, f.max_feature_bytes)


@lru_cache(maxsize=8)
def _feature_shapes(depth: str, num_classes: int, in_channels: int, image_size: int, stem: str,
                    width: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    model = build_fedin_model(depth, num_classes, in_channels, stem=stem, width=width)
    return feature_shapes(model, in_channels, image_size)


def depth_evaluator(config: Config, data: FederatedData) -> EvaluateFn:
    """Evaluate the global (deepest) model and its sub-model of every depth on the global test set.

    ``accuracy``/``loss`` are the global model's; ``accuracy_<depth>``/``loss_<depth>`` each depth
    group's model (the global model's tensors that a device of that depth carries).
    """
    device = torch_device(config.simulation.torch_device)
    models = {d: fedin_model(config, data, d).to(device) for d in config.fedin.depths}
    top, test = deepest(config.fedin.depths), data.global_test()

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics: dict[str, Any] = {}
        for depth, model in models.items():
            model.load_state_dict(to_state_dict(sub_record(arrays, model.state_dict())))
            result = evaluate(model, test, config.eval.batch_size)
            metrics.update({f"{key}_{depth}": value for key, value in result.items()})
            if depth == top:
                metrics.update(result)
        return MetricRecord(metrics)

    return evaluate_fn


def run_fedin(config: Config, grid: MeteredGrid, recorder: Recorder, *,
              exchange_features: bool = True) -> None:
    """FedIN, or its ablation HeteroAvg (``exchange_features=False``): depth-heterogeneous
    devices, layer-wise averaging; flat, or as the edge tier of ``Hierarchical``
    (``fedin.hierarchical``)."""
    data = federated_data(config)
    evaluate_fn = depth_evaluator(config, data)
    initial = ArrayRecord(fedin_model(config, data, deepest(config.fedin.depths)).state_dict())
    depth_keys = {d: list(fedin_model(config, data, d).state_dict()) for d in config.fedin.depths}
    model_of = {k: tensor_spec(sub_record(initial, depth_keys[device_depth(config, k)]))
                for k in range(config.topology.num_devices)}
    features = feature_spec(config, data) if exchange_features else None
    knobs: dict[str, Any] = {"train": train_settings(config), "mu": config.fedin.mu,
                             "seed": config.seed, "evaluate_devices": config.eval.devices,
                             "evaluate_batch_size": config.eval.batch_size}

    def fedin_stats(tiers: list[FedIN]) -> dict[str, int]:
        drained = [tier.drain() for tier in tiers]
        return {key: sum(d[key] for d in drained) for key in drained[0]}

    if config.fedin.hierarchical:
        on_round = round_recorder(
            grid, recorder, lambda _: {"fedin": fedin_stats(list(hier.edges.values()))})

        hier = HierFedIN(model_of, build_topology(config), features, **knobs,
                         edge_rounds=config.train.edge_rounds, evaluate_edges=config.eval.edges,
                         evaluate_every=config.eval.every, on_round=on_round,
                         node_wait=config.simulation.node_wait)
        start_hierarchical(hier, grid, config, recorder, initial, evaluate_fn)
        return

    node_of, device_of = place_devices(grid, config.topology.num_devices,
                                       config.simulation.node_wait)
    flat = FedIN(model_of, features, **knobs)
    flat.device_of = device_of
    grid.drain()  # discovery is not part of round 1

    def devices() -> RoundReport:
        report = RoundReport(round=0, participants=len(node_of), failures=len(flat.failures),
                             failure_reasons=dict(flat.failures))
        if flat.last_evaluate is not None:
            report.device_metrics = scalars(flat.last_evaluate)
            flat.last_evaluate = None
        return report

    on_evaluate = flat_rounds(config, evaluate_fn, round_recorder(
        grid, recorder, lambda _: {"fedin": fedin_stats([flat])}), devices)
    start_flat(flat, grid, config, recorder, initial, on_evaluate)


def depth_model(context: Context) -> ResNet:
    """This node's FedIN model: the depth the run assigns to its device, seeded by the device."""
    config, data, device = device_setup(context)
    with seeded(config.seed * 1_000_003 + device):
        return fedin_model(config, data, device_depth(config, device))


class AppFedINDevice(AppDevice, FedINDevice):
    """Our ClientApp's FedIN/HeteroAvg device: on ``simulation.torch_device``."""


def app_device() -> FedINDevice:
    """Our ClientApp's FedIN/HeteroAvg device (model and data from the run's local settings)."""
    return AppFedINDevice(depth_model, train_data, test_data)


FEDIN = Method(name="fedin", run=run_fedin, device=app_device, sections={"fedin": FedINConfig},
               check=check_fedin)
HETEROAVG = Method(name="heteroavg", run=partial(run_fedin, exchange_features=False),
                   device=app_device, sections={"fedin": FedINConfig}, check=check_fedin)

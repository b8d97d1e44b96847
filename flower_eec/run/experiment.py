"""One run of a method on a Grid: config -> data, models, strategy, recorder -> results folder."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from flower_eec.clients.device import build_device_model
from flower_eec.clients.fedagg import bridge_of
from flower_eec.clients.fedin import device_depth, feature_spec, fedin_model
from flower_eec.core.eclm_training import offline_stage
from flower_eec.core.learning import evaluate, torch_device
from flower_eec.errors import ConfigError
from flower_eec.grid.discovery import place_devices, wait_for_nodes
from flower_eec.grid.metered import MeteredGrid, Traffic
from flower_eec.models import count_parameters
from flower_eec.models.fedin import deepest
from flower_eec.models.modular import ModularNet, module_sizes
from flower_eec.run.config import (
    BRIDGE_METHODS,
    Config,
    demo_fidelity,
    edge_outages,
    rectification,
    skr_mode,
)
from flower_eec.run.federated import FederatedData, federated_data
from flower_eec.run.results import Recorder
from flower_eec.strategies.eclm import ECLM, EclmRoundReport
from flower_eec.strategies.fedagg import FedAgg
from flower_eec.strategies.fedeec import FedEEC
from flower_eec.strategies.fedin import FedIN, HierFedIN, sub_record, tensor_spec
from flower_eec.strategies.hierarchical import RoundReport
from flower_eec.strategies.hierfedavg import HierFedAvg
from flower_eec.topology import Topology

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


def results_dir(config: Config) -> Path:
    """``config.out``, or ``results/<method>-<profile>-<time>`` under the working directory."""
    if config.out:
        return Path(config.out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path.cwd() / "results" / f"{config.method}-{config.profile}-{stamp}"


def central_evaluator(config: Config, data: FederatedData, model_names: list[str]) -> EvaluateFn:
    """Evaluate arrays on the whole global test set, on the server's device.

    The arrays may belong to any of ``model_names`` (FedAgg's tiers differ): the model whose
    state dict has the same keys and shapes is used.
    """
    device = torch_device(config.simulation.torch_device)
    models = [build_device_model(config, data, name).to(device)
              for name in dict.fromkeys(model_names)]
    signatures = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models]
    test = data.global_test()
    fidelity = demo_fidelity(config)
    batch_size = config.train.batch_size if fidelity else config.eval.batch_size

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        shapes = {k: tuple(v.shape) for k, v in arrays.items()}
        model = models[signatures.index(shapes)]
        model.load_state_dict(arrays.to_torch_state_dict())
        return MetricRecord(dict[str, Any](evaluate(model, test, batch_size, bn_train=fidelity)))

    return evaluate_fn


def build_topology(config: Config) -> Topology:
    """The run's tree from ``config.topology``."""
    t = config.topology
    return Topology(num_devices=t.num_devices, num_edges=t.num_edges, assignment=t.assignment,
                    seed=config.seed, mobility_rate=t.mobility, device_dropout=t.device_dropout,
                    edge_dropout=t.edge_dropout, orphans=t.orphans,
                    edge_outages=edge_outages(t))


def _shared_model(config: Config) -> str:
    m = config.model
    if {m.edge, m.cloud} != {m.device} or m.large_fraction > 0:
        raise ConfigError(
            f"method '{config.method}' averages weights, so every tier carries one model: set "
            f"model.edge and model.cloud to model.device ('{m.device}') and model.large_fraction=0")
    return m.device


def _timing(traffic: dict[str, Traffic], exchange_s: float, server_s: float) -> dict[str, float]:
    return {"exchange_s": round(exchange_s, 3), "server_s": round(server_s, 3),
            "device_compute_s": round(sum(t.device_compute_s for t in traffic.values()), 3)}


def _round_recorder(grid: MeteredGrid, recorder: Recorder,
                    extra: Callable[[], dict[str, Any]] | None = None
                    ) -> Callable[[RoundReport], None]:
    """The ``on_round`` hook of hierarchical methods: one results row per cloud round
    (``extra`` adds a method's own fields)."""

    def on_round(report: RoundReport) -> None:
        traffic, exchange_s = grid.drain()
        devices: dict[str, Any] = {"participants": report.participants,
                                   "failures": report.failures}
        if "accuracy" in report.device_metrics:
            devices["mean_local_accuracy"] = report.device_metrics["accuracy"]
            devices["mean_local_loss"] = report.device_metrics.get("loss")
        recorder.add_round({
            "round": report.round, "cloud": report.cloud_metrics, "edges": report.edges,
            "devices": devices,
            "comm_bytes": report.link_bytes,
            "timing": _timing(traffic, exchange_s, report.server_s),
            **(extra() if extra else {}),
        })

    return on_round


def _hierarchical_options(config: Config, grid: MeteredGrid, recorder: Recorder
                          ) -> dict[str, Any]:
    return {"topology": build_topology(config), "evaluate_edges": config.eval.edges,
            "evaluate_every": config.eval.every, "on_round": _round_recorder(grid, recorder),
            "node_wait": config.simulation.node_wait}


def run_hierfavg(config: Config, grid: MeteredGrid, recorder: Recorder,
                 evaluate_fn: EvaluateFn, initial: ArrayRecord) -> None:
    """HierFAVG: Flower's FedAvg at every edge under the ``Hierarchical`` cloud tier."""
    strategy = HierFedAvg(edge_rounds=config.train.edge_rounds,
                          evaluate_devices=config.eval.devices,
                          **_hierarchical_options(config, grid, recorder))
    strategy.start(grid, initial, num_rounds=config.train.rounds,
                   timeout=config.simulation.timeout,
                   train_config=ConfigRecord({"lr": config.train.lr}),
                   evaluate_fn=evaluate_fn)


def fedagg_strategy(config: Config, initial: ArrayRecord, **options: Any) -> FedAgg:
    """The FedAgg (``method=fedeec``: FedEEC) cloud tier of ``config``, its cloud model loaded
    from ``initial``; ``options`` go to ``Hierarchical`` (``topology``, ``on_round``, ...)."""
    data = federated_data(config)
    device = torch_device(config.simulation.torch_device)
    f, t, m = config.fedagg, config.train, config.model
    cloud_model = build_device_model(config, data, m.cloud).to(device)
    cloud_model.load_state_dict(initial.to_torch_state_dict())

    def edge_model(edge: int) -> torch.nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed * 1_000 + edge + 1)
            return build_device_model(config, data, m.edge).to(device)

    d = data.dataset
    return (FedEEC if config.method == "fedeec" else FedAgg)(
        cloud_model=cloud_model, edge_model=edge_model, bridge=bridge_of(f.bridge_weights),
        mean=d.mean, std=d.std, T=f.T, beta=f.beta, lr=t.lr, momentum=t.momentum,
        weight_decay=t.weight_decay, batch_size=t.batch_size, clip=f.clip, schedule=f.schedule,
        fidelity=f.fidelity, fp16=f.fp16, skr=skr_mode(config),
        rectification=rectification(config), num_classes=d.num_classes,
        embedding_shape=(4, d.x_train.shape[2] // 4, d.x_train.shape[3] // 4),
        logits_batch=config.eval.batch_size, seed=config.seed, torch_device=device, **options)


def run_fedagg(config: Config, grid: MeteredGrid, recorder: Recorder,
               evaluate_fn: EvaluateFn, initial: ArrayRecord) -> None:
    """FedAgg and FedEEC: a ``BridgeEdge`` (its own model) per edge under the cloud's tier."""
    strategy = fedagg_strategy(config, initial, **_hierarchical_options(config, grid, recorder))
    t = config.train
    strategy.start(grid, initial, num_rounds=t.rounds, timeout=config.simulation.timeout,
                   train_config=ConfigRecord({"lr": t.lr}), evaluate_fn=evaluate_fn)


def run_fedavg(config: Config, grid: MeteredGrid, recorder: Recorder,
               evaluate_fn: EvaluateFn, initial: ArrayRecord) -> None:
    """Flat FedAvg: Flower's own strategy over all devices, recorded round by round."""
    num_devices = config.topology.num_devices
    wait_for_nodes(grid, num_devices, config.simulation.node_wait)
    # FedAvg aggregates the devices' evaluation just before calling evaluate_fn in the same round
    device_eval: list[MetricRecord] = []

    def evaluate_aggr(records: list[RecordDict], key: str) -> MetricRecord:
        metrics = aggregate_metricrecords(records, key)
        device_eval.append(metrics)
        return metrics

    def on_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        last = server_round == config.train.rounds
        started = time.perf_counter()
        metrics = (evaluate_fn(server_round, arrays)
                   if server_round % config.eval.every == 0 or last else None)
        server_s = time.perf_counter() - started
        traffic, exchange_s = grid.drain()
        train = traffic.get("train", Traffic())
        devices: dict[str, Any] = {"participants": train.sent,
                                   "failures": train.sent - train.replies + train.errors}
        if device_eval:
            local = device_eval.pop()
            devices["mean_local_accuracy"] = local.get("accuracy")
            devices["mean_local_loss"] = local.get("loss")
        recorder.add_round({
            "round": server_round, "cloud": dict(metrics or {}), "devices": devices,
            "comm_bytes": {
                "cloud_to_device": sum(t.sent_bytes for t in traffic.values()),
                "device_to_cloud": sum(t.received_bytes for t in traffic.values())},
            "timing": _timing(traffic, exchange_s, server_s),
        })
        return metrics

    strategy = FedAvg(min_available_nodes=num_devices, min_train_nodes=num_devices,
                      min_evaluate_nodes=num_devices if config.eval.devices else 0,
                      fraction_evaluate=1.0 if config.eval.devices else 0.0,
                      evaluate_metrics_aggr_fn=evaluate_aggr)
    strategy.start(grid, initial, num_rounds=config.train.rounds,
                   timeout=config.simulation.timeout,
                   train_config=ConfigRecord({"lr": config.train.lr}),
                   evaluate_fn=on_evaluate)


def run_eclm(config: Config, grid: MeteredGrid, recorder: Recorder,
             evaluate_fn: EvaluateFn, initial: ArrayRecord) -> None:
    """ECLM: the cloud's offline stage on its own data, then online rounds with sub-models."""
    e, t = config.eclm, config.train
    data = federated_data(config)
    model = build_device_model(config, data, "modular")
    assert isinstance(model, ModularNet)
    model.load_state_dict(initial.to_torch_state_dict())
    offline = offline_stage(model, data.public_train(), epochs=e.offline_epochs,
                            batch_size=t.batch_size, lr=t.lr, lb_weight=e.lb_weight,
                            momentum=t.momentum, weight_decay=t.weight_decay,
                            augmented=config.data.augment, cutout=config.data.cutout,
                            gate_noise=e.gate_noise, seed=config.seed)
    cloud = ArrayRecord(model.state_dict())
    offline["cloud"] = dict(evaluate_fn(0, cloud) or {})
    recorder.note("eclm_offline", offline)
    sizes, shared = module_sizes(model)
    full = {"full_model_params": count_parameters(model), "full_model_bytes": cloud.count_bytes()}

    def on_round(report: EclmRoundReport) -> None:
        traffic, exchange_s = grid.drain()
        metrics = report.device_metrics
        params = list(report.submodel_params.values())
        recorder.add_round({
            "round": report.round, "cloud": report.cloud_metrics,
            "devices": {"participants": report.participants, "failures": report.failures,
                        "mean_local_accuracy": metrics.get("accuracy"),
                        "mean_local_loss": metrics.get("loss"),
                        "mean_local_accuracy_before": metrics.get("accuracy_before")},
            "comm_bytes": report.link_bytes,
            "timing": _timing(traffic, exchange_s, report.server_s),
            "eclm": {"rederived": report.rederived,
                     "mean_submodel_params": float(np.mean(params)) if params else None,
                     **full},
        })

    strategy = ECLM(topology=build_topology(config), module_params=np.array(sizes),
                    shared_params=shared, cloud_weight=e.cloud_weight,
                    evaluate_every=config.eval.every, on_round=on_round,
                    node_wait=config.simulation.node_wait)
    strategy.start(grid, cloud, num_rounds=t.rounds, timeout=config.simulation.timeout,
                   train_config=ConfigRecord({"lr": t.lr}), evaluate_fn=evaluate_fn)


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
            model.load_state_dict(sub_record(arrays, model.state_dict()).to_torch_state_dict())
            result = evaluate(model, test, config.eval.batch_size)
            metrics.update({f"{key}_{depth}": value for key, value in result.items()})
            if depth == top:
                metrics.update(result)
        return MetricRecord(metrics)

    return evaluate_fn


def run_fedin(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """FedIN (``fedin``) or its ablation HeteroAvg (``heteroavg``): depth-heterogeneous devices,
    layer-wise averaging; flat, or as the edge tier of ``Hierarchical`` (``fedin.hierarchical``)."""
    data = federated_data(config)
    evaluate_fn = depth_evaluator(config, data)
    initial = ArrayRecord(fedin_model(config, data, deepest(config.fedin.depths)).state_dict())
    depth_keys = {d: list(fedin_model(config, data, d).state_dict()) for d in config.fedin.depths}
    model_of = {k: tensor_spec(sub_record(initial, depth_keys[device_depth(config, k)]))
                for k in range(config.topology.num_devices)}
    features = feature_spec(config, data) if config.method == "fedin" else None
    train_config = ConfigRecord({"lr": config.train.lr})

    def fedin_stats(tiers: list[FedIN]) -> dict[str, int]:
        drained = [tier.drain() for tier in tiers]
        return {key: sum(d[key] for d in drained) for key in drained[0]}

    if config.fedin.hierarchical:
        on_round = _round_recorder(
            grid, recorder, lambda: {"fedin": fedin_stats(list(hier.edges.values()))})

        hier = HierFedIN(model_of, build_topology(config), features, seed=config.seed,
                         evaluate_devices=config.eval.devices,
                         edge_rounds=config.train.edge_rounds, evaluate_edges=config.eval.edges,
                         evaluate_every=config.eval.every, on_round=on_round,
                         node_wait=config.simulation.node_wait)
        hier.start(grid, initial, num_rounds=config.train.rounds,
                   timeout=config.simulation.timeout, train_config=train_config,
                   evaluate_fn=evaluate_fn)
        return

    node_of, device_of = place_devices(grid, config.topology.num_devices,
                                       config.simulation.node_wait, config.simulation.timeout)
    flat = FedIN(model_of, features, seed=config.seed, evaluate_devices=config.eval.devices)
    flat.device_of = device_of
    grid.drain()  # discovery is not part of round 1

    def on_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        started = time.perf_counter()
        last = server_round == config.train.rounds
        metrics = (evaluate_fn(server_round, arrays)
                   if server_round % config.eval.every == 0 or last else None)
        server_s = time.perf_counter() - started
        traffic, exchange_s = grid.drain()
        devices: dict[str, Any] = {"participants": len(node_of),
                                   "failures": len(flat.failures)}
        if flat.last_evaluate is not None:
            devices["mean_local_accuracy"] = flat.last_evaluate.get("accuracy")
            devices["mean_local_loss"] = flat.last_evaluate.get("loss")
            flat.last_evaluate = None
        recorder.add_round({
            "round": server_round, "cloud": dict(metrics or {}), "devices": devices,
            "comm_bytes": {
                "cloud_to_device": sum(t.sent_bytes for t in traffic.values()),
                "device_to_cloud": sum(t.received_bytes for t in traffic.values())},
            "fedin": fedin_stats([flat]),
            "timing": _timing(traffic, exchange_s, server_s)})
        return metrics

    flat.start(grid, initial, num_rounds=config.train.rounds, timeout=config.simulation.timeout,
               train_config=train_config, evaluate_fn=on_evaluate)


METHODS = {"fedavg": run_fedavg, "hierfavg": run_hierfavg, "fedagg": run_fedagg,
           "fedeec": run_fedagg, "eclm": run_eclm}
# Methods whose devices carry different models: they build their own models and evaluators.
HETEROGENEOUS = {"fedin": run_fedin, "heteroavg": run_fedin}


def run(grid: Grid, config: Config) -> dict[str, Any]:
    """Run ``config.method`` on ``grid``; write and return the results."""
    torch.manual_seed(config.seed)
    random.seed(config.seed)  # Flower's strategies sample nodes with Python's random
    if config.method in HETEROGENEOUS:
        recorder = Recorder(config, results_dir(config))
        HETEROGENEOUS[config.method](config, MeteredGrid(grid), recorder)
        return recorder.finish()
    data = federated_data(config)
    if config.method in BRIDGE_METHODS:
        cloud, tiers = config.model.cloud, [config.model.edge, config.model.cloud]
    else:
        cloud = _shared_model(config)
        tiers = [cloud]
    recorder = Recorder(config, results_dir(config))
    evaluate_fn = central_evaluator(config, data, tiers)
    initial = ArrayRecord(build_device_model(config, data, cloud).state_dict())
    METHODS[config.method](config, MeteredGrid(grid), recorder, evaluate_fn, initial)
    return recorder.finish()

"""FedIN and HeteroAvg from the run config: depth-heterogeneous devices, layer-wise averaging."""

from __future__ import annotations

import time
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from flower_eec.clients.fedin import FedINDevice, device_depth, feature_spec, fedin_model
from flower_eec.core.learning import evaluate, torch_device
from flower_eec.grid.discovery import place_devices
from flower_eec.grid.metered import MeteredGrid
from flower_eec.models.fedin import deepest
from flower_eec.run.config import Config
from flower_eec.run.devices import device_model, test_data, train_data
from flower_eec.run.experiment import (
    EvaluateFn,
    build_topology,
    round_recorder,
    timing,
)
from flower_eec.run.federated import FederatedData, federated_data
from flower_eec.run.registry import Method
from flower_eec.run.results import Recorder
from flower_eec.strategies.fedin import FedIN, HierFedIN, sub_record, tensor_spec


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
        on_round = round_recorder(
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
            "timing": timing(traffic, exchange_s, server_s)})
        return metrics

    flat.start(grid, initial, num_rounds=config.train.rounds, timeout=config.simulation.timeout,
               train_config=train_config, evaluate_fn=on_evaluate)


def app_device() -> FedINDevice:
    """Our ClientApp's FedIN/HeteroAvg device."""
    return FedINDevice(device_model, train_data, test_data)


FEDIN = Method(name="fedin", run=run_fedin, device=app_device, section="fedin")
HETEROAVG = Method(name="heteroavg", run=run_fedin, device=app_device, section="fedin")

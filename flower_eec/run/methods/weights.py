"""FedAvg (flat) and HierFAVG (FedAvg at every edge under the cloud tier): weight averaging."""

from __future__ import annotations

import time
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from flower_eec.clients.weights import WeightsDevice
from flower_eec.grid.discovery import wait_for_nodes
from flower_eec.grid.metered import MeteredGrid, Traffic
from flower_eec.run.config import Config
from flower_eec.run.devices import device_model, test_data, train_data
from flower_eec.run.experiment import (
    hierarchical_options,
    start_point,
    timing,
    train_settings,
)
from flower_eec.run.registry import Method
from flower_eec.run.results import Recorder
from flower_eec.strategies.aggregation import weighted_metrics
from flower_eec.strategies.hierfedavg import HierFedAvg


def run_hierfavg(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """HierFAVG: Flower's FedAvg at every edge under the ``Hierarchical`` cloud tier."""
    evaluate_fn, initial = start_point(config)
    strategy = HierFedAvg(edge_rounds=config.train.edge_rounds,
                          evaluate_devices=config.eval.devices,
                          **hierarchical_options(config, grid, recorder))
    strategy.start(grid, initial, num_rounds=config.train.rounds,
                   timeout=config.simulation.timeout,
                   train_config=ConfigRecord(train_settings(config).to_config()),
                   evaluate_fn=evaluate_fn)


def run_fedavg(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """Flat FedAvg: Flower's own strategy over all devices, recorded round by round."""
    evaluate_fn, initial = start_point(config)
    num_devices = config.topology.num_devices
    wait_for_nodes(grid, num_devices, config.simulation.node_wait)
    # FedAvg aggregates the devices' evaluation just before calling evaluate_fn in the same round
    device_eval: list[MetricRecord] = []

    def evaluate_aggr(records: list[RecordDict], key: str) -> MetricRecord:
        metrics = weighted_metrics([next(iter(r.metric_records.values())) for r in records],
                                   key) or MetricRecord()
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
            "timing": timing(traffic, exchange_s, server_s),
        })
        return metrics

    strategy = FedAvg(min_available_nodes=num_devices, min_train_nodes=num_devices,
                      min_evaluate_nodes=num_devices if config.eval.devices else 0,
                      fraction_evaluate=1.0 if config.eval.devices else 0.0,
                      evaluate_metrics_aggr_fn=evaluate_aggr)
    strategy.start(grid, initial, num_rounds=config.train.rounds,
                   timeout=config.simulation.timeout,
                   train_config=ConfigRecord(train_settings(config).to_config()),
                   evaluate_fn=on_evaluate)


def app_device() -> WeightsDevice:
    """Our ClientApp's device for weight-averaging methods."""
    return WeightsDevice(device_model, train_data, test_data)


FEDAVG = Method(name="fedavg", run=run_fedavg, device=app_device)
HIERFAVG = Method(name="hierfavg", run=run_hierfavg, device=app_device)

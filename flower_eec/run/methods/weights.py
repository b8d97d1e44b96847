"""FedAvg (flat) and HierFAVG (FedAvg at every edge under the cloud tier): weight averaging."""

from __future__ import annotations

from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from flower_eec.clients.weights import WeightsDevice
from flower_eec.grid.discovery import place_devices
from flower_eec.grid.metered import MeteredGrid, Traffic
from flower_eec.run.config import Config
from flower_eec.run.devices import device_model, test_data, train_data
from flower_eec.run.experiment import (
    flat_rounds,
    hierarchical_options,
    round_recorder,
    start_point,
    train_settings,
)
from flower_eec.run.registry import Method
from flower_eec.run.results import Recorder
from flower_eec.run.resumable import start_flat, start_hierarchical
from flower_eec.strategies.aggregation import scalars, weighted_metrics
from flower_eec.strategies.hierarchical import RoundReport
from flower_eec.strategies.hierfedavg import HierFedAvg


def run_hierfavg(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """HierFAVG: Flower's FedAvg at every edge under the ``Hierarchical`` cloud tier."""
    evaluate_fn, initial = start_point(config)
    strategy = HierFedAvg(edge_rounds=config.train.edge_rounds,
                          evaluate_devices=config.eval.devices,
                          **hierarchical_options(config, grid, recorder))
    start_hierarchical(strategy, grid, config, recorder, initial, evaluate_fn,
                       train_config=ConfigRecord(train_settings(config).to_config()))


def run_fedavg(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """Flat FedAvg: Flower's own strategy over all devices, recorded round by round."""
    evaluate_fn, initial = start_point(config)
    num_devices = config.topology.num_devices
    _, device_of = place_devices(grid, num_devices, config.simulation.node_wait)
    grid.drain()  # discovery is not part of round 1

    # FedAvg aggregates the round's replies before it calls evaluate_fn: keep what they said.
    # Every device is sampled (fraction_train=1); FedAvg aggregates only when some replied.
    def fresh() -> RoundReport:
        return RoundReport(round=0, participants=num_devices, failures=num_devices)

    round_so_far = fresh()

    def train_aggr(records: list[RecordDict], key: str) -> MetricRecord:
        round_so_far.failures = num_devices - len(records)
        return weighted_metrics(_metrics(records), key) or MetricRecord()

    def evaluate_aggr(records: list[RecordDict], key: str) -> MetricRecord:
        metrics = weighted_metrics(_metrics(records), key) or MetricRecord()
        round_so_far.device_metrics = scalars(metrics)
        return metrics

    def devices() -> RoundReport:
        nonlocal round_so_far
        report, round_so_far = round_so_far, fresh()
        train = grid.traffic.get("train", Traffic())
        report.failure_reasons = {device_of.get(node, node): reason
                                  for node, reason in train.failed.items()}
        return report

    strategy = FedAvg(min_available_nodes=num_devices, min_train_nodes=num_devices,
                      min_evaluate_nodes=num_devices if config.eval.devices else 0,
                      fraction_evaluate=1.0 if config.eval.devices else 0.0,
                      train_metrics_aggr_fn=train_aggr, evaluate_metrics_aggr_fn=evaluate_aggr)
    start_flat(strategy, grid, config, recorder, initial,
               flat_rounds(config, evaluate_fn, round_recorder(grid, recorder), devices),
               train_config=ConfigRecord(train_settings(config).to_config()))


def _metrics(records: list[RecordDict]) -> list[MetricRecord]:
    return [next(iter(r.metric_records.values())) for r in records]


def app_device() -> WeightsDevice:
    """Our ClientApp's device for weight-averaging methods."""
    return WeightsDevice(device_model, train_data, test_data)


FEDAVG = Method(name="fedavg", run=run_fedavg, device=app_device)
HIERFAVG = Method(name="hierfavg", run=run_hierfavg, device=app_device)

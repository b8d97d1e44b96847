"""FedAvg (flat) and HierFAVG (FedAvg at every edge under the cloud tier): weight averaging.

FedAvg is also ECLM's fair baseline: with ``data.shift_every`` (ECLM's ``eclm.shift_every``)
its devices hold the same shifting shards and local test splits as ECLM's at every round
(``flower_eec.run.shift``), and with ``eval.adapt_epochs`` (ECLM's ``train.local_epochs``) each
device adapts a copy of the global model to its current data, as ECLM's devices adapt their
sub-models, before testing it on its current local test split. Same as ECLM's local accuracy:
the test split, the data adapted on, the loop (SGD on cross-entropy; ECLM's ``lb_weight`` is 0
on devices), lr, momentum, weight decay, batch size, augmentation, epochs, the random stream,
and the mean over devices weighted by their training examples. Different: the model (ECLM's
budget-sized sub-model of a modular model trained first on the cloud's hold-out, adapted with
its selector frozen; FedAvg's ``model.device``, all of it trained, from scratch), and the
starting point: ECLM's devices adapt the cloud model of the previous round inside
``train.adapt``, FedAvg's the model averaged in this round (its evaluation comes after
aggregation), so at the first round after a shift the baseline starts from one federated round
on the new data.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from flower_eec.clients.weights import WeightsDevice
from flower_eec.grid.discovery import place_devices
from flower_eec.grid.metered import MeteredGrid, Traffic
from flower_eec.protocol import names
from flower_eec.run.config import Config
from flower_eec.run.devices import AppDevice, device_model, test_data, train_data
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
from flower_eec.run.shift import data_at_round
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
    """Flat FedAvg: Flower's own strategy over all devices, recorded round by round.

    With ``eval.adapt_epochs`` > 0 the evaluate messages carry ``adapt-epochs`` and the train
    settings, and the devices' metrics are averaged weighted by their training examples
    (``num-train``), as ECLM's are (see the module)."""
    evaluate_fn, initial = start_point(config)
    adapting = config.eval.adapt_epochs > 0
    settings = ConfigRecord(train_settings(config).to_config())
    evaluate_config = ConfigRecord({**settings, names.ADAPT_EPOCHS: config.eval.adapt_epochs,
                                    names.EVAL_BATCH_SIZE: config.eval.batch_size})
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
        weight = names.NUM_TRAIN if adapting else key
        metrics = weighted_metrics(_metrics(records), weight) or MetricRecord()
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
               train_config=settings, evaluate_config=evaluate_config if adapting else None)


def _metrics(records: list[RecordDict]) -> list[MetricRecord]:
    return [next(iter(r.metric_records.values())) for r in records]


class AppWeightsDevice(AppDevice, WeightsDevice):
    """Our ClientApp's device for weight-averaging methods: on ``simulation.torch_device``."""


def app_device() -> WeightsDevice:
    """Our ClientApp's device for weight-averaging methods: its shard and local test split
    under the run's shift schedule (``data.shift_every``; none unless set, FedAvg only)."""
    return AppWeightsDevice(device_model, train_data, test_data, data_at_round_fn=data_at_round)


def data_shift(config: Config) -> int:
    """FedAvg's rounds between label shifts: ``data.shift_every``."""
    return config.data.shift_every


FEDAVG = Method(name="fedavg", run=run_fedavg, device=app_device, shift=data_shift,
                options=("data.shift_every", "eval.adapt_epochs"))
HIERFAVG = Method(name="hierfavg", run=run_hierfavg, device=app_device)

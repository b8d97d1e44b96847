"""One run of a method on a Grid: config -> data, models, strategy, recorder -> results folder."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from datetime import datetime
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from flower_eec.core.learning import evaluate, torch_device
from flower_eec.data import DATA_ENV
from flower_eec.errors import ConfigError
from flower_eec.grid.discovery import wait_for_nodes
from flower_eec.grid.metered import MeteredGrid, Traffic
from flower_eec.grid.watched import WatchedGrid
from flower_eec.protocol.arrays import to_state_dict
from flower_eec.protocol.knobs import TrainSettings
from flower_eec.run.config import (
    Config,
    demo_fidelity,
    edge_outages,
    is_bridge,
)
from flower_eec.run.devices import build_device_model
from flower_eec.run.federated import FederatedData, federated_data
from flower_eec.run.results import Recorder
from flower_eec.strategies.aggregation import scalars
from flower_eec.strategies.hierarchical import RoundReport
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
        model.load_state_dict(to_state_dict(arrays))
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


def timing(traffic: dict[str, Traffic], exchange_s: float, server_s: float) -> dict[str, float]:
    return {"exchange_s": round(exchange_s, 3), "server_s": round(server_s, 3),
            "device_compute_s": round(sum(t.device_compute_s for t in traffic.values()), 3)}


def round_recorder(grid: MeteredGrid, recorder: Recorder,
                   extra: Callable[[RoundReport], dict[str, Any]] | None = None
                   ) -> Callable[[RoundReport], None]:
    """The one results row per cloud round, for every method: hierarchical strategies call it as
    their ``on_round`` hook, flat ones through ``flat_rounds`` (``extra`` adds a method's own
    fields). Bytes are the report's per-link counts, or, for a flat run, all that the metered
    grid saw each way."""

    def on_round(report: RoundReport) -> None:
        traffic, exchange_s = grid.drain()
        devices: dict[str, Any] = {
            "participants": report.participants, "failures": report.failures,
            "failed": {str(device): reason
                       for device, reason in sorted(report.failure_reasons.items())}}
        devices.update({f"mean_local_{key}": value  # compute_s: summed in ``timing``
                        for key, value in report.device_metrics.items() if key != "compute_s"})
        if report.stale:
            devices["stale"] = {str(device): {"used": used, "expected": expected}
                                for device, (used, expected) in sorted(report.stale.items())}
        if report.restored:
            devices["restored"] = {str(device): {"held": held, "used": used}
                                   for device, (held, used) in sorted(report.restored.items())}
        comm_bytes = report.link_bytes or {
            "cloud_to_device": sum(t.sent_bytes for t in traffic.values()),
            "device_to_cloud": sum(t.received_bytes for t in traffic.values())}
        recorder.add_round({
            "round": report.round, "cloud": report.cloud_metrics, "edges": report.edges,
            "devices": devices, "comm_bytes": comm_bytes,
            "timing": timing(traffic, exchange_s, report.server_s),
            "skipped_steps": {"devices": sum(t.skipped_steps for t in traffic.values()),
                              "server": report.skipped_steps},
            **(extra(report) if extra else {}),
        })

    return on_round


def flat_rounds(config: Config, evaluate_fn: EvaluateFn, on_round: Callable[[RoundReport], None],
                devices: Callable[[], RoundReport]) -> EvaluateFn:
    """The ``evaluate_fn`` of a flat Flower strategy, which calls it once per round after the
    round's training and device evaluation: central evaluation every ``eval.every`` rounds and
    at the last, then ``on_round`` with ``devices()``'s counts and metrics of the round."""

    def on_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0:
            return None
        started = time.perf_counter()
        due = server_round % config.eval.every == 0 or server_round == config.train.rounds
        metrics = evaluate_fn(server_round, arrays) if due else None
        report = devices()
        report.round, report.cloud_metrics = server_round, scalars(metrics or MetricRecord())
        report.server_s = time.perf_counter() - started
        on_round(report)
        return metrics

    return on_evaluate


def hierarchical_options(config: Config, grid: MeteredGrid, recorder: Recorder
                         ) -> dict[str, Any]:
    return {"topology": build_topology(config), "evaluate_edges": config.eval.edges,
            "evaluate_every": config.eval.every, "on_round": round_recorder(grid, recorder),
            "node_wait": config.simulation.node_wait}


def train_settings(config: Config) -> TrainSettings:
    """The devices' local training, from the run's ``train`` and ``data`` sections."""
    t = config.train
    return TrainSettings(lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                         batch_size=t.batch_size, epochs=t.local_epochs,
                         augment=config.data.augment, cutout=config.data.cutout,
                         seed=config.seed)


def start_point(config: Config) -> tuple[EvaluateFn, ArrayRecord]:
    """The central evaluator of a run whose tiers carry zoo models, and the cloud's initial
    weights (seeded): every tier is ``model.device`` when weights are averaged, the edge and
    cloud models otherwise (FedAgg's bridge)."""
    data = federated_data(config)
    if is_bridge(config):
        cloud, tiers = config.model.cloud, [config.model.edge, config.model.cloud]
    else:
        cloud = _shared_model(config)
        tiers = [cloud]
    evaluate_fn = central_evaluator(config, data, tiers)
    return evaluate_fn, ArrayRecord(build_device_model(config, data, cloud).state_dict())


def describe_run(config: Config, out: Path) -> str:
    """The first line of a run: what runs, on how many devices, where its results go."""
    return (f"Running {config.method} ({config.profile} profile): "
            f"{config.topology.num_devices} devices, {config.train.rounds} rounds; "
            f"results in {out}")


def describe_data(config: Config) -> str:
    """What loading the run's data does, said before it starts (it can take a while)."""
    d, devices = config.data, config.topology.num_devices
    if d.dataset == "synthetic":
        return (f"Making synthetic data ({d.synthetic_train} training and {d.synthetic_test} "
                f"test images) and splitting it over {devices} devices")
    root = d.root or os.environ.get(DATA_ENV, "") or "nowhere (set data.root)"
    return f"Loading {d.dataset} from {root} and splitting it over {devices} devices"


def run(grid: Grid, config: Config) -> dict[str, Any]:
    """Run ``config.method`` on ``grid``; write and return the results. A run that raises is
    recorded as ``failed`` with the reason (its rounds so far kept), then the error goes on."""
    from flower_eec.run.registry import method

    entry = method(config.method)
    torch.manual_seed(config.seed)
    random.seed(config.seed)  # Flower's strategies sample nodes with Python's random
    out = results_dir(config)
    log(INFO, "%s", describe_run(config, out))
    recorder = Recorder(config, out, overwrite=config.overwrite, resume=config.resume)
    try:
        # a federation of the wrong size is told before the data is loaded
        wait_for_nodes(grid, config.topology.num_devices, config.simulation.node_wait)
        log(INFO, "%s", describe_data(config))
        federated_data(config)  # cached: the method's own calls find it loaded
        entry.run(config, MeteredGrid(WatchedGrid(grid)), recorder)
    except BaseException as exc:
        recorder.fail(f"{type(exc).__name__}: {exc}".strip().rstrip(":"))
        raise
    return recorder.finish()

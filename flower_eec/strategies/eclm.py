"""ECLM's online stage: per-device sub-models of a modular cloud model, merged back module-wise.

ECLM: "Edge-Cloud Collaborative Learning with Block-Level Decomposition" (ALGORITHMS.md, section
5). Two tiers (devices and cloud). How budgets buy modules and how merges are weighted is our
reconstruction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flower_eec.clients.eclm import ROUTE, SUBMODEL, USAGE, layer_key
from flower_eec.core.eclm_math import (
    SHARED,
    Block,
    derive_submodel,
    module_wise_average,
    submodel_params,
)
from flower_eec.grid.discovery import place_devices
from flower_eec.grid.metered import message_bytes
from flower_eec.models.modular import SELECTOR_PREFIX, block_of
from flower_eec.protocol.replies import metric_problem, train_reply_problem
from flower_eec.strategies.hierarchical import RoundReport, mean_records, scalars
from flower_eec.topology import Topology

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
TRAIN = "train"


@dataclass(frozen=True)
class DeviceReport:
    """What a device said in ``query.route``: module use, examples, budget, data epoch."""

    usage: np.ndarray
    num_examples: int
    budget: int
    shift_epoch: int


@dataclass
class EclmRoundReport(RoundReport):
    """A round of ECLM: the usual counts plus sub-model re-derivations and sizes."""

    rederived: int = 0
    submodel_params: dict[int, int] = field(default_factory=dict)


def route_problem(reply: Message, layers: int, modules: int) -> str | None:
    """Why a ``query.route`` reply is unusable, or None."""
    if reply.has_error():
        return f"error reply: {reply.error.reason}"
    records = reply.content.array_records
    if list(records) != [USAGE] or list(records[USAGE]) != [USAGE]:
        return f"expected an ArrayRecord '{USAGE}' holding '{USAGE}', got {list(records)}"
    usage = records[USAGE][USAGE].numpy()
    if usage.shape != (layers, modules):
        return f"module use has shape {list(usage.shape)}, expected [{layers}, {modules}]"
    if not np.isfinite(usage).all() or (usage < 0).any():
        return "module use holds NaN, infinite or negative values"
    if not np.allclose(usage.sum(axis=1), 1.0, atol=1e-3):
        return "module use does not sum to 1 in every layer"
    problem = metric_problem(reply.content)
    if problem:
        return problem
    metrics = next(iter(reply.content.metric_records.values()))
    budget, epoch = metrics.get("budget"), metrics.get("shift-epoch")
    if not isinstance(budget, int) or budget <= 0:
        return f"budget is {budget!r}, expected a positive integer"
    if not isinstance(epoch, int) or epoch < 0:
        return f"shift-epoch is {epoch!r}, expected an integer >= 0"
    return None


def usage_problem(reply: Message, layers: int, modules: int) -> str | None:
    """Why a train reply's routing mass (``usage``, a flat list of L*M) is unusable, or None."""
    metrics = next(iter(reply.content.metric_records.values()))
    usage = metrics.get(USAGE)
    if not isinstance(usage, list) or len(usage) != layers * modules:
        return f"metric '{USAGE}' must list {layers * modules} routing masses"
    if not all(math.isfinite(u) and u >= 0 for u in usage):
        return f"metric '{USAGE}' holds NaN, infinite or negative values"
    return None


class ECLM(Strategy):
    """ECLM's cloud: derive a sub-model per device, send it, merge the adapted modules back.

    Each round: every online device gets the stem and selector (``query.route``) and answers
    with its module-use histogram on its current data, its data size and its budget; the cloud
    re-derives a device's sub-model when its budget or data epoch changed (``derive_submodel``);
    every device trains its sub-model (``train``) and returns its stem, modules and head with the
    routing mass of each module; the cloud merges them (``module_wise_average``), weighting module
    ``i`` of device ``k`` by mass x examples and shared tensors by examples.

    Parameters
    ----------
    topology : Topology
        Which devices are online each round (ECLM ignores the edges).
    module_params : np.ndarray
        ``(L, M)`` parameters of each module of the full model.
    shared_params : int
        Parameters outside the module layers (stem, selector, head).
    cloud_weight : float (default: 0.2)
        Weight of the cloud's own copy of each block that devices returned, in [0, 1).
    evaluate_every : int (default: 1)
        Evaluate the cloud model every N rounds (and after the last).
    on_round : Callable[[EclmRoundReport], None], optional
        Called after every round with its report.
    node_wait : float (default: 60.0)
        Seconds to wait for ``topology.num_devices`` nodes at start.
    """

    def __init__(self, topology: Topology, module_params: np.ndarray, shared_params: int,
                 cloud_weight: float = 0.2, evaluate_every: int = 1,
                 on_round: Callable[[EclmRoundReport], None] | None = None,
                 node_wait: float = 60.0) -> None:
        self.topology = topology
        self.module_params = np.asarray(module_params, dtype=np.int64)
        self.shared_params = shared_params
        self.cloud_weight = cloud_weight
        self.evaluate_every = evaluate_every
        self.on_round = on_round
        self.node_wait = node_wait
        self.node_of: dict[int, int] = {}
        self.device_of: dict[int, int] = {}
        self.submodels: dict[int, tuple[tuple[int, ...], ...]] = {}
        self.derived_for: dict[int, tuple[int, int]] = {}

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, modules) of the full model."""
        layers, modules = self.module_params.shape
        return int(layers), int(modules)

    def summary(self) -> None:
        """Log the setting."""
        layers, modules = self.shape
        log(INFO, "\t├──> ECLM: %d devices, %d layers x %d modules, cloud weight %.2f",
            self.topology.num_devices, layers, modules, self.cloud_weight)

    # Flower's Strategy interface; ECLM's round is two exchanges, so ``start`` drives it.
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Not used on its own: a round needs the devices' module use first; call ``start``."""
        raise NotImplementedError("ECLM configures rounds inside start(); call start()")

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Not used on its own: see ``start``."""
        raise NotImplementedError("ECLM aggregates inside start(); call start()")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Devices evaluate their adapted sub-model inside ``train``: no evaluate messages."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Nothing to aggregate (see ``configure_evaluate``)."""
        return None

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: EvaluateFn | None = None) -> Result:
        """Run ``num_rounds`` online rounds from the (offline-trained) cloud model."""
        log(INFO, "Starting %s strategy:", type(self).__name__)
        self.summary()
        train_config = train_config or ConfigRecord()
        self.node_of, self.device_of = place_devices(grid, self.topology.num_devices,
                                                     self.node_wait, timeout)
        cloud = {key: array.numpy() for key, array in initial_arrays.items()}
        result = Result(arrays=initial_arrays)
        for server_round in range(1, num_rounds + 1):
            report = EclmRoundReport(round=server_round)
            cloud = self.round(grid, server_round, cloud, train_config, timeout, report)
            result.arrays = ArrayRecord({k: Array(v) for k, v in cloud.items()})
            if evaluate_fn and (server_round % self.evaluate_every == 0
                                or server_round == num_rounds):
                started = time.perf_counter()
                metrics = evaluate_fn(server_round, result.arrays)
                report.server_s += time.perf_counter() - started
                if metrics is not None:
                    report.cloud_metrics = scalars(metrics)
                    result.evaluate_metrics_serverapp[server_round] = metrics
            log(INFO, "[ROUND %d/%d] %d devices, %d failed, %d sub-models re-derived, cloud %s",
                server_round, num_rounds, report.participants, report.failures,
                report.rederived, report.cloud_metrics)
            if self.on_round:
                self.on_round(report)
        return result

    def round(self, grid: Grid, server_round: int, cloud: dict[str, np.ndarray],
              config: ConfigRecord, timeout: float, report: EclmRoundReport
              ) -> dict[str, np.ndarray]:
        """One online round: route, derive, adapt, merge. Returns the new cloud state."""
        devices = np.flatnonzero(self.topology.at_round(server_round).device_online).tolist()
        report.participants = len(devices)
        reports = self._route(grid, server_round, cloud, devices, timeout, report)
        started = time.perf_counter()
        for device, said in reports.items():
            if self.derived_for.get(device) != (said.budget, said.shift_epoch):
                self.submodels[device] = derive_submodel(said.usage, said.budget,
                                                         self.module_params, self.shared_params)
                self.derived_for[device] = (said.budget, said.shift_epoch)
                report.rederived += 1
            report.submodel_params[device] = submodel_params(
                self.submodels[device], self.module_params, self.shared_params)
        report.server_s += time.perf_counter() - started
        updates, importance, metrics = self._adapt(grid, server_round, cloud, reports, config,
                                                   timeout, report)
        started = time.perf_counter()
        if updates:
            cloud = module_wise_average(cloud, updates, importance, block_of, self.cloud_weight)
            weights = [float(m["num-examples"]) for m in metrics]  # type: ignore[arg-type]
            report.device_metrics = scalars(mean_records(metrics, weights))
        report.server_s += time.perf_counter() - started
        return cloud

    def _exchange(self, grid: Grid, messages: list[Message], timeout: float,
                  report: EclmRoundReport) -> dict[int, Message]:
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        for message in messages:
            report.add("cloud_to_device", message_bytes(message))
        for reply in replies:
            report.add("device_to_cloud", message_bytes(reply))
        by_device = {self.device_of[r.metadata.src_node_id]: r for r in replies
                     if r.metadata.src_node_id in self.device_of}
        for message in messages:
            device = self.device_of[message.metadata.dst_node_id]
            if device not in by_device:
                self._fail(report, device, "no reply before the time-out")
        return by_device

    def _fail(self, report: EclmRoundReport, device: int, reason: str) -> None:
        report.failures += 1
        report.failure_reasons[device] = reason
        log(WARNING, "Device %s failed this round: %s", device, reason)

    def _route(self, grid: Grid, server_round: int, cloud: dict[str, np.ndarray],
               devices: list[int], timeout: float, report: EclmRoundReport
               ) -> dict[int, DeviceReport]:
        routing = {k: v for k, v in cloud.items() if block_of(k) is None
                   and not k.startswith("head.")}
        messages = [Message(RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in routing.items()}),
            "config": ConfigRecord({"server-round": server_round})}),
            dst_node_id=self.node_of[d], message_type=ROUTE, group_id=str(server_round))
            for d in devices]
        reports = {}
        for device, reply in self._exchange(grid, messages, timeout, report).items():
            problem = route_problem(reply, *self.shape)
            if problem:
                self._fail(report, device, f"module-use report rejected: {problem}")
                continue
            metrics = next(iter(reply.content.metric_records.values()))
            reports[device] = DeviceReport(
                usage=reply.content.array_records[USAGE][USAGE].numpy().astype(np.float64),
                num_examples=int(metrics["num-examples"]),  # type: ignore[arg-type]
                budget=int(metrics["budget"]),  # type: ignore[arg-type]
                shift_epoch=int(metrics["shift-epoch"]))  # type: ignore[arg-type]
        return reports

    def submodel_keys(self, cloud: dict[str, np.ndarray], kept: tuple[tuple[int, ...], ...]
                      ) -> list[str]:
        """Names of the cloud tensors a sub-model holding ``kept`` carries."""
        return [k for k in cloud if (block := block_of(k)) is None or block[1] in kept[block[0]]]

    def _adapt(self, grid: Grid, server_round: int, cloud: dict[str, np.ndarray],
               reports: dict[int, DeviceReport], config: ConfigRecord, timeout: float,
               report: EclmRoundReport
               ) -> tuple[list[dict[str, np.ndarray]], list[dict[Block, float]],
                          list[MetricRecord]]:
        messages, expected = [], {}
        for device in reports:
            kept = self.submodels[device]
            keys = self.submodel_keys(cloud, kept)
            layout = ConfigRecord({layer_key(layer): list(held) for layer, held in
                                   enumerate(kept)})
            messages.append(Message(RecordDict({
                "arrays": ArrayRecord({k: Array(cloud[k]) for k in keys}),
                "config": ConfigRecord({**dict(config), "server-round": server_round}),
                SUBMODEL: layout}),
                dst_node_id=self.node_of[device], message_type=TRAIN,
                group_id=str(server_round)))
            expected[device] = ArrayRecord({k: Array(cloud[k]) for k in keys
                                            if not k.startswith(SELECTOR_PREFIX)})
        updates, importance, metrics = [], [], []
        layers, modules = self.shape
        for device, reply in self._exchange(grid, messages, timeout, report).items():
            problem = (train_reply_problem(reply, expected[device])
                       or usage_problem(reply, layers, modules))
            if problem:
                self._fail(report, device, f"sub-model rejected: {problem}")
                continue
            record = next(iter(reply.content.metric_records.values()))
            examples = float(record["num-examples"])  # type: ignore[arg-type]
            mass = np.asarray(record[USAGE], dtype=np.float64).reshape(layers, modules)
            weights: dict[Block, float] = {SHARED: examples}
            for layer, held in enumerate(self.submodels[device]):
                for i in held:
                    weights[(layer, i)] = float(mass[layer, i]) * examples
            updates.append({k: a.numpy() for k, a in
                            next(iter(reply.content.array_records.values())).items()})
            importance.append(weights)
            metrics.append(MetricRecord(dict(scalars(record))))
        return updates, importance, metrics

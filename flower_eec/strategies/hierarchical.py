"""The cloud tier of end-edge-cloud FL: nests one Flower strategy per edge (HierFAVG when FedAvg).

HierFAVG: Liu et al., "Client-Edge-Cloud Hierarchical Federated Learning", ICC 2020,
https://arxiv.org/abs/1905.06641
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flower_eec.grid.discovery import place_devices
from flower_eec.grid.edge import EdgeGrid
from flower_eec.grid.metered import message_bytes
from flower_eec.protocol.replies import common_metrics, metric_problem, train_reply_problem
from flower_eec.strategies.aggregation import match_dtypes, weighted_average
from flower_eec.topology import RoundTopology, Topology

CLOUD_DIRECT = -1  # the group of devices attached to the cloud while their edge is offline

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@dataclass
class RoundReport:
    """What one cloud round did: per-edge results, device counts, traffic between edge and cloud."""

    round: int
    edges: list[dict[str, Any]] = field(default_factory=list)
    participants: int = 0
    failures: int = 0
    failure_reasons: dict[int, str] = field(default_factory=dict)
    device_metrics: dict[str, float] = field(default_factory=dict)
    cloud_metrics: dict[str, float] = field(default_factory=dict)
    link_bytes: dict[str, int] = field(default_factory=dict)
    server_s: float = 0.0

    def count(self, messages: list[Message], replies: list[Message],
              group_of: dict[int, int]) -> None:
        """Add the bytes of one exchange to the device links of the groups involved."""
        for message in messages:
            tier = "cloud" if group_of.get(message.metadata.dst_node_id) == CLOUD_DIRECT else "edge"
            self.add(f"{tier}_to_device", message_bytes(message))
        for reply in replies:
            tier = "cloud" if group_of.get(reply.metadata.src_node_id) == CLOUD_DIRECT else "edge"
            self.add(f"device_to_{tier}", message_bytes(reply))

    def add(self, link: str, size: int) -> None:
        """Add ``size`` bytes to ``link`` (e.g. ``edge_to_cloud``)."""
        self.link_bytes[link] = self.link_bytes.get(link, 0) + size


class Hierarchical(Strategy):
    """Cloud-tier strategy over edge-tier strategies (any ``flwr.serverapp.strategy.Strategy``).

    Each cloud round runs ``edge_rounds`` edge rounds. In an edge round every edge's strategy
    configures messages for its online devices (through an ``EdgeGrid`` view), all messages go
    out in one ``send_and_receive``, and each edge's strategy aggregates its own devices'
    replies. Then the cloud averages the edge models, weighted by the examples beneath them,
    and every edge starts the next round from the cloud model.

    Parameters
    ----------
    edge : Strategy | Callable[[int], Strategy]
        The edge tier. A strategy instance is deep-copied per edge (stateful strategies such
        as FedAdam keep state per edge); a callable is asked once per edge index.
    topology : Topology
        Cloud -> edges -> devices, with mobility and connectivity per round.
    edge_rounds : int (default: 1)
        Edge aggregations per cloud aggregation (kappa2 in HierFAVG).
    weighted_by_key : str (default: "num-examples")
        The metric that weights averages, as in Flower's strategies.
    evaluate_edges : bool (default: True)
        Also pass every edge model to ``evaluate_fn`` (server-side evaluation).
    evaluate_every : int (default: 1)
        Evaluate every N cloud rounds (and always after the last).
    on_round : Callable[[RoundReport], None], optional
        Called after every cloud round with its report.
    node_wait : float (default: 60.0)
        Seconds to wait at start for all ``topology.num_devices`` nodes to register; a
        different number of nodes is then a ``ConfigError``.
    """

    def __init__(self, edge: Strategy | Callable[[int], Strategy], topology: Topology,
                 edge_rounds: int = 1, weighted_by_key: str = "num-examples",
                 evaluate_edges: bool = True, evaluate_every: int = 1,
                 on_round: Callable[[RoundReport], None] | None = None,
                 node_wait: float = 60.0) -> None:
        if edge_rounds < 1:
            raise ValueError(f"edge_rounds must be >= 1, got {edge_rounds}")
        self.topology = topology
        self.edge_rounds = edge_rounds
        self.weighted_by_key = weighted_by_key
        self.evaluate_edges = evaluate_edges
        self.evaluate_every = evaluate_every
        self.on_round = on_round
        self.node_wait = node_wait
        groups = [*range(topology.num_edges), CLOUD_DIRECT]
        if isinstance(edge, Strategy):
            self.edges = {g: copy.deepcopy(edge) for g in groups}
        else:
            self.edges = {g: edge(g) for g in groups}
        self.node_of: dict[int, int] = {}
        self.device_of: dict[int, int] = {}
        self.described: dict[int, ConfigRecord] = {}  # device -> its query.describe answer
        self.edge_arrays: dict[int, ArrayRecord] = {}
        self.reference = ArrayRecord()

    def summary(self) -> None:
        """Log the tiers."""
        log(INFO, "\t├──> Hierarchical: %d edges, %d devices, %d edge rounds per cloud round",
            self.topology.num_edges, self.topology.num_devices, self.edge_rounds)
        log(INFO, "\t└──> Edge strategy: %s", type(self.edges[0]).__name__)

    # --- one edge round -------------------------------------------------------------------

    def groups(self, view: RoundTopology) -> dict[int, list[int]]:
        groups = {e: view.devices_of(e) for e in range(self.topology.num_edges)}
        groups[CLOUD_DIRECT] = view.cloud_direct()
        return {g: devices for g, devices in groups.items() if devices}

    def configure_groups(self, kind: str, server_round: int, view: RoundTopology,
                   arrays_of: Callable[[int], ArrayRecord], config: ConfigRecord,
                   grid: Grid) -> tuple[list[Message], dict[int, int]]:
        """Messages of every edge for one phase, and node id -> group of each message."""
        messages: list[Message] = []
        group_of: dict[int, int] = {}
        for group, devices in self.groups(view).items():
            strategy = self.edges[group]
            needed = max(getattr(strategy, "min_available_nodes", 1),
                         getattr(strategy, f"min_{kind}_nodes", 1))
            if len(devices) < needed:
                log(WARNING, "Edge %s has %d online devices, fewer than its strategy's minimum "
                    "(%d): it sits this %s round out", group, len(devices), needed, kind)
                continue
            edge_grid = EdgeGrid(grid, [self.node_of[d] for d in devices])
            configure = getattr(strategy, f"configure_{kind}")
            try:
                edge_messages = list(configure(server_round, arrays_of(group),
                                               ConfigRecord(dict(config)), edge_grid))
            except Exception as exc:  # noqa: BLE001 - one edge's failure must not end the run
                log(WARNING, "Edge %s could not configure its %s round (%s): it sits it out",
                    group, kind, exc)
                continue
            for message in edge_messages:
                group_of[message.metadata.dst_node_id] = group
                messages.append(message)
        return messages, group_of

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Every edge's train messages for one edge round (edges start from their own model)."""
        view = self.topology.at_round(server_round)
        messages, _ = self.configure_groups("train", server_round, view,
                                      lambda g: self.edge_arrays.get(g, arrays), config, grid)
        return messages

    def split_replies(self, replies: Iterable[Message], group_of: dict[int, int],
               report: RoundReport, check: Callable[[Message, int], str | None]
               ) -> dict[int, list[Message]]:
        by_group: dict[int, list[Message]] = {}
        answered = set()
        for reply in replies:
            node = reply.metadata.src_node_id
            answered.add(node)
            group = group_of.get(node)
            if group is None:
                continue
            problem = check(reply, group)
            if problem:
                self.fail_device(report, node, problem)
                continue
            by_group.setdefault(group, []).append(reply)
        for node in set(group_of) - answered:
            self.fail_device(report, node, "no reply before the time-out")
        return by_group

    def fail_device(self, report: RoundReport, node: int, reason: str) -> None:
        device = self.device_of.get(node, node)
        report.failures += 1
        report.failure_reasons[device] = reason
        log(WARNING, "Device %s failed this round: %s", device, reason)

    def aggregate_edges(self, server_round: int, by_group: dict[int, list[Message]],
                         examples: dict[int, float]) -> list[MetricRecord]:
        metrics = []
        for group, replies in by_group.items():
            try:
                arrays, edge_metrics = self.edges[group].aggregate_train(
                    server_round, common_metrics(replies))
            except Exception as exc:  # noqa: BLE001 - one edge's failure must not end the run
                log(WARNING, "Edge %s could not aggregate its devices' replies (%s); its model "
                    "is left as that failure found it", group, exc)
                continue
            if arrays is None:
                continue
            self.edge_arrays[group] = match_dtypes(arrays, self.reference)
            examples[group] = examples.get(group, 0.0) + sum(
                scalars(next(iter(r.content.metric_records.values())))[self.weighted_by_key]
                for r in replies)
            if edge_metrics is not None:
                metrics.append(edge_metrics)
        return metrics

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Not used on its own: ``start`` aggregates per edge, then across edges."""
        raise NotImplementedError("Hierarchical aggregates inside start(); call start()")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Every edge's evaluate messages, all on the cloud model."""
        view = self.topology.at_round(server_round)
        messages, _ = self.configure_groups("evaluate", server_round, view, lambda g: arrays,
                                      config, grid)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Weighted mean of the devices' evaluation metrics."""
        valid = [r for r in replies if not r.has_error()
                 and metric_problem(r.content, self.weighted_by_key) is None]
        return mean_metrics(valid, self.weighted_by_key)

    # --- the loop -------------------------------------------------------------------------

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: EvaluateFn | None = None) -> Result:
        """Run ``num_rounds`` cloud rounds; returns Flower's ``Result`` (cloud arrays, metrics)."""
        log(INFO, "Starting %s strategy:", type(self).__name__)
        self.summary()
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        self.described = {}
        self.node_of, self.device_of = place_devices(
            grid, self.topology.num_devices, self.node_wait, timeout, answers=self.described)
        self.reference = initial_arrays
        self.setup(grid, timeout)
        result = Result(arrays=initial_arrays)
        cloud = initial_arrays
        for server_round in range(1, num_rounds + 1):
            report = RoundReport(round=server_round)
            cloud, train_metrics = self.cloud_round(grid, server_round, cloud, train_config,
                                                     timeout, report)
            result.arrays = cloud
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            if server_round % self.evaluate_every == 0 or server_round == num_rounds:
                self.evaluate_round(grid, server_round, cloud, evaluate_config, timeout,
                               evaluate_fn, report, result)
            log(INFO, "[ROUND %d/%d] %d devices, %d failed, cloud %s", server_round,
                num_rounds, report.participants, report.failures, report.cloud_metrics)
            if self.on_round:
                self.on_round(report)
        return result

    def setup(self, grid: Grid, timeout: float) -> None:
        """Called once after the devices are discovered, before round 1 (nothing to do here).

        Methods that need something from every device before training override it.
        """

    def cloud_round(self, grid: Grid, server_round: int, cloud: ArrayRecord,
                     config: ConfigRecord, timeout: float, report: RoundReport
                     ) -> tuple[ArrayRecord, MetricRecord | None]:
        view = self.topology.at_round(server_round)
        report.participants = len(view.participants())
        self.edge_arrays = {g: cloud for g in self.edges}
        examples: dict[int, float] = {}
        metrics: list[MetricRecord] = []
        for step in range(self.edge_rounds):
            edge_round = (server_round - 1) * self.edge_rounds + step + 1
            metrics = self.edge_round(grid, edge_round, view, config, timeout, report,
                                       examples)
        started = time.perf_counter()
        report.edges = [{"edge": g, "examples": examples.get(g, 0.0)}
                        for g in range(self.topology.num_edges)]
        contributing = {g: n for g, n in examples.items() if n > 0}
        if contributing:
            cloud = self.aggregate_cloud(server_round, cloud, contributing, report)
        report.server_s += time.perf_counter() - started
        merged = mean_records(metrics, [1.0] * len(metrics)) if metrics else None
        return cloud, merged

    def edge_round(self, grid: Grid, edge_round: int, view: RoundTopology,
                    config: ConfigRecord, timeout: float, report: RoundReport,
                    examples: dict[int, float]) -> list[MetricRecord]:
        """Configure every edge, one ``send_and_receive``, check the replies, aggregate per edge."""
        started = time.perf_counter()
        messages, group_of = self.configure_groups(
            "train", edge_round, view, lambda g: self.edge_arrays[g], config, grid)
        report.server_s += time.perf_counter() - started
        if not messages:
            return []
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        report.count(messages, replies, group_of)
        started = time.perf_counter()
        by_group = self.split_replies(replies, group_of, report, self.reply_problem)
        metrics = self.aggregate_edges(edge_round, by_group, examples)
        report.server_s += time.perf_counter() - started
        return metrics

    def reply_problem(self, reply: Message, group: int) -> str | None:
        """Why a device's train reply cannot be aggregated by its edge, or None when it can.

        Override for methods whose replies carry something other than the model's arrays.
        """
        return train_reply_problem(reply, self.reference, self.weighted_by_key)

    def aggregate_cloud(self, server_round: int, cloud: ArrayRecord,
                        examples: dict[int, float], report: RoundReport) -> ArrayRecord:
        """The cloud step: the new cloud model from the edges that trained this round.

        HierFAVG's: the edge models averaged, weighted by the examples beneath each edge
        (``examples``: group -> examples, only groups with some). Override for other methods.
        """
        report.add("edge_to_cloud", sum(self.edge_arrays[g].count_bytes()
                                        for g in examples if g != CLOUD_DIRECT))
        cloud = weighted_average([self.edge_arrays[g] for g in examples],
                                 [examples[g] for g in examples])
        online_edges = int(self.topology.at_round(server_round).edge_online.sum())
        report.add("cloud_to_edge", cloud.count_bytes() * online_edges)
        return cloud

    def evaluate_round(self, grid: Grid, server_round: int, cloud: ArrayRecord,
                  config: ConfigRecord, timeout: float, evaluate_fn: EvaluateFn | None,
                  report: RoundReport, result: Result) -> None:
        started = time.perf_counter()
        if evaluate_fn is not None:
            if self.evaluate_edges:
                for entry in report.edges:
                    if entry["examples"] > 0:
                        edge_metrics = evaluate_fn(server_round, self.edge_arrays[entry["edge"]])
                        entry.update(scalars(edge_metrics or MetricRecord()))
            cloud_metrics = evaluate_fn(server_round, cloud)
            if cloud_metrics is not None:
                report.cloud_metrics = scalars(cloud_metrics)
                result.evaluate_metrics_serverapp[server_round] = cloud_metrics
        report.server_s += time.perf_counter() - started
        view = self.topology.at_round(server_round)
        messages, group_of = self.configure_groups("evaluate", server_round, view, lambda g: cloud,
                                             config, grid)
        if messages:
            replies = list(grid.send_and_receive(messages, timeout=timeout))
            report.count(messages, replies, group_of)
            device_metrics = self.aggregate_evaluate(server_round, replies)
            if device_metrics is not None:
                report.device_metrics = scalars(device_metrics)
                result.evaluate_metrics_clientapp[server_round] = device_metrics


def scalars(record: MetricRecord) -> dict[str, float]:
    """A record's int and float values, as floats (lists are left out)."""
    return {key: float(value) for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def mean_records(records: list[MetricRecord], weights: list[float]) -> MetricRecord:
    """Weighted mean of the scalar metrics that every record carries."""
    values = [scalars(record) for record in records]
    shared = set.intersection(*(set(v) for v in values))
    total = sum(weights)
    return MetricRecord({key: sum(w * v[key] for w, v in zip(weights, values, strict=True)) / total
                         for key in sorted(shared)})


def mean_metrics(replies: list[Message], weighted_by_key: str = "num-examples"
                 ) -> MetricRecord | None:
    """Example-weighted mean of the reply metrics, with the total of ``weighted_by_key``."""
    if not replies:
        return None
    records = [next(iter(r.content.metric_records.values())) for r in replies]
    weights = [scalars(record)[weighted_by_key] for record in records]
    merged = mean_records(records, weights)
    merged[weighted_by_key] = int(sum(weights))
    return merged

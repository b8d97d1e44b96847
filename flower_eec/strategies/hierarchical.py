"""The cloud tier of end-edge-cloud FL: nests one Flower strategy per edge (HierFAVG when FedAvg).

HierFAVG: Liu et al., "Client-Edge-Cloud Hierarchical Federated Learning", ICC 2020,
https://arxiv.org/abs/1905.06641
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import DEBUG, INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flower_eec import noise, progress
from flower_eec.grid.discovery import place_devices
from flower_eec.grid.edge import EdgeGrid
from flower_eec.grid.metered import message_bytes
from flower_eec.protocol.knobs import refuse_clashes
from flower_eec.protocol.replies import common_metrics, metric_problem, train_reply_problem
from flower_eec.strategies.aggregation import (
    count,
    match_dtypes,
    mean_records,
    scalars,
    weighted_average,
    weighted_metrics,
)
from flower_eec.topology import RoundTopology, Topology

__all__ = [
    "CLOUD_DIRECT",
    "EdgeEvaluateFn",
    "EvaluateFn",
    "Hierarchical",
    "RoundReport",
    "mean_metrics",
    "mean_records",
    "scalars",
]

CLOUD_DIRECT = -1  # the group of devices attached to the cloud while their edge is offline

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]
EdgeEvaluateFn = Callable[[int, int, ArrayRecord], MetricRecord | None]


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
    stale: dict[int, tuple[int, int]] = field(default_factory=dict)  # device: (used, expected)
    restored: dict[int, tuple[int, int]] = field(default_factory=dict)  # device: (held, used)
    skipped_steps: int = 0  # server training steps the guard skipped (``learning.sgd``)

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


def group_name(group: int) -> str:
    """How logs name a group of devices: ``edge 2``, or the devices attached to the cloud."""
    return "cloud-attached devices" if group == CLOUD_DIRECT else f"edge {group}"


class Hierarchical(Strategy):
    """Cloud-tier strategy over edge-tier strategies (any ``flwr.serverapp.strategy.Strategy``).

    Each cloud round runs ``edge_rounds`` edge rounds. In an edge round every edge's strategy
    configures messages for its online devices (through an ``EdgeGrid`` view), all messages go
    out in one ``send_and_receive``, and each edge's strategy aggregates its own devices'
    replies. Then the cloud averages the edge models, weighted by the examples beneath them,
    and every edge starts the next round from the cloud model. Metrics of several edges are
    merged the same way: each edge's weighs by the examples beneath it.

    Rounds. Devices see the *edge round* as ``server-round``, numbered on across cloud rounds:
    cloud round r runs edge rounds (r-1)*edge_rounds+1 ... r*edge_rounds, and the evaluate
    messages after cloud round r carry r*edge_rounds (the edge round they follow). Topology
    (mobility, outages), ``evaluate_fn``, ``on_round`` and the ``Result`` count cloud rounds.
    With ``edge_rounds=1`` (the default) the two numbers are the same.

    Your own loop. ``configure_train`` + ``aggregate_train`` keep Flower's contract: called by
    a loop of your own (or by ``Strategy.start``), one such round is one edge round in which
    every edge starts from the given arrays, followed by the cloud step; the returned arrays
    are the new cloud model and ``server_round`` reaches the devices as is.
    ``configure_evaluate`` + ``aggregate_evaluate`` likewise. Devices are placed on first use.

    Parameters
    ----------
    edge : Strategy | Callable[[int], Strategy]
        The edge tier. A strategy instance is deep-copied per edge (stateful strategies such
        as FedAdam keep state per edge); a callable is asked once per edge index (and once
        with ``CLOUD_DIRECT`` = -1 for devices attached to the cloud while their edge is down).
    topology : Topology
        Cloud -> edges -> devices, with mobility and connectivity per round.
    edge_rounds : int (default: 1)
        Edge aggregations per cloud aggregation (kappa2 in HierFAVG).
    weighted_by_key : str (default: "num-examples")
        The metric that weights averages, as in Flower's strategies.
    evaluate_edges : bool (default: False)
        Also evaluate every edge model that trained, server-side, on each evaluated round:
        with ``evaluate_edge_fn`` when given, else with ``start``'s ``evaluate_fn`` (which then
        sees edge models too). Results go to ``RoundReport.edges``.
    evaluate_every : int (default: 1)
        Evaluate every N cloud rounds (and always after the last).
    on_round : Callable[[RoundReport], None], optional
        Called after every cloud round (1 .. num_rounds) with its report. Without it, the
        round's counts and cloud metrics are logged (with it, at DEBUG: the hook reports it).
    node_wait : float (default: 60.0)
        Seconds to wait at start for all ``topology.num_devices`` nodes to register (a
        different number of nodes is then a ``ConfigError``), and then for them to answer
        ``query.describe`` (independent of ``start``'s round ``timeout``; a device that never
        answers is a ``ProtocolError``).
    evaluate_edge_fn : Callable[[int, int, ArrayRecord], MetricRecord | None], optional
        Server-side evaluation of an edge model: ``(cloud round, edge, arrays)``. Giving it
        turns ``evaluate_edges`` on; ``evaluate_fn`` then sees only the cloud model, as in
        Flower (round 0: the initial arrays, then after every evaluated round).
    discover : bool (default: True)
        Ask the devices who they are (``query.describe``) at start. A ClientApp without that
        handler is detected on the first node asked, and devices are placed by sorted node
        id; ``False`` places them so without asking.
    """

    def __init__(self, edge: Strategy | Callable[[int], Strategy], topology: Topology,
                 edge_rounds: int = 1, weighted_by_key: str = "num-examples",
                 evaluate_edges: bool = False, evaluate_every: int = 1,
                 on_round: Callable[[RoundReport], None] | None = None,
                 node_wait: float = 60.0, evaluate_edge_fn: EdgeEvaluateFn | None = None,
                 discover: bool = True) -> None:
        if edge_rounds < 1:
            raise ValueError(f"edge_rounds must be >= 1, got {edge_rounds}")
        self.topology = topology
        self.edge_rounds = edge_rounds
        self.weighted_by_key = weighted_by_key
        self.evaluate_edge_fn = evaluate_edge_fn
        self.evaluate_edges = evaluate_edges or evaluate_edge_fn is not None
        self.evaluate_every = evaluate_every
        self.on_round = on_round
        self.node_wait = node_wait
        self.discover = discover
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
        self.cloud_arrays = ArrayRecord()  # the cloud model the current round started from
        self.last_checkpoint = 0  # the round of the run's last checkpoint (set by the run)
        # kind -> (server_round, node -> group) of the last configure_train/configure_evaluate
        self.sent: dict[str, tuple[int, dict[int, int]]] = {}
        self._sat_out: set[tuple[int, int]] = set()  # (cloud round, group) already logged

    def summary(self) -> None:
        """Log the tiers: the shape of the tree and each edge's strategy."""
        log(INFO, "\t├──> Hierarchical: %d edges, %d devices, %d edge rounds per cloud round",
            self.topology.num_edges, self.topology.num_devices, self.edge_rounds)
        groups = list(range(self.topology.num_edges))
        if self.topology.orphans == "cloud":
            groups.append(CLOUD_DIRECT)
        for i, group in enumerate(groups):
            branch = "└" if i == len(groups) - 1 else "├"
            log(INFO, "\t%s──> %s: %s", branch, group_name(group),
                type(self.edges[group]).__name__)

    # --- placing devices ------------------------------------------------------------------

    def place(self, grid: Grid) -> None:
        """Match Flower nodes to the topology's devices (``node_of``, ``device_of``); waits up
        to ``node_wait`` for them to register, and again for them to describe themselves."""
        self.described = {}
        self.node_of, self.device_of = place_devices(
            grid, self.topology.num_devices, self.node_wait, answers=self.described,
            describe=self.discover)

    def sit_out(self, cloud_round: int, group: int, reason: str, level: int = INFO) -> None:
        """Log, once per group and cloud round, why a group takes no part in it."""
        if (cloud_round, group) in self._sat_out:
            return
        self._sat_out.add((cloud_round, group))
        log(level, "%s sits out round %d: %s", group_name(group).capitalize(), cloud_round,
            reason)

    # --- one edge round -------------------------------------------------------------------

    def groups(self, view: RoundTopology) -> dict[int, list[int]]:
        """Online devices of each group (edge, or ``CLOUD_DIRECT``) that has some this round."""
        groups = {e: view.devices_of(e) for e in range(self.topology.num_edges)}
        groups[CLOUD_DIRECT] = view.cloud_direct()
        for edge in range(self.topology.num_edges):
            if not view.edge_online[edge]:
                where = ("train under the cloud" if view.orphans == "cloud"
                         else "sit it out too")
                self.sit_out(view.round, edge, f"the edge is offline (its devices {where})")
            elif not groups[edge]:
                self.sit_out(view.round, edge, "none of its devices is online")
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
                self.sit_out(view.round, group, f"{len(devices)} online devices, fewer than its "
                             f"strategy's minimum for {kind} ({needed})")
                continue
            edge_grid = EdgeGrid(grid, [self.node_of[d] for d in devices])
            configure = getattr(strategy, f"configure_{kind}")
            try:
                with noise.strategy_chatter_hidden():
                    edge_messages = list(configure(server_round, arrays_of(group),
                                                   ConfigRecord(dict(config)), edge_grid))
            except Exception as exc:  # noqa: BLE001 - one edge's failure must not end the run
                self.sit_out(view.round, group, f"its strategy could not configure the {kind} "
                             f"round ({exc})", WARNING)
                continue
            if kind == "train" and not edge_messages:
                self.sit_out(view.round, group, "its strategy configured no train messages")
            for message in edge_messages:
                group_of[message.metadata.dst_node_id] = group
                messages.append(message)
        return messages, group_of

    def split_replies(self, replies: Iterable[Message], group_of: dict[int, int],
                      report: RoundReport, check: Callable[[Message, int], str | None]
                      ) -> dict[int, list[Message]]:
        """Usable replies by group; the others (and missing ones) fail their device."""
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
        """Count and log one device's failure this round."""
        device = self.device_of.get(node, node)
        report.failures += 1
        report.failure_reasons[device] = reason
        log(WARNING, "Device %s failed this round: %s", device, reason)

    def reply_weight(self, reply: Message) -> float:
        """The ``weighted_by_key`` of a checked reply."""
        return scalars(next(iter(reply.content.metric_records.values())))[self.weighted_by_key]

    def aggregate_edges(self, server_round: int, by_group: dict[int, list[Message]],
                        examples: dict[int, float]) -> list[MetricRecord]:
        """Each group's strategy aggregates its devices' checked replies into its edge model.

        Adds each group's examples to ``examples``; returns the groups' metrics, each holding
        ``weighted_by_key`` = the examples beneath it (``merge_edge_metrics`` weighs by it).
        """
        metrics = []
        for group, replies in progress.track(by_group.items(), len(by_group),
                                             "edges aggregate their devices' replies"):
            try:
                with noise.strategy_chatter_hidden():
                    arrays, edge_metrics = self.edges[group].aggregate_train(
                        server_round, common_metrics(replies))
            except Exception as exc:  # noqa: BLE001 - one edge's failure must not end the run
                log(WARNING, "%s could not aggregate its devices' replies (%s); its model "
                    "is left as that failure found it", group_name(group).capitalize(), exc)
                continue
            if arrays is None:
                continue
            self.edge_arrays[group] = match_dtypes(arrays, self.reference)
            beneath = sum(self.reply_weight(r) for r in replies)
            examples[group] = examples.get(group, 0.0) + beneath
            if edge_metrics is not None:
                record = MetricRecord(dict(edge_metrics))
                record[self.weighted_by_key] = count(beneath)
                metrics.append(record)
        return metrics

    def merge_edge_metrics(self, metrics: list[MetricRecord]) -> MetricRecord | None:
        """Metrics of several edges as one: each edge weighted by its ``weighted_by_key``."""
        return weighted_metrics(metrics, self.weighted_by_key)

    def edge_step(self, server_round: int, view: RoundTopology, replies: list[Message],
                  group_of: dict[int, int], report: RoundReport,
                  examples: dict[int, float]) -> list[MetricRecord]:
        """Check the replies of one edge round and aggregate them per edge."""
        by_group = self.split_replies(replies, group_of, report, self.reply_problem)
        for group in sorted(set(group_of.values()) - set(by_group)):
            self.sit_out(view.round, group, "none of its devices sent a usable reply")
        return self.aggregate_edges(server_round, by_group, examples)

    def cloud_step(self, server_round: int, cloud: ArrayRecord, examples: dict[int, float],
                   report: RoundReport) -> ArrayRecord | None:
        """The new cloud model from the groups that trained, or None when none did."""
        contributing = {g: n for g, n in examples.items() if n > 0}
        if not contributing:
            return None
        return self.aggregate_cloud(server_round, cloud, contributing, report)

    # --- Flower's Strategy contract -------------------------------------------------------

    def _ensure_placed(self, grid: Grid, arrays: ArrayRecord) -> None:
        if not self.node_of:
            self.place(grid)
        if not len(self.reference):
            self.reference = arrays

    def sent_groups(self, kind: str, server_round: int, view: RoundTopology) -> dict[int, int]:
        """Node -> group of the messages of ``kind`` configured for ``server_round``; for a
        round this strategy did not configure, the topology's groups of that round."""
        recorded = self.sent.get(kind)
        if recorded is not None and recorded[0] == server_round:
            return recorded[1]
        return {self.node_of[d]: group for group, devices in self.groups(view).items()
                for d in devices if d in self.node_of}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Every edge's train messages for one edge round, every edge starting from ``arrays``."""
        self._ensure_placed(grid, arrays)
        self.cloud_arrays = arrays
        self.edge_arrays = {g: arrays for g in self.edges}
        view = self.topology.at_round(server_round)
        messages, group_of = self.configure_groups("train", server_round, view,
                                                   lambda g: arrays, config, grid)
        self.sent["train"] = (server_round, group_of)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the devices' train replies of any edges: per edge with its strategy, then
        the cloud step. Returns the new cloud model (None when no edge trained) and the edges'
        metrics merged by examples."""
        replies = list(replies)
        view = self.topology.at_round(server_round)
        report = RoundReport(round=server_round)
        examples: dict[int, float] = {}
        metrics = self.edge_step(server_round, view, replies,
                                 self.sent_groups("train", server_round, view), report, examples)
        base = self.cloud_arrays if len(self.cloud_arrays) else self.reference
        cloud = self.cloud_step(server_round, base, examples, report)
        return cloud, self.merge_edge_metrics(metrics) if cloud is not None else None

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Every edge's evaluate messages, all on ``arrays`` (the cloud model)."""
        self._ensure_placed(grid, arrays)
        view = self.topology.at_round(server_round)
        messages, group_of = self.configure_groups("evaluate", server_round, view,
                                                   lambda g: arrays, config, grid)
        self.sent["evaluate"] = (server_round, group_of)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Each edge's strategy aggregates its devices' evaluation; the edges' results are
        merged weighted by the examples each evaluated on."""
        view = self.topology.at_round(server_round)
        return self.merge_evaluate(server_round, list(replies),
                                   self.sent_groups("evaluate", server_round, view))

    def merge_evaluate(self, server_round: int, replies: list[Message],
                       group_of: dict[int, int]) -> MetricRecord | None:
        """``aggregate_evaluate`` with the groups given."""
        by_group: dict[int, list[Message]] = {}
        for reply in replies:
            group = group_of.get(reply.metadata.src_node_id)
            if group is None or reply.has_error():
                continue
            if metric_problem(reply.content, self.weighted_by_key) is None:
                by_group.setdefault(group, []).append(reply)
        metrics = []
        for group, group_replies in by_group.items():
            try:
                with noise.strategy_chatter_hidden():
                    edge_metrics = self.edges[group].aggregate_evaluate(
                        server_round, common_metrics(group_replies))
            except Exception as exc:  # noqa: BLE001 - one edge's failure must not end the run
                log(WARNING, "%s could not aggregate its devices' evaluation (%s)",
                    group_name(group).capitalize(), exc)
                continue
            if edge_metrics is not None:
                record = MetricRecord(dict(edge_metrics))
                record[self.weighted_by_key] = count(sum(self.reply_weight(r)
                                                         for r in group_replies))
                metrics.append(record)
        return self.merge_edge_metrics(metrics)

    # --- the loop -------------------------------------------------------------------------

    def device_knobs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The knobs this strategy's constructor sets for its devices' train and evaluate
        messages; ``start`` refuses configs that set them otherwise. None here: the edge
        strategies' devices take ``train_config`` as Flower's strategies pass it."""
        return {}, {}

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: EvaluateFn | None = None, *, first_round: int = 1,
              state: dict[str, Any] | None = None) -> Result:
        """Run ``num_rounds`` cloud rounds; returns Flower's ``Result`` (cloud arrays, metrics).

        As in Flower, ``evaluate_fn`` is called with round 0 and the initial arrays before
        round 1 (its result is ``Result.evaluate_metrics_serverapp[0]``; ``on_round`` is not
        called for it), then after every evaluated cloud round. ``train_config`` and
        ``evaluate_config`` entries travel to the devices.

        To resume a run after its round ``k``: ``initial_arrays`` the cloud arrays after round
        ``k`` (``cloud_arrays`` then), ``state`` what ``state()`` returned then, and
        ``first_round=k + 1``; rounds ``k + 1 .. num_rounds`` then run as they would have.

        Raises:
            ValueError: ``train_config``/``evaluate_config`` set one of ``device_knobs()`` to
                another value.
        """
        train_knobs, evaluate_knobs = self.device_knobs()
        refuse_clashes(train_config, train_knobs, "train_config", type(self).__name__)
        refuse_clashes(evaluate_config, evaluate_knobs, "evaluate_config", type(self).__name__)
        log(INFO, "Starting %s strategy:", type(self).__name__)
        log(INFO, "\t├── Number of rounds: %d", num_rounds)
        log(INFO, "\t├── ConfigRecord (train): %s", dict(train_config or {}))
        log(INFO, "\t├── ConfigRecord (evaluate): %s", dict(evaluate_config or {}))
        self.summary()
        train_config = train_config or ConfigRecord()
        evaluate_config = evaluate_config or ConfigRecord()
        self.sent, self._sat_out = {}, set()
        self.place(grid)
        self.reference = initial_arrays
        self.setup(grid, timeout)
        if state is not None:
            self.load_state(state)
        result = Result(arrays=initial_arrays)
        self.cloud_arrays = initial_arrays
        if evaluate_fn is not None and first_round == 1:
            initial = evaluate_fn(0, initial_arrays)
            log(INFO, "Initial global evaluation results: %s", initial)
            if initial is not None:
                result.evaluate_metrics_serverapp[0] = initial
        cloud = initial_arrays
        for server_round in progress.rounds(first_round, num_rounds):
            report = RoundReport(round=server_round)
            cloud, train_metrics = self.cloud_round(grid, server_round, cloud, train_config,
                                                    timeout, report)
            result.arrays = self.cloud_arrays = cloud
            if train_metrics is not None:
                result.train_metrics_clientapp[server_round] = train_metrics
            if server_round % self.evaluate_every == 0 or server_round == num_rounds:
                self.evaluate_round(grid, server_round, cloud, evaluate_config, timeout,
                                    evaluate_fn, report, result)
            self.end_round(report)
            # an on_round hook reports the round (our runs' recorder logs a line of its own)
            log(DEBUG if self.on_round else INFO, "[ROUND %d/%d] %d devices, %d failed, "
                "cloud %s", server_round, num_rounds, report.participants, report.failures,
                report.cloud_metrics)
            if self.on_round:
                self.on_round(report)
        return result

    def state(self) -> dict[str, Any]:
        """What a resumed run needs of this strategy besides the cloud arrays (see ``start``):
        nothing here, as every edge round starts from the cloud model and the topology is a
        function of the round. Strategies that keep more across rounds (models, stores) return
        it; stateful edge strategies (e.g. FedAdam's moments) start afresh on resume."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take back what ``state()`` returned (``start`` calls it after ``setup``)."""

    def end_round(self, report: RoundReport) -> None:
        """Complete the round's report before it is logged and handed to ``on_round``."""

    def models(self) -> dict[str, dict[str, torch.Tensor]]:
        """The models a run ends with, by name, as state dicts: the cloud's here."""
        return {"cloud": self.cloud_arrays.to_torch_state_dict()}

    def setup(self, grid: Grid, timeout: float) -> None:
        """Called once after the devices are discovered, before round 1 (nothing to do here).

        Methods that need something from every device before training override it.
        """

    def cloud_round(self, grid: Grid, server_round: int, cloud: ArrayRecord,
                    config: ConfigRecord, timeout: float, report: RoundReport
                    ) -> tuple[ArrayRecord, MetricRecord | None]:
        """``edge_rounds`` edge rounds from ``cloud``, then the cloud step; returns the new
        cloud model and the last edge round's metrics merged across edges."""
        view = self.topology.at_round(server_round)
        report.participants = len(view.participants())
        self.cloud_arrays = cloud
        self.edge_arrays = {g: cloud for g in self.edges}
        examples: dict[int, float] = {}
        metrics: list[MetricRecord] = []
        steps: Iterable[int] = range(self.edge_rounds)
        if self.edge_rounds > 1:  # (one edge round is the cloud round itself)
            steps = progress.track(steps, self.edge_rounds, "edge rounds")
        for step in steps:
            edge_round = (server_round - 1) * self.edge_rounds + step + 1
            metrics = self.edge_round(grid, edge_round, view, config, timeout, report,
                                      examples)
        started = time.perf_counter()
        report.edges = [{"edge": g, "examples": examples.get(g, 0.0)}
                        for g in range(self.topology.num_edges)]
        stepped = self.cloud_step(server_round, cloud, examples, report)
        if stepped is not None:
            cloud = stepped
        report.server_s += time.perf_counter() - started
        return cloud, self.merge_edge_metrics(metrics)

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
        metrics = self.edge_step(edge_round, view, replies, group_of, report, examples)
        report.server_s += time.perf_counter() - started
        return metrics

    def reply_problem(self, reply: Message, group: int) -> str | None:
        """Why a device's train reply cannot be aggregated by its edge, or None when it can.

        Override for methods whose replies carry something other than the model's arrays.
        """
        reference = self.reference if len(self.reference) else None
        return train_reply_problem(reply, reference, self.weighted_by_key)

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

    def edge_evaluator(self, evaluate_fn: EvaluateFn | None) -> EdgeEvaluateFn | None:
        """``evaluate_edge_fn``, else ``evaluate_fn`` applied to edge models, else None."""
        if self.evaluate_edge_fn is not None:
            return self.evaluate_edge_fn
        if evaluate_fn is None:
            return None
        evaluate = evaluate_fn
        return lambda server_round, edge, arrays: evaluate(server_round, arrays)

    def evaluate_round(self, grid: Grid, server_round: int, cloud: ArrayRecord,
                       config: ConfigRecord, timeout: float, evaluate_fn: EvaluateFn | None,
                       report: RoundReport, result: Result) -> None:
        """Server-side evaluation of the edges and the cloud, then the devices' evaluation of
        the cloud model (their ``server-round``: the last edge round of ``server_round``)."""
        started = time.perf_counter()
        evaluate_edge = self.edge_evaluator(evaluate_fn)
        if self.evaluate_edges and evaluate_edge is not None:
            for entry in progress.track(report.edges, len(report.edges),
                                        "evaluating the edge models"):
                if entry["examples"] > 0:
                    edge_metrics = evaluate_edge(server_round, entry["edge"],
                                                 self.edge_arrays[entry["edge"]])
                    entry.update(scalars(edge_metrics or MetricRecord()))
        if evaluate_fn is not None:
            cloud_metrics = evaluate_fn(server_round, cloud)
            if cloud_metrics is not None:
                report.cloud_metrics = scalars(cloud_metrics)
                result.evaluate_metrics_serverapp[server_round] = cloud_metrics
        report.server_s += time.perf_counter() - started
        view = self.topology.at_round(server_round)
        edge_round = server_round * self.edge_rounds
        messages, group_of = self.configure_groups("evaluate", edge_round, view,
                                                   lambda g: cloud, config, grid)
        if messages:
            replies = list(grid.send_and_receive(messages, timeout=timeout))
            report.count(messages, replies, group_of)
            device_metrics = self.merge_evaluate(edge_round, replies, group_of)
            if device_metrics is not None:
                report.device_metrics = scalars(device_metrics)
                result.evaluate_metrics_clientapp[server_round] = device_metrics


def mean_metrics(replies: list[Message], weighted_by_key: str = "num-examples"
                 ) -> MetricRecord | None:
    """Example-weighted mean of the reply metrics, with the total of ``weighted_by_key``."""
    return weighted_metrics([next(iter(r.content.metric_records.values())) for r in replies],
                            weighted_by_key)

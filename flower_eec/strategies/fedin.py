"""FedIN and HeteroAvg (Chan et al., arXiv 2304.00759; our reconstruction, ALGORITHMS.md sec. 4).

``FedIN`` is one tier: flat over all devices (Flower's ``Strategy.start``) or an edge of
``HierFedIN``. It sends every device its slice of the global (deepest) model, aggregates layer-wise
and, for FedIN, forwards to each device one feature batch of another device of the previous round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flower_eec.clients.fedin import ARRAYS, FEATURES, FeatureSpec
from flower_eec.errors import PayloadError
from flower_eec.protocol.replies import metric_problem
from flower_eec.strategies.hierarchical import CLOUD_DIRECT, Hierarchical, RoundReport, mean_metrics
from flower_eec.strategies.layerwise import key_weights, layerwise_average
from flower_eec.topology import Topology

TensorSpec = Mapping[str, tuple[tuple[int, ...], str]]
QP_COUNTS = ("qp_steps", "qp_loc_binds", "qp_in_binds")
COUNTERS = (*QP_COUNTS, "feature_bytes_down", "feature_bytes_up")


def tensor_spec(arrays: ArrayRecord) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of every tensor of a model's arrays."""
    return {key: (tuple(array.shape), array.dtype) for key, array in arrays.items()}


def sub_record(arrays: ArrayRecord, keys: Iterable[str]) -> ArrayRecord:
    """The tensors of ``arrays`` named in ``keys`` (a device's slice of the global model)."""
    return ArrayRecord({key: arrays[key] for key in keys})


def pick_sources(devices: list[int], holders: list[int], seed: int, server_round: int
                 ) -> dict[int, int]:
    """For each device, another device whose feature batch it receives (seeded per round).

    Devices with no other holder receive nothing.
    """
    chosen = {}
    for device in devices:
        others = sorted(h for h in holders if h != device)
        if others:
            rng = np.random.default_rng([seed, server_round, device, 13])
            chosen[device] = others[int(rng.integers(len(others)))]
    return chosen


class FedIN(Strategy):
    """FedIN's server tier (HeteroAvg when ``features`` is None).

    Parameters
    ----------
    model_of : Mapping[int, TensorSpec]
        Device index -> name, shape and dtype of every tensor of its model (a subset of the global
        model's).
    features : FeatureSpec | None
        FedIN's feature batch spec; ``None`` for HeteroAvg (no feature exchange, no IN training).
    seed : int (default: 0)
        Seed of the choice of whose features a device receives.
    evaluate_devices : bool (default: True)
        Ask every device to evaluate its slice of the global model on its local test split.
    weighted_by_key : str (default: "num-examples")
        The metric that weights the averages.

    ``device_of`` (node id -> device index) must be set before the first round (``HierFedIN`` and
    the flat runner set it after discovery).
    """

    def __init__(self, model_of: Mapping[int, TensorSpec], features: FeatureSpec | None = None,
                 seed: int = 0, evaluate_devices: bool = True,
                 weighted_by_key: str = "num-examples") -> None:
        self.model_of = model_of
        self.features = features
        self.seed = seed
        self.evaluate_devices = evaluate_devices
        self.weighted_by_key = weighted_by_key
        self.device_of: dict[int, int] = {}
        self.store: dict[int, ArrayRecord] = {}  # device -> its last feature batch
        self.key_examples: dict[str, float] = {}
        self.failures: dict[int, str] = {}
        # Totals since the caller last reset them (a runner reads them once per round).
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.last_evaluate: MetricRecord | None = None
        # Flat, this tier also names devices that never replied; under Hierarchical the cloud does.
        self.count_missing = True
        self._base = ArrayRecord()
        self._sent: set[int] = set()

    def summary(self) -> None:
        """Log what this tier does."""
        what = "FedIN (layer-wise averaging + IN training)" if self.features else (
            "HeteroAvg (layer-wise averaging)")
        log(INFO, "\t├──> %s over %d device models", what, len(self.model_of))
        if self.features:
            log(INFO, "\t└──> feature batch: %d samples, %d bytes (%s)", self.features.batch,
                self.features.batch_bytes, "fp16" if self.features.fp16 else "fp32")

    def _device(self, node: int) -> int:
        return self.device_of[node]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Per device: its slice of ``arrays``, the config and (FedIN) another device's features."""
        self._base = arrays
        self.failures = {}
        nodes = sorted(grid.get_node_ids())
        self._sent = set(nodes)
        devices = [self._device(n) for n in nodes]
        sources = pick_sources(devices, list(self.store), self.seed, server_round)
        messages = []
        for node, device in zip(nodes, devices, strict=True):
            content = RecordDict({
                ARRAYS: sub_record(arrays, self.model_of[device]),
                "config": ConfigRecord({**config, "server-round": server_round})})
            if device in sources:
                content[FEATURES] = self.store[sources[device]]
                self.counters["feature_bytes_down"] += content[FEATURES].count_bytes()
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        return messages

    def reply_problem(self, reply: Message) -> str | None:
        """Why a train reply cannot be aggregated (None when it can)."""
        if reply.has_error():
            return f"error reply: {reply.error.reason}"
        device = self.device_of.get(reply.metadata.src_node_id)
        if device is None:
            return "reply from a node that is not a known device"
        records = reply.content.array_records
        expected = {ARRAYS, FEATURES} if self.features else {ARRAYS}
        if set(records) != expected:
            return f"expected ArrayRecords {sorted(expected)}, got {sorted(records)}"
        arrays, spec = records[ARRAYS], self.model_of[device]
        if set(arrays) != set(spec):
            missing = sorted(set(spec) - set(arrays))[:3]
            extra = sorted(set(arrays) - set(spec))[:3]
            return f"array keys differ from its model's (missing {missing}, extra {extra})"
        for key, array in arrays.items():
            shape, dtype = spec[key]
            if tuple(array.shape) != shape or array.dtype != dtype:
                return (f"array '{key}' is {array.dtype}{list(array.shape)}, "
                        f"expected {dtype}{list(shape)}")
            values = array.numpy()
            if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
                return f"array '{key}' holds NaN or infinite values"
        if self.features:
            try:
                self.features.read(records[FEATURES])
            except PayloadError as exc:
                return f"bad feature batch: {exc}"
        return metric_problem(reply.content, self.weighted_by_key)

    def _fail(self, node: int, reason: str) -> None:
        device = self.device_of.get(node, node)
        self.failures[device] = reason
        log(WARNING, "Device %s failed this round: %s", device, reason)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Layer-wise average of the valid replies; keep their feature batches for next round."""
        valid: list[Message] = []
        answered = set()
        for reply in replies:
            answered.add(reply.metadata.src_node_id)
            problem = self.reply_problem(reply)
            if problem:
                self._fail(reply.metadata.src_node_id, problem)
            else:
                valid.append(reply)
        for node in sorted(self._sent - answered) if self.count_missing else ():
            self._fail(node, "no reply before the time-out")
        if not valid:
            return None, None
        states = [{k: a.numpy() for k, a in r.content.array_records[ARRAYS].items()}
                  for r in valid]
        weights = [float(r.content.metric_records["metrics"][self.weighted_by_key])  # type: ignore[arg-type]
                   for r in valid]
        base = {k: a.numpy() for k, a in self._base.items()}
        averaged = layerwise_average(states, weights, base)
        self.key_examples = key_weights(states, weights)
        if self.features:
            self.store = {self._device(r.metadata.src_node_id): r.content.array_records[FEATURES]
                          for r in valid}
            self.counters["feature_bytes_up"] += sum(r.count_bytes() for r in self.store.values())
        metrics = _train_metrics(valid, self.weighted_by_key)
        for key in QP_COUNTS:
            self.counters[key] += int(metrics[key])  # type: ignore[arg-type]
        return ArrayRecord({k: Array(v) for k, v in averaged.items()}), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Per device, its slice of the global model (nothing when device evaluation is off)."""
        if not self.evaluate_devices:
            return []
        return [Message(RecordDict({ARRAYS: sub_record(arrays, self.model_of[self._device(n)]),
                                    "config": ConfigRecord({**config,
                                                            "server-round": server_round})}),
                        dst_node_id=n, message_type=MessageType.EVALUATE)
                for n in sorted(grid.get_node_ids())]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Example-weighted mean of the devices' local accuracy and loss."""
        valid = [r for r in replies if not r.has_error()
                 and metric_problem(r.content, self.weighted_by_key) is None]
        self.last_evaluate = mean_metrics(valid, self.weighted_by_key)
        return self.last_evaluate

    def drain(self) -> dict[str, int]:
        """The counters since the last drain (QP steps and bindings, feature bytes); reset them."""
        drained, self.counters = self.counters, dict.fromkeys(COUNTERS, 0)
        return drained


def _train_metrics(replies: list[Message], weighted_by_key: str) -> MetricRecord:
    """Weighted mean of loss/accuracy (and alignment loss where reported), sums of QP counts."""
    records = [r.content.metric_records["metrics"] for r in replies]
    weights = [float(m[weighted_by_key]) for m in records]  # type: ignore[arg-type]
    merged: dict[str, Any] = {weighted_by_key: int(sum(weights))}
    for key in ("train_loss", "train_accuracy", "in_loss"):
        pairs = [(w, float(m[key])) for w, m in zip(weights, records, strict=True)  # type: ignore[arg-type]
                 if key in m]
        if pairs:
            merged[key] = sum(w * v for w, v in pairs) / sum(w for w, _ in pairs)
    for key in QP_COUNTS:
        merged[key] = sum(_count(m, key) for m in records)
    return MetricRecord(merged)


def _count(metrics: MetricRecord, key: str) -> int:
    value = metrics.get(key, 0)
    return int(value) if isinstance(value, (int, float)) else 0


class HierFedIN(Hierarchical):
    """``Hierarchical`` with a ``FedIN`` tier at every edge and layer-wise averaging at the cloud.

    Feature batches travel within an edge (an edge forwards its own devices' batches). Each edge
    reports, per tensor, the examples of its devices that trained it; the cloud weights each edge's
    tensor by that number, so one edge round per cloud round equals flat layer-wise averaging.

    Parameters
    ----------
    model_of, features, seed, evaluate_devices
        As in ``FedIN`` (shared by every edge).
    topology : Topology
        Cloud -> edges -> devices.
    **kwargs
        Passed to ``Hierarchical`` (``edge_rounds``, ``evaluate_edges``, ``on_round``, ...).
    """

    def __init__(self, model_of: Mapping[int, TensorSpec], topology: Topology,
                 features: FeatureSpec | None = None, seed: int = 0,
                 evaluate_devices: bool = True, **kwargs: Any) -> None:
        super().__init__(edge=lambda group: FedIN(model_of, features, seed, evaluate_devices),
                         topology=topology, **kwargs)
        self.edges: dict[int, FedIN]  # type: ignore[assignment]

    def setup(self, grid: Grid, timeout: float) -> None:
        """Tell every edge which node is which device (known after discovery)."""
        for edge in self.edges.values():
            edge.device_of = self.device_of
            edge.count_missing = False

    def reply_problem(self, reply: Message, group: int) -> str | None:
        """The edge's own check: keys of the device's depth, valid features, metrics."""
        return self.edges[group].reply_problem(reply)

    def aggregate_cloud(self, server_round: int, cloud: ArrayRecord,
                        examples: dict[int, float], report: RoundReport) -> ArrayRecord:
        """Layer-wise average of the edge models, each tensor weighted by its edge's examples."""
        held = [sub_record(self.edge_arrays[g], self.edges[g].key_examples) for g in examples]
        report.add("edge_to_cloud", sum(r.count_bytes() for g, r in zip(examples, held,
                                                                        strict=True)
                                        if g != CLOUD_DIRECT))
        averaged = layerwise_average(
            [{k: a.numpy() for k, a in r.items()} for r in held],
            [self.edges[g].key_examples for g in examples],
            {k: a.numpy() for k, a in cloud.items()})
        result = ArrayRecord({k: Array(v) for k, v in averaged.items()})
        online_edges = int(self.topology.at_round(server_round).edge_online.sum())
        report.add("cloud_to_edge", result.count_bytes() * online_edges)
        return result

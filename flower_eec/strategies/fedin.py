"""FedIN and HeteroAvg (Chan et al., arXiv 2304.00759; our reconstruction, docs/methods.md,
section FedIN and HeteroAvg).

``FedIN`` is one tier: flat over all devices (Flower's ``Strategy.start``) or an edge of
``HierFedIN``. It sends every device its slice of the global (deepest) model, aggregates layer-wise
and, for FedIN, forwards to each device one feature batch of another device of the previous round.
Devices answer with ``flower_eec.clients.fedin.FedINDevice``; every knob they use is set here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flower_eec.errors import PayloadError
from flower_eec.grid.discovery import place_devices
from flower_eec.protocol import names
from flower_eec.protocol.knobs import TrainSettings, refuse_clashes
from flower_eec.protocol.names import ARRAYS, FEATURES
from flower_eec.protocol.payloads import FeatureSpec
from flower_eec.protocol.replies import metric_problem, require_handler
from flower_eec.strategies.hierarchical import CLOUD_DIRECT, Hierarchical, RoundReport, mean_metrics
from flower_eec.strategies.layerwise import key_weights, layerwise_average
from flower_eec.topology import Topology

TensorSpec = Mapping[str, tuple[tuple[int, ...], str]]
QP_COUNTS = ("qp_steps", "qp_loc_binds", "qp_in_binds")
COUNTERS = (*QP_COUNTS, "feature_bytes_down", "feature_bytes_up")
REGISTER = "FedINDevice(model_fn, train_data_fn, test_data_fn).register(app)"


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


def check_answered(answered: set[str], replies: list[Message]) -> None:
    """Fail fast on the first replies of each message type (``answered`` holds the types seen).

    Raises:
        ProtocolError: Every reply says its ClientApp has no handler for the message type.
    """
    if replies and replies[0].metadata.message_type not in answered:
        require_handler(replies, REGISTER)
        answered.add(replies[0].metadata.message_type)


class FedIN(Strategy):
    """FedIN's server tier (HeteroAvg when ``features`` is None).

    Devices answer ``train.fedin`` and ``evaluate.fedin`` with ``FedINDevice`` registered in
    their ClientApp; each train message carries the device's slice of the global model, this
    constructor's knobs and (FedIN, from round 2) another device's feature batch.

    Parameters
    ----------
    model_of : Mapping[int, TensorSpec]
        Device index (its ``partition-id``) -> name, shape and dtype of every tensor of its model
        (a subset of the global model's), e.g. ``tensor_spec(ArrayRecord(model.state_dict()))``.
    features : FeatureSpec | None
        FedIN's feature batch (per-sample shapes at the E/IN split, samples, fp16, byte limit);
        ``None`` for HeteroAvg (no feature exchange, no IN training).
    train : Settings
        The devices' local training, e.g. ``TrainSettings(lr=0.01, epochs=1, batch_size=32)``.
    mu : float (default: 1.0)
        Weight of the IN-alignment gradient in the conflict QP's target (FedIN only).
    seed : int (default: 0)
        Seed of the choice of whose features a device receives.
    evaluate_devices : bool (default: True)
        Ask every device to evaluate its slice of the global model on its local test split.
    evaluate_batch_size : int (default: 500)
        Images per forward pass of the devices' evaluation.
    weighted_by_key : str (default: "num-examples")
        The metric that weights the averages.
    node_wait : float (default: 60.0)
        Flat ``start`` only: seconds to wait for ``len(model_of)`` nodes before discovery.

    ``device_of`` (node id -> device index) is found on first use (``query.describe``, else
    sorted node ids) unless set before (``HierFedIN`` and our runner set it after their own
    discovery).
    """

    def __init__(self, model_of: Mapping[int, TensorSpec], features: FeatureSpec | None = None,
                 *, train: TrainSettings, mu: float = 1.0, seed: int = 0,
                 evaluate_devices: bool = True, evaluate_batch_size: int = 500,
                 weighted_by_key: str = "num-examples", node_wait: float = 60.0) -> None:
        if mu < 0:
            raise ValueError(f"mu={mu}: use a weight >= 0")
        if evaluate_batch_size < 1:
            raise ValueError(f"evaluate_batch_size={evaluate_batch_size}: use at least 1")
        self.model_of = model_of
        self.features = features
        self.mu = mu
        self.seed = seed
        self.evaluate_devices = evaluate_devices
        self.weighted_by_key = weighted_by_key
        self.node_wait = node_wait
        # Every knob a device uses, from here only.
        self.train_knobs: dict[str, Any] = {**train.to_config(),
                                            names.SEND_FEATURES: features is not None}
        if features is not None:
            self.train_knobs.update({names.MU: float(mu), **features.to_config()})
        self.evaluate_knobs: dict[str, Any] = {names.EVAL_BATCH_SIZE: evaluate_batch_size}
        self.device_of: dict[int, int] = {}
        self.store: dict[int, ArrayRecord] = {}  # device -> its last feature batch
        self.key_examples: dict[str, float] = {}
        self.failures: dict[int, str] = {}
        # Totals since the caller last reset them (a runner reads them once per round).
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.last_evaluate: MetricRecord | None = None
        # Flat, this tier also names devices that never replied; under Hierarchical the cloud does.
        self.count_missing = True
        self.answered: set[str] = set()  # message types some device has answered
        self._base = ArrayRecord()
        self._sent: set[int] = set()

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None
              ) -> Result:
        """Flower's ``Strategy.start``, after finding which node is which device.

        Raises:
            ValueError: ``train_config``/``evaluate_config`` set a knob this constructor sets.
            ProtocolError: No device answers FedIN's messages (see ``FedINDevice``).
        """
        refuse_clashes(train_config, self.train_knobs, "train_config", type(self).__name__)
        refuse_clashes(evaluate_config, self.evaluate_knobs, "evaluate_config",
                       type(self).__name__)
        if not self.device_of:
            self.place(grid)
        return super().start(grid, initial_arrays, num_rounds, timeout, train_config,
                             evaluate_config, evaluate_fn)

    def state(self) -> dict[str, Any]:
        """What the next round needs: the feature batches kept from this round's replies."""
        return {"store": dict(self.store)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take back ``state()``'s."""
        self.store = dict(state["store"])

    def place(self, grid: Grid) -> None:
        """Match Flower nodes to the devices of ``model_of`` (sets ``device_of``)."""
        _, self.device_of = place_devices(grid, len(self.model_of), self.node_wait)

    def summary(self) -> None:
        """Log what this tier does."""
        what = "FedIN (layer-wise averaging + IN training)" if self.features else (
            "HeteroAvg (layer-wise averaging)")
        log(INFO, "\t├──> %s over %d device models", what, len(self.model_of))
        if self.features:
            log(INFO, "\t└──> mu %g, feature batch: %d samples, %d bytes (%s)", self.mu,
                self.features.batch, self.features.batch_bytes,
                "fp16" if self.features.fp16 else "fp32")

    def _device(self, node: int) -> int:
        return self.device_of[node]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Per device: its slice of ``arrays``, the config and (FedIN) another device's features."""
        if not self.device_of:
            self.place(grid)
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
                names.CONFIG: ConfigRecord({**config, **self.train_knobs,
                                            names.SERVER_ROUND: server_round})})
            if device in sources:
                content[FEATURES] = self.store[sources[device]]
                self.counters["feature_bytes_down"] += content[FEATURES].count_bytes()
            messages.append(Message(content, dst_node_id=node, message_type=names.FEDIN_TRAIN))
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
        """Layer-wise average of the valid replies; keep their feature batches for next round.

        Raises:
            ProtocolError: In the first round with replies, every device lacks the handler.
        """
        replies = list(replies)
        check_answered(self.answered, replies)
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
        weights = [float(r.content.metric_records[names.METRICS][self.weighted_by_key])  # type: ignore[arg-type]
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
        if not self.device_of:
            self.place(grid)
        knobs = {**config, **self.evaluate_knobs, names.SERVER_ROUND: server_round}
        return [Message(RecordDict({ARRAYS: sub_record(arrays, self.model_of[self._device(n)]),
                                    names.CONFIG: ConfigRecord(dict(knobs))}),
                        dst_node_id=n, message_type=names.FEDIN_EVALUATE)
                for n in sorted(grid.get_node_ids())]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Example-weighted mean of the devices' local accuracy and loss."""
        replies = list(replies)
        check_answered(self.answered, replies)
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
    records = [r.content.metric_records[names.METRICS] for r in replies]
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
    model_of, features, train, mu, seed, evaluate_devices, evaluate_batch_size
        As in ``FedIN`` (shared by every edge): the single source of the devices' knobs.
    topology : Topology
        Cloud -> edges -> devices.
    **kwargs
        Passed to ``Hierarchical`` (``edge_rounds``, ``evaluate_edges``, ``on_round``, ...).
    """

    def __init__(self, model_of: Mapping[int, TensorSpec], topology: Topology,
                 features: FeatureSpec | None = None, *, train: TrainSettings, mu: float = 1.0,
                 seed: int = 0, evaluate_devices: bool = True, evaluate_batch_size: int = 500,
                 **kwargs: Any) -> None:
        def edge(group: int) -> FedIN:
            return FedIN(model_of, features, train=train, mu=mu, seed=seed,
                         evaluate_devices=evaluate_devices,
                         evaluate_batch_size=evaluate_batch_size)

        super().__init__(edge=edge, topology=topology, **kwargs)
        self.edges: dict[int, FedIN]  # type: ignore[assignment]
        self.answered: set[str] = set()

    def state(self) -> dict[str, Any]:
        """Every edge's ``FedIN.state()``."""
        return {"edges": {group: tier.state() for group, tier in self.edges.items()}}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take back ``state()``'s."""
        for group, saved in state["edges"].items():
            self.edges[group].load_state(saved)

    def device_knobs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """FedIN's knobs, as every edge's ``FedIN`` sends them."""
        tier = self.edges[CLOUD_DIRECT]
        return dict(tier.train_knobs), dict(tier.evaluate_knobs)

    def split_replies(self, replies: Iterable[Message], group_of: dict[int, int],
                      report: RoundReport, check: Callable[[Message, int], str | None]
                      ) -> dict[int, list[Message]]:
        """``Hierarchical``'s, failing fast when no device answers the first train messages."""
        replies = list(replies)
        check_answered(self.answered, replies)
        return super().split_replies(replies, group_of, report, check)

    def merge_evaluate(self, server_round: int, replies: list[Message],
                       group_of: dict[int, int]) -> MetricRecord | None:
        """``Hierarchical``'s, failing fast when no device answers the first evaluate messages."""
        check_answered(self.answered, replies)
        return super().merge_evaluate(server_round, replies, group_of)

    def place(self, grid: Grid) -> None:
        """``Hierarchical.place``, then tell every edge which node is which device."""
        super().place(grid)
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

"""ECLM's online stage: per-device sub-models of a modular cloud model, merged back module-wise.

ECLM (Zhuang et al., "ECLM: Efficient Edge-Cloud Collaborative Learning with Continuous
Environment Adaptation", arXiv 2311.11083; docs/methods.md, section ECLM). Two tiers (devices and
cloud). How budgets buy modules and how merges are weighted is our reconstruction.

ECLM is a ``Hierarchical`` whose only group is the cloud's own devices: its round adds one step
before ``Hierarchical``'s (every device reports its module use and budget, the cloud derives the
sub-models), its device tier sends each device its sub-model and merges the replies module-wise.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from flower_eec.core.eclm_math import (
    SHARED,
    Block,
    derive_submodel,
    module_wise_average,
    submodel_params,
)
from flower_eec.models.modular import SELECTOR_PREFIX, ModularNet, block_of, module_sizes
from flower_eec.protocol import names
from flower_eec.protocol.knobs import TrainSettings
from flower_eec.protocol.replies import metric_problem, require_handler, train_reply_problem
from flower_eec.strategies.aggregation import scalars, weighted_metrics
from flower_eec.strategies.hierarchical import CLOUD_DIRECT, Hierarchical, RoundReport
from flower_eec.topology import RoundTopology, Topology


@dataclass(frozen=True)
class DeviceReport:
    """What a device said in ``query.route``: module use, examples, budget, data checksum."""

    usage: np.ndarray
    num_examples: int
    budget: int
    data_version: int


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
    usage_name = names.USAGE
    if list(records) != [usage_name] or list(records[usage_name]) != [usage_name]:
        return f"expected an ArrayRecord '{usage_name}' holding '{usage_name}', got {list(records)}"
    usage = records[usage_name][usage_name].numpy()
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
    budget, version = metrics.get(names.BUDGET), metrics.get(names.DATA_VERSION)
    if not isinstance(budget, int) or budget <= 0:
        return f"{names.BUDGET} is {budget!r}, expected a positive integer"
    if not isinstance(version, int) or version < 0:
        return f"{names.DATA_VERSION} is {version!r}, expected an integer >= 0"
    return None


def usage_problem(reply: Message, layers: int, modules: int) -> str | None:
    """Why a train reply's routing mass (``usage``, a flat list of L*M) is unusable, or None."""
    metrics = next(iter(reply.content.metric_records.values()))
    usage = metrics.get(names.USAGE)
    if not isinstance(usage, list) or len(usage) != layers * modules:
        return f"metric '{names.USAGE}' must list {layers * modules} routing masses"
    if not all(math.isfinite(u) and u >= 0 for u in usage):
        return f"metric '{names.USAGE}' holds NaN, infinite or negative values"
    return None


class ECLM(Hierarchical):
    """ECLM's cloud: derive a sub-model per device, send it, merge the adapted modules back.

    Each round: every online device gets the stem and selector (``query.route``) and answers
    with its module-use histogram on its current data, its data size, its budget and a checksum
    of its data; the cloud re-derives a device's sub-model when its budget or its data changed
    (``derive_submodel``); every device adapts its sub-model (``train.adapt``) and returns its
    stem, modules and head with the routing mass of each module; the cloud merges them
    (``module_wise_average``), weighting module ``i`` of device ``k`` by mass x examples and
    shared tensors by examples. Devices evaluate inside ``train.adapt``: no evaluate messages.

    Every knob a device uses travels in the messages' ``config`` record, from this constructor:
    the model's shape, ``eval_batch_size`` and ``train``. Devices answer with ``ECLMDevice``.
    The initial arrays given to ``start`` are the cloud's modular model (``cloud_model()``,
    e.g. after ``core.eclm_training.offline_stage``). ``train_config`` entries given to ``start``
    are added to every ``train.adapt`` message; one that sets a knob of this constructor
    otherwise is refused (``ValueError``).

    Parameters
    ----------
    topology : Topology
        Which devices are online each round (ECLM ignores the edges).
    num_classes : int
        Outputs of the modular model's head.
    train : TrainSettings
        How devices adapt their sub-model (``flower_eec.clients.TrainSettings``).
    in_channels : int (default: 3)
        Channels of the images.
    layers, modules, top_k, channels, selector_norm : (default: 3, 4, 1, 16, True)
        The modular model (``flower_eec.models.modular.ModularNet``).
    eval_batch_size : int (default: 500)
        Images per forward pass when devices route and evaluate.
    cloud_weight : float (default: 0.2)
        Weight of the cloud's own copy of each block that devices returned, in [0, 1).
    evaluate_every : int (default: 1)
        Evaluate the cloud model every N rounds (and after the last).
    on_round : Callable[[EclmRoundReport], None], optional
        Called after every round with its report.
    node_wait : float (default: 60.0)
        Seconds to wait for ``topology.num_devices`` nodes at start.
    """

    def __init__(self, topology: Topology, *, num_classes: int, train: TrainSettings,
                 in_channels: int = 3, layers: int = 3, modules: int = 4, top_k: int = 1,
                 channels: int = 16, selector_norm: bool = True, eval_batch_size: int = 500,
                 cloud_weight: float = 0.2, evaluate_every: int = 1,
                 on_round: Callable[[EclmRoundReport], None] | None = None,
                 node_wait: float = 60.0) -> None:
        if not 0 <= cloud_weight < 1:
            raise ValueError(f"cloud_weight must be in [0, 1), got {cloud_weight}")
        if eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {eval_batch_size}")
        tier = _AdaptTier(self)
        super().__init__(lambda group: tier, topology, evaluate_edges=False,
                         evaluate_every=evaluate_every,
                         on_round=self._relay if on_round else None, node_wait=node_wait)
        self.tier = tier
        self.report_to = on_round
        self.model_knobs: dict[str, Any] = {
            names.NUM_CLASSES: num_classes, names.IN_CHANNELS: in_channels,
            names.LAYERS: layers, names.MODULES: modules, names.TOP_K: top_k,
            names.CHANNELS: channels, names.SELECTOR_NORM: selector_norm,
            names.EVAL_BATCH_SIZE: eval_batch_size}
        self.train_knobs: dict[str, Any] = dict(train.to_config())
        self.cloud_weight = cloud_weight
        sizes, shared = module_sizes(self.cloud_model())  # also checks the shape
        self.module_params = np.asarray(sizes, dtype=np.int64)
        self.shared_params = shared
        self.submodels: dict[int, tuple[tuple[int, ...], ...]] = {}
        self.derived_for: dict[int, tuple[int, int]] = {}
        self.routed: list[int] = []
        self.rederived = 0
        self.sizes: dict[int, int] = {}

    def state(self) -> dict[str, Any]:
        """Each device's sub-model and the budget and data it was derived for (a device gets a
        new one only when they change)."""
        return {"submodels": dict(self.submodels), "derived_for": dict(self.derived_for)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take back ``state()``'s."""
        self.submodels = dict(state["submodels"])
        self.derived_for = dict(state["derived_for"])

    def device_knobs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The knobs of ``query.route`` and ``train.adapt``, from this constructor (ECLM's
        devices evaluate inside ``train.adapt``)."""
        return {**self.model_knobs, **self.train_knobs}, {}

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, modules) of the full model."""
        layers, modules = self.module_params.shape
        return int(layers), int(modules)

    def cloud_model(self) -> ModularNet:
        """A fresh full modular model of this strategy's shape (the cloud's, all modules)."""
        c = self.model_knobs
        return ModularNet(c[names.NUM_CLASSES], c[names.IN_CHANNELS], layers=c[names.LAYERS],
                          modules=c[names.MODULES], top_k=c[names.TOP_K],
                          channels=c[names.CHANNELS], selector_norm=c[names.SELECTOR_NORM])

    def summary(self) -> None:
        """Log the setting."""
        layers, modules = self.shape
        log(INFO, "\t├──> ECLM: %d devices, %d layers x %d modules, cloud weight %.2f",
            self.topology.num_devices, layers, modules, self.cloud_weight)

    def setup(self, grid: Grid, timeout: float) -> None:
        """Check the initial arrays against the model's shape; forget earlier sub-models."""
        expected = {k: tuple(v.shape) for k, v in self.cloud_model().state_dict().items()}
        given = {k: tuple(a.shape) for k, a in self.reference.items()}
        if given != expected:
            raise ValueError("the initial arrays are not a modular model of ECLM's shape "
                             f"({self.model_knobs}); start from ECLM.cloud_model()")
        self.submodels, self.derived_for = {}, {}

    # --- one round: route and derive, then Hierarchical's round with the adapt tier ---------

    def cloud_round(self, grid: Grid, server_round: int, cloud: ArrayRecord,
                    config: ConfigRecord, timeout: float, report: RoundReport
                    ) -> tuple[ArrayRecord, MetricRecord | None]:
        """One online round: route and derive, then adapt and merge (``Hierarchical``'s round
        with the adapt tier as the only group). Returns the new cloud model and the devices'
        metrics (their local accuracy before and after adapting)."""
        online = self.prepare(grid, server_round, cloud, timeout, report)
        cloud, metrics = super().cloud_round(grid, server_round, cloud, config, timeout, report)
        report.participants = len(online)
        report.edges = []  # ECLM's devices talk to the cloud
        if metrics is not None:
            report.device_metrics = scalars(metrics)
        log(INFO, "ECLM round %d: %d sub-models re-derived", server_round, self.rederived)
        return cloud, metrics

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Flower's contract: the ``query.route`` exchange and the derivation first (inside this
        call), then a ``train.adapt`` message per device whose report was accepted."""
        if not self.node_of:
            self.place(grid)
        self.prepare(grid, server_round, arrays, 3600.0, RoundReport(round=server_round))
        return super().configure_train(server_round, arrays, config, grid)

    def prepare(self, grid: Grid, server_round: int, cloud: ArrayRecord, timeout: float,
                report: RoundReport) -> list[int]:
        """Route the online devices and derive their sub-models; returns the online devices."""
        online = np.flatnonzero(self.topology.at_round(server_round).device_online).tolist()
        reports = self.route(grid, server_round, cloud, online, timeout, report)
        started = time.perf_counter()
        self.derive(reports)
        self.routed = sorted(reports)
        report.server_s += time.perf_counter() - started
        return online

    def route(self, grid: Grid, server_round: int, cloud: ArrayRecord, devices: list[int],
              timeout: float, report: RoundReport) -> dict[int, DeviceReport]:
        """``query.route`` to ``devices``: their module use, examples, budget and data checksum.

        Raises:
            ProtocolError: Every reply says the ClientApp has no ``query.route`` handler.
        """
        routing = ArrayRecord({k: a for k, a in cloud.items()
                               if block_of(k) is None and not k.startswith("head.")})
        config = ConfigRecord({**self.model_knobs, names.SERVER_ROUND: server_round})
        messages = [Message(RecordDict({names.ARRAYS: routing, names.CONFIG: config}),
                            dst_node_id=self.node_of[d], message_type=names.ROUTE,
                            group_id=str(server_round)) for d in devices]
        if not messages:
            return {}
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        require_handler(replies, "ECLMDevice(...).register(app)")
        group_of = {m.metadata.dst_node_id: CLOUD_DIRECT for m in messages}
        report.count(messages, replies, group_of)
        layers, modules = self.shape

        def check(reply: Message, group: int) -> str | None:
            problem = route_problem(reply, layers, modules)
            return f"module-use report rejected: {problem}" if problem else None

        reports = {}
        for reply in self.split_replies(replies, group_of, report, check).get(CLOUD_DIRECT, []):
            metrics = next(iter(reply.content.metric_records.values()))
            usage = reply.content.array_records[names.USAGE][names.USAGE].numpy()
            reports[self.device_of[reply.metadata.src_node_id]] = DeviceReport(
                usage=usage.astype(np.float64),
                num_examples=int(metrics[names.NUM_EXAMPLES]),  # type: ignore[arg-type]
                budget=int(metrics[names.BUDGET]),  # type: ignore[arg-type]
                data_version=int(metrics[names.DATA_VERSION]))  # type: ignore[arg-type]
        return reports

    def derive(self, reports: dict[int, DeviceReport]) -> None:
        """Re-derive the sub-model of each device whose budget or data changed."""
        self.rederived, self.sizes = 0, {}
        for device, said in reports.items():
            if self.derived_for.get(device) != (said.budget, said.data_version):
                self.submodels[device] = derive_submodel(said.usage, said.budget,
                                                         self.module_params, self.shared_params)
                self.derived_for[device] = (said.budget, said.data_version)
                self.rederived += 1
            self.sizes[device] = submodel_params(self.submodels[device], self.module_params,
                                                 self.shared_params)

    def groups(self, view: RoundTopology) -> dict[int, list[int]]:
        """One group, the cloud's: the devices whose module-use report was accepted."""
        return {CLOUD_DIRECT: self.routed} if self.routed else {}

    def reply_problem(self, reply: Message, group: int) -> str | None:
        """Why a ``train.adapt`` reply cannot be merged, or None when it can."""
        device = self.device_of[reply.metadata.src_node_id]
        layers, modules = self.shape
        problem = (train_reply_problem(reply, self.tier.expected[device])
                   or usage_problem(reply, layers, modules))
        return f"sub-model rejected: {problem}" if problem else None

    def aggregate_cloud(self, server_round: int, cloud: ArrayRecord,
                        examples: dict[int, float], report: RoundReport) -> ArrayRecord:
        """The adapt tier merged the sub-models into the cloud model already."""
        return self.edge_arrays[CLOUD_DIRECT]

    def submodel_keys(self, cloud: ArrayRecord, kept: tuple[tuple[int, ...], ...]) -> list[str]:
        """Names of the cloud tensors a sub-model holding ``kept`` carries."""
        return [k for k in cloud if (block := block_of(k)) is None or block[1] in kept[block[0]]]

    def _relay(self, report: RoundReport) -> None:
        assert self.report_to is not None
        values = {f.name: getattr(report, f.name) for f in fields(report)}
        self.report_to(EclmRoundReport(**values, rederived=self.rederived,
                                       submodel_params=dict(self.sizes)))


class _AdaptTier(Strategy):
    """ECLM's device tier: a ``train.adapt`` message per routed device with its sub-model, and
    the replies merged module-wise into the cloud model."""

    def __init__(self, owner: ECLM) -> None:
        self.owner = owner
        self.cloud: ArrayRecord = ArrayRecord()
        self.expected: dict[int, ArrayRecord] = {}

    def summary(self) -> None:
        """Nothing of its own: ``ECLM.summary`` describes the setting."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One ``train.adapt`` message per node of ``grid``, holding that device's sub-model."""
        owner = self.owner
        self.cloud, self.expected = arrays, {}
        messages = []
        for node in grid.get_node_ids():
            device = owner.device_of[node]
            kept = owner.submodels[device]
            keys = owner.submodel_keys(arrays, kept)
            knobs = ConfigRecord({**dict(config), **owner.model_knobs, **owner.train_knobs,
                                  **{names.layer_key(layer): list(held)
                                     for layer, held in enumerate(kept)},
                                  names.SERVER_ROUND: server_round})
            messages.append(Message(RecordDict({
                names.ARRAYS: ArrayRecord({k: arrays[k] for k in keys}), names.CONFIG: knobs}),
                dst_node_id=node, message_type=names.ADAPT, group_id=str(server_round)))
            self.expected[device] = ArrayRecord({k: arrays[k] for k in keys
                                                 if not k.startswith(SELECTOR_PREFIX)})
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Module-wise average of the sub-models into the cloud model; example-weighted metrics."""
        owner = self.owner
        layers, modules = owner.shape
        updates, importance, metrics = [], [], []
        for reply in replies:
            device = owner.device_of[reply.metadata.src_node_id]
            record = next(iter(reply.content.metric_records.values()))
            examples = float(record[names.NUM_EXAMPLES])  # type: ignore[arg-type]
            mass = np.asarray(record[names.USAGE], dtype=np.float64).reshape(layers, modules)
            weights: dict[Block, float] = {SHARED: examples}
            for layer, held in enumerate(owner.submodels[device]):
                for i in held:
                    weights[(layer, i)] = float(mass[layer, i]) * examples
            updates.append({k: a.numpy() for k, a in
                            next(iter(reply.content.array_records.values())).items()})
            importance.append(weights)
            metrics.append(MetricRecord(dict(scalars(record))))  # without the usage list
        if not updates:
            return None, None
        cloud = {k: a.numpy() for k, a in self.cloud.items()}
        merged = module_wise_average(cloud, updates, importance, block_of, owner.cloud_weight)
        return (ArrayRecord({k: Array(v) for k, v in merged.items()}),
                weighted_metrics(metrics, names.NUM_EXAMPLES))

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Devices evaluate inside ``train.adapt``: no evaluate messages."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Nothing to aggregate (see ``configure_evaluate``)."""
        return None

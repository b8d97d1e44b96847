"""FedAgg: agglomerative end-edge-cloud FL, models growing from device to edge to cloud (BSBODP).

Wu et al., "Agglomerative Federated Learning: Empowering Larger Model Training via End-Edge-Cloud
Collaboration", IEEE INFOCOM 2024, https://arxiv.org/abs/2312.11489

No weights travel: every node keeps its own model, and each parent-child pair distils both ways
on the bridge samples of the child's sub-tree (the child's devices' decoded codes).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from torch import nn

from flower_eec import progress
from flower_eec.core.bsbodp import Distillation, distil_pass, logits_on
from flower_eec.core.learning import SKIPPED_STEPS
from flower_eec.core.losses import SKR
from flower_eec.errors import PayloadError
from flower_eec.grid.edge import EdgeGrid
from flower_eec.models.bridge import EMBEDDING_SHAPE, BridgeAutoencoder, bridge_digest
from flower_eec.protocol import names
from flower_eec.protocol.knobs import TrainSettings
from flower_eec.protocol.payloads import (
    LogitsPayload,
    embeddings_from_record,
    embeddings_limit,
    logits_from_record,
    logits_limit,
    payload_bytes,
    to_record,
)
from flower_eec.protocol.replies import metric_problem, require_handler
from flower_eec.strategies.bridge_store import BridgeStore
from flower_eec.strategies.hierarchical import (
    CLOUD_DIRECT,
    Hierarchical,
    RoundReport,
    mean_metrics,
    mean_records,
)
from flower_eec.topology import RoundTopology, Topology

SCHEDULES = ("parallel", "sequential")
SKR_MODES = ("off", "upward", "both")
EDGE_CLOUD = ("simultaneous", "echo")
DEVICE_HINT = "FedAggDevice(model_fn, train_data_fn, test_data_fn).register(app)"


def state_record(model: nn.Module) -> ArrayRecord:
    """A model's weights and buffers as an ArrayRecord (copied to the CPU)."""
    return ArrayRecord(model.state_dict())


def wire(logits: torch.Tensor, fp16: bool) -> tuple[torch.Tensor, int]:
    """Logits as the receiver gets them (float16-rounded when ``fp16``) and their bytes."""
    record = to_record(LogitsPayload(logits.numpy()), fp16=fp16)
    received = logits.half().float() if fp16 else logits
    return received, payload_bytes(record)


@dataclass
class KeptModels:
    """What FedAgg's server knows of the models its devices keep between rounds.

    ``expected[d]``: the round whose model device ``d`` must start from (its last accepted
    ``train.distil``; 0: none yet). Every message says so (``kept-round``), and every reply says
    which round's model the device really used; a mismatch (e.g. a late reply of a timed-out
    round wrote an older state back, and the device had no checkpoint of the expected round) is
    logged with the rounds concerned and noted in ``mismatches`` for the round's report. A
    device whose state was of another round but that restored the expected one from its
    checkpoint folder is noted in ``restored``.
    """

    expected: dict[int, int] = field(default_factory=dict)
    keep_from: int = 0  # devices may drop their kept models of earlier rounds
    mismatches: dict[int, tuple[int, int]] = field(default_factory=dict)
    restored: dict[int, tuple[int, int]] = field(default_factory=dict)  # (state, used)

    def knobs(self, device: int) -> dict[str, int]:
        """The ``config`` entries of a message to ``device``."""
        return {names.KEPT_ROUND: self.expected.get(device, 0), names.KEEP_FROM: self.keep_from}

    def check(self, device: int, reply: Message, trained_round: int | None = None) -> None:
        """Compare what ``reply`` says the device used with what it should have; after an
        accepted train reply (``trained_round``), the device keeps that round's model."""
        record = reply.content.config_records.get(names.KEPT)
        used = record.get(names.KEPT_ROUND) if record is not None else None
        held = record.get(names.STATE_ROUND) if record is not None else None
        expected = self.expected.get(device, 0)
        if isinstance(held, int) and held != expected and used == expected:
            self.restored[device] = (held, expected)
            log(INFO, "Device %d held its model of round %d, not of round %d: it restored the "
                "expected one from its checkpoint folder", device, held, expected)
        if isinstance(used, int) and used != expected:
            self.mismatches[device] = (used, expected)
            log(WARNING, "Device %d used its model of round %d, not of round %d as expected%s",
                device, used, expected,
                f": its training of rounds {used + 1}-{expected} is lost" if used < expected
                else "")
        if trained_round is not None:
            self.expected[device] = trained_round


class BridgeEdge(Strategy):
    """A parent of devices in FedAgg: an edge (or the cloud, for devices attached to it directly).

    It keeps its own model. ``configure_train`` computes its logits once, without autograd, on
    the bridge samples of the devices it is given and sends each device its rows (a
    ``train.distil`` message); ``aggregate_train`` distils from each device's returned logits,
    one pass per device in device order. ``configure_evaluate`` asks each device to evaluate
    the model it keeps (``evaluate.kept``). It never sends weights.

    Parameters
    ----------
    model : nn.Module
        This parent's model, on the server's torch device.
    store : BridgeStore
        Everyone's bridge samples (shared with the cloud; the edge uses its devices' part).
    settings : Distillation
        The non-leaf loss settings (T, beta) and the optimiser of each pass.
    device_of : dict[int, int]
        Node id -> device index, shared with ``FedAgg`` (filled after discovery).
    num_classes : int
        Logits per bridge sample.
    fp16 : bool (default: False)
        Send logits as float16.
    fidelity : bool (default: False)
        The official demo's BatchNorm in training mode for logits, and unshuffled passes.
    logits_batch : int (default: 500)
        Batch size of the no-grad logits pass (``settings.batch_size`` under ``fidelity``).
    seed : int (default: 0)
        Seeds the order of each pass.
    name : str (default: "edge")
        What logs call this parent.
    distil_config : Mapping, optional
        The devices' knobs, sent in every ``train.distil`` message's ``config`` record (over the
        entries of the ``config`` it is given).
    evaluate_config : Mapping, optional
        The knobs of every ``evaluate.kept`` message.
    evaluate_devices : bool (default: True)
        Ask the devices to evaluate their kept models; False: ``configure_evaluate`` sends none.
    """

    def __init__(self, model: nn.Module, store: BridgeStore, settings: Distillation,
                 device_of: dict[int, int], num_classes: int, fp16: bool = False,
                 fidelity: bool = False, logits_batch: int = 500, seed: int = 0,
                 name: str = "edge", distil_config: Mapping[str, Any] | None = None,
                 evaluate_config: Mapping[str, Any] | None = None,
                 evaluate_devices: bool = True, kept: KeptModels | None = None) -> None:
        self.model = model
        self.kept = kept or KeptModels()
        self.name = name
        self.num_classes = num_classes
        self.store = store
        self.settings = settings
        self.device_of = device_of
        self.fp16 = fp16
        self.fidelity = fidelity
        self.logits_batch = settings.batch_size if fidelity else logits_batch
        self.seed = seed
        self.distil_config = dict(distil_config or {})
        self.evaluate_config = dict(evaluate_config or {})
        self.evaluate_devices = evaluate_devices
        self.members: set[int] = set()  # devices whose bridge samples this edge holds
        self.skipped_steps = 0  # steps of this parent's passes that the guard skipped

    def summary(self) -> None:
        """Log the model."""
        log(INFO, "\t└──> BridgeEdge %s: %s", self.name, type(self.model).__name__)

    def logits(self, devices: Sequence[int]) -> torch.Tensor:
        """This parent's logits on the bridge samples of ``devices`` (concatenated, on the CPU).

        Under ``fidelity`` each device's samples form their own batches. For a pass over one
        device's samples (a parent learning from a device) the student's unshuffled batches are
        the same, so BatchNorm's batch statistics match the demo's; over several devices (an
        edge and the cloud) a student's batch can straddle two devices and they differ.
        """
        if self.fidelity:
            return torch.cat([logits_on(self.model, self.store.samples([d])[0],
                                        self.logits_batch, bn_train=True) for d in devices])
        samples, _ = self.store.samples(devices)
        return logits_on(self.model, samples, self.logits_batch)

    def learn(self, devices: Sequence[int], teacher: torch.Tensor, key: int,
              settings: Distillation | None = None) -> dict[str, float]:
        """One distillation pass on the bridge samples of ``devices`` from ``teacher`` logits
        (with ``settings``, default: this parent's, those of learning from its children)."""
        samples, labels = self.store.samples(devices)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + key)
        result = distil_pass(self.model, samples, labels, teacher, settings or self.settings,
                             shuffle=not self.fidelity, generator=generator)
        self.skipped_steps += int(result.pop(SKIPPED_STEPS))
        return result

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One message per device with a bridge store entry: this parent's logits on its samples."""
        targets = [(node, self.device_of[node]) for node in grid.get_node_ids()
                   if self.device_of.get(node) in self.store]
        if not targets:
            return []
        teacher = self.logits([device for _, device in targets])
        messages, start = [], 0
        for node, device in targets:
            rows = self.store.num_samples(device)
            payload = LogitsPayload(teacher[start:start + rows].numpy())
            start += rows
            content = RecordDict({
                names.TEACHER: to_record(payload, fp16=self.fp16),
                names.CONFIG: ConfigRecord({**config, **self.distil_config,
                                            **self.kept.knobs(device),
                                            names.SERVER_ROUND: server_round}),
            })
            messages.append(Message(content, dst_node_id=node, message_type=names.DISTIL))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Distil from each device's logits (checked by ``FedAgg.reply_problem``) in turn.

        Returns this tier's model and, as Flower's strategies do, the devices' own metrics
        (example-weighted), with this tier's passes as ``edge_distil_loss`` and
        ``edge_bridge_accuracy`` (mean over the passes)."""
        replies = sorted(replies, key=lambda r: self.device_of[r.metadata.src_node_id])
        if not replies:
            return None, None
        passes = []
        for reply in progress.track(replies, len(replies), f"{self.name} learns from its devices"):
            device = self.device_of[reply.metadata.src_node_id]
            payload = read_logits(reply, self.store.num_samples(device), self.num_classes)
            self.kept.check(device, reply, server_round)
            teacher = torch.from_numpy(payload.logits)
            passes.append(MetricRecord(dict[str, Any](
                self.learn([device], teacher, server_round * 100_003 + device))))
        metrics = mean_metrics(replies) or MetricRecord({names.NUM_EXAMPLES: 0})
        for key, value in mean_records(passes, [1.0] * len(passes)).items():
            metrics[f"edge_{key}"] = value
        return state_record(self.model), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Ask each device to evaluate the model it keeps (no weights are sent), unless
        ``evaluate_devices`` is off."""
        if not self.evaluate_devices:
            return []
        knobs = {**config, **self.evaluate_config, names.SERVER_ROUND: server_round}
        return [Message(RecordDict({names.CONFIG: ConfigRecord(
                    {**knobs, **self.kept.knobs(self.device_of[node])})}),
                        dst_node_id=node, message_type=names.EVALUATE_KEPT)
                for node in grid.get_node_ids()]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]
                           ) -> MetricRecord | None:
        """Example-weighted mean of the devices' metrics."""
        valid = [r for r in replies if not r.has_error() and metric_problem(r.content) is None]
        for reply in valid:
            self.kept.check(self.device_of[reply.metadata.src_node_id], reply)
        return mean_metrics(valid)


def read_logits(reply: Message, num_samples: int, num_classes: int) -> LogitsPayload:
    """A device's logits from its train reply, validated (raises ``PayloadError``)."""
    record = reply.content.array_records.get(names.LOGITS)
    if record is None:
        raise PayloadError(f"the reply holds no '{names.LOGITS}' record "
                           f"(it holds {sorted(reply.content.array_records)})")
    return logits_from_record(record, num_samples=num_samples, num_classes=num_classes,
                              max_bytes=logits_limit(num_samples, num_classes))


class FedAgg(Hierarchical):
    """FedAgg's cloud tier: a ``BridgeEdge`` per edge nested in ``Hierarchical``, BSBODP everywhere.

    Each round: devices that have not yet sent their bridge codes do (``query.embed``; the edge
    keeps them and forwards them to the cloud); every device learns from its edge's logits and
    returns its own (``train.distil``, one ``send_and_receive`` for all devices); each edge
    distils from each of its devices; then each edge learns from the cloud on its store and the
    cloud from each edge. Devices evaluate the model they keep (``evaluate.kept``).

    The devices are ``flower_eec.clients.FedAggDevice``s (registered in any ``ClientApp``).
    This constructor is the single source of every knob they use: each message carries them
    in its ``config`` record. A ClientApp that answers none of these messages stops the run
    with a ``ProtocolError`` naming the missing handler.

    Parameters
    ----------
    topology : Topology
        Cloud -> edges -> devices.
    cloud_model : nn.Module
        The cloud's model (paper: ResNet-18), on the server's torch device.
    edge_model : nn.Module | Callable[[int], nn.Module]
        The edges' model (paper: ResNet-10): deep-copied per edge, or built per edge index.
    bridge : BridgeAutoencoder
        The frozen autoencoder whose decoder makes the bridge samples; the devices must hold
        the same one (checked when they send their codes).
    mean, std : Sequence[float]
        The per-channel normalisation of the devices' data: bridge samples are normalised like
        their real images. Each device reports its own with its codes; a device whose values
        differ is refused (it fails, with both values in the reason).
    T : float (default: 3.0)
        Temperature of every pass (paper: 3).
    beta : float (default: 1.0; the paper's 10.0 under ``fidelity``)
        KD weight of the non-leaf loss. 1 is ours: at 10 the cloud learned less and fell more
        often (README "Why FedAgg diverged").
    beta_leaf, gamma : float (default: 1.0, 1.0)
        The devices' leaf loss ``CE(bridge) + beta_leaf * KD + gamma * CE(real images)``
        (beta_leaf 1: the official code's devices).
    lr, momentum, weight_decay, batch_size :
        SGD of every pass, server and devices (paper: 1e-3, 0.9, 0, 8); a fresh optimiser per
        pass.
    clip : float (default: 0.0)
        Largest gradient norm of every step, server and devices; 0: unclipped (the papers).
    augment, cutout : bool, int (default: True, 0)
        The devices' augmentation of their real images (random crop and flip; cutout size).
    schedule : str (default: "parallel")
        ``parallel``: all devices at once, then all edges learn from the cloud, then the cloud
        from each edge. ``sequential``: the official demo's depth-first order, one device at a
        time (edge e: each device k learns from e, then e from k; then e <-> cloud).
    edge_cloud : str (default: "simultaneous"; "echo" under ``fidelity``)
        Which logits of an edge the cloud learns from in their exchange. ``echo`` (the paper and
        the demo): those the edge has after learning from the cloud, so the cloud is taught back
        what it just taught, plus the edge's cross-entropy push; on a small store this loop
        inflates both models' logits round after round until the steps explode (README:
        "Why FedAgg diverged at its defaults"). ``simultaneous`` (ours): those the edge had
        before the exchange, so each side learns from the other's state at the start of it.
    fidelity : bool (default: False)
        The demo's BatchNorm in training mode for logits and testing, unshuffled passes,
        [0, 1] bridge samples, augmentation drawn once (devices too), ``edge_cloud="echo"``
        and ``beta=10`` unless given.
    fp16 : bool (default: False)
        Codes and logits travel as float16 (half the bytes).
    skr : str (default: "off")
        FedEEC's self-knowledge rectification: ``upward`` (edges learning from devices, the
        cloud from edges), ``both`` (also edges from the cloud and devices from their parent)
        or ``off``.
    rectification : SKR, optional
        The parts of SKR that apply where it does (default: both).
    embedding_shape : tuple (default: (4, 8, 8))
        Shape of one code (32x32 images; ``(4, H/4, W/4)`` in general).
    num_classes : int
        Outputs of every tier's model (the devices' logits are checked against it).
    logits_batch : int (default: 500)
        Batch size of no-grad logits passes and of the devices' evaluation
        (``batch_size`` under ``fidelity``).
    evaluate_devices : bool (default: True)
        Ask the devices to evaluate their kept models after each evaluated round.
    seed : int (default: 0)
        Seeds the order of every pass and the devices' augmentation.
    max_codes, max_codes_factor : int, float (default: None, 10.0)
        The most codes the store takes from one device: ``max_codes``, or else
        ``max_codes_factor`` times the median of the devices' described training examples (of
        the codes they declare, for devices that do not describe themselves). A device over the
        cap is refused for the round with both numbers in the reason, so one that lies about
        its size, even consistently, cannot flood the stores.
    torch_device : torch.device, optional
        Where bridge samples are kept (the models' device).
    **kwargs
        Passed to ``Hierarchical`` (``evaluate_edges``, ``evaluate_every``, ``on_round``, ...).

    Entries of ``start``'s ``train_config`` and ``evaluate_config`` go to the devices too;
    one that sets a knob of this constructor otherwise is refused (``ValueError``).
    """

    def __init__(self, topology: Topology, cloud_model: nn.Module,
                 edge_model: nn.Module | Callable[[int], nn.Module], bridge: BridgeAutoencoder,
                 mean: Sequence[float], std: Sequence[float], *, num_classes: int,
                 T: float = 3.0,
                 beta: float | None = None, beta_leaf: float = 1.0, gamma: float = 1.0,
                 lr: float = 1e-3, momentum: float = 0.9, weight_decay: float = 0.0,
                 batch_size: int = 8, clip: float = 0.0, augment: bool = True, cutout: int = 0,
                 schedule: str = "parallel", edge_cloud: str | None = None,
                 fidelity: bool = False, fp16: bool = False,
                 skr: str = "off", rectification: SKR | None = None,
                 embedding_shape: tuple[int, ...] = EMBEDDING_SHAPE,
                 logits_batch: int = 500, evaluate_devices: bool = True, seed: int = 0,
                 max_codes: int | None = None, max_codes_factor: float = 10.0,
                 torch_device: torch.device | None = None, **kwargs: Any) -> None:
        if max_codes_factor <= 0 or (max_codes is not None and max_codes < 1):
            raise ValueError(f"max_codes ({max_codes}) must be >= 1 and max_codes_factor "
                             f"({max_codes_factor}) > 0")
        self.max_codes, self.max_codes_factor = max_codes, max_codes_factor
        self._codes_cap = 0
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        edge_cloud = edge_cloud or ("echo" if fidelity else "simultaneous")
        beta = beta if beta is not None else (10.0 if fidelity else 1.0)
        if edge_cloud not in EDGE_CLOUD:
            raise ValueError(f"edge_cloud must be one of {EDGE_CLOUD}, got {edge_cloud!r}")
        self.edge_cloud = edge_cloud
        if skr not in SKR_MODES:
            raise ValueError(f"skr must be one of {SKR_MODES}, got {skr!r}")
        if len(mean) != len(std):
            raise ValueError(f"mean and std differ in length ({len(mean)} and {len(std)})")
        self.schedule = schedule
        self.fp16 = fp16
        self.embedding_shape = tuple(embedding_shape)
        self.num_classes = num_classes
        self.cloud_model = cloud_model
        self.store = BridgeStore(bridge, mean, std, raw=fidelity, device=torch_device)
        # a parent learning from a child (upward), and a child from its parent (downward)
        rectification = rectification or SKR()
        self.settings = Distillation(T=T, beta=beta, lr=lr, momentum=momentum,
                                     weight_decay=weight_decay, batch_size=batch_size,
                                     clip=clip, skr=None if skr == "off" else rectification,
                                     **({"spike": 0.0} if fidelity else {}))
        self.downward = dataclasses.replace(self.settings,
                                            skr=rectification if skr == "both" else None)
        self.skr = skr
        self._device_of: dict[int, int] = {}
        # what the devices receive: every knob of theirs, from these arguments only
        batch = batch_size if fidelity else logits_batch
        training = TrainSettings(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                 batch_size=batch_size, epochs=1, augment=augment,
                                 cutout=cutout, seed=seed).to_config()
        self.embed_config: dict[str, Any] = {names.FP16: fp16,
                                             names.BRIDGE_DIGEST: bridge_digest(bridge)}
        self.distil_config: dict[str, Any] = {
            **training, names.TEMPERATURE: T, names.BETA_LEAF: beta_leaf,
            names.GAMMA: gamma, names.CLIP: clip, names.FP16: fp16, names.FIDELITY: fidelity,
            names.SKR: skr == "both", names.SKR_SELF_KNOWLEDGE: rectification.self_knowledge,
            names.SKR_SWAP: rectification.swap, names.LOGITS_BATCH: batch,
            names.NUM_CLASSES: num_classes}
        self.evaluate_config: dict[str, Any] = {names.EVAL_BATCH_SIZE: batch,
                                                names.FIDELITY: fidelity}
        self.kept = KeptModels()
        self._distil_errors: list[Message] = []  # this round's error replies to train.distil
        self._distil_replies = 0

        def tier(group: int) -> BridgeEdge:
            if group == CLOUD_DIRECT:
                model = cloud_model
            elif isinstance(edge_model, nn.Module):
                model = copy.deepcopy(edge_model)
            else:
                model = edge_model(group)
            return BridgeEdge(model, self.store, self.settings, self._device_of,
                              num_classes=num_classes, fp16=fp16,
                              fidelity=fidelity, logits_batch=logits_batch,
                              seed=seed * 1_000 + group + 1,
                              name="cloud" if group == CLOUD_DIRECT else f"edge{group}",
                              distil_config=self.distil_config,
                              evaluate_config=self.evaluate_config,
                              evaluate_devices=evaluate_devices, kept=self.kept)

        super().__init__(edge=tier, topology=topology, **kwargs)
        self.bridges = cast(dict[int, BridgeEdge], self.edges)  # the same objects, typed
        self.cloud = self.bridges[CLOUD_DIRECT]

    def device_knobs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The knobs of ``train.distil`` and ``evaluate.kept``, from this constructor."""
        return dict(self.distil_config), dict(self.evaluate_config)

    @property
    def device_of(self) -> dict[int, int]:  # type: ignore[override]
        """Node id -> device index (one dict shared with every ``BridgeEdge``)."""
        return self._device_of

    @device_of.setter
    def device_of(self, value: dict[int, int]) -> None:
        self._device_of.clear()
        self._device_of.update(value)

    def state(self) -> dict[str, Any]:
        """The bridge store (as codes), every tier's model (cloud and edges) and the devices
        it holds, and the rounds of the devices' kept models."""
        return {"store": self.store.state(),
                "tiers": {group: {"model": tier.model.state_dict(),
                                  "members": sorted(tier.members)}
                          for group, tier in self.bridges.items()},
                "kept": dict(self.kept.expected)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Take back ``state()``'s (the store's codes are decoded again)."""
        self.store.load_state(state["store"])
        for group, saved in state["tiers"].items():
            self.bridges[group].model.load_state_dict(saved["model"])
            self.bridges[group].members = set(saved["members"])
        self.kept.expected = dict(state["kept"])
        self.kept.keep_from = self.last_checkpoint

    def models(self) -> dict[str, dict[str, torch.Tensor]]:
        """The cloud's model and every edge's."""
        return {"cloud": self.cloud_model.state_dict(),
                **{f"edge-{g}": tier.model.state_dict() for g, tier in self.bridges.items()
                   if g != CLOUD_DIRECT}}

    def end_round(self, report: RoundReport) -> None:
        """The round's devices whose kept model was not of the expected round, or that had to
        restore it from their checkpoint folder, and the server steps the guard skipped."""
        report.stale, report.restored = dict(self.kept.mismatches), dict(self.kept.restored)
        report.skipped_steps += sum(tier.skipped_steps for tier in self.bridges.values())
        for tier in self.bridges.values():
            tier.skipped_steps = 0
        self.kept.mismatches.clear()
        self.kept.restored.clear()
        self.kept.keep_from = self.last_checkpoint

    def summary(self) -> None:
        """Log the tiers and the schedule."""
        super().summary()
        log(INFO, "\t└──> %s: cloud %s, edges %s, schedule %s, T=%s, beta=%s, SKR %s",
            type(self).__name__, type(self.cloud_model).__name__,
            type(self.bridges[0].model).__name__, self.schedule, self.settings.T,
            self.settings.beta, self.skr)

    # --- the stores -----------------------------------------------------------------------

    def _collect_embeddings(self, grid: Grid, server_round: int, view: RoundTopology,
                            timeout: float, report: RoundReport) -> None:
        """Ask taking-part devices without a store entry for their codes (round 1: everyone)."""
        devices = [d for d in view.participants() if d not in self.store]
        if not devices:
            return
        cloud_direct = set(view.cloud_direct())
        group_of = {self.node_of[d]: CLOUD_DIRECT if d in cloud_direct else int(view.edge_of[d])
                    for d in devices}
        knobs = {**self.embed_config, names.SERVER_ROUND: server_round}
        messages = [Message(RecordDict({names.CONFIG: ConfigRecord(knobs)}), dst_node_id=node,
                            message_type=names.EMBED)
                    for node in group_of]
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        require_handler(replies, DEVICE_HINT)
        report.count(messages, replies, group_of)
        started = time.perf_counter()
        self._codes_cap = self.codes_cap(replies)
        by_group = self.split_replies(replies, group_of, report, self._accept_embeddings)
        for group, accepted in by_group.items():
            for reply in accepted:
                device = self.device_of[reply.metadata.src_node_id]
                if group != CLOUD_DIRECT:
                    self.bridges[group].members.add(device)
                    report.add("edge_to_cloud", self.store.embedding_bytes(device))
        report.server_s += time.perf_counter() - started

    def codes_cap(self, replies: list[Message]) -> int:
        """The most codes one device may upload (see ``max_codes``)."""
        if self.max_codes is not None:
            return self.max_codes
        counts = [a.get(names.NUM_TRAIN) for a in self.described.values()]
        if not counts:  # devices that do not describe themselves: what this exchange declares
            counts = [next(iter(r.content.metric_records.values())).get(self.weighted_by_key)
                      for r in replies if not r.has_error() and r.content.metric_records]
        numbers = [float(c) for c in counts if isinstance(c, (int, float))] or [0.0]
        return max(1, math.ceil(self.max_codes_factor * statistics.median(numbers)))

    def _accept_embeddings(self, reply: Message, group: int) -> str | None:
        """Why a ``query.embed`` reply is refused, or None after putting its codes in the store."""
        if reply.has_error():
            return f"error reply: {reply.error.reason}"
        problem = metric_problem(reply.content, self.weighted_by_key)
        if problem:
            return problem
        metrics = next(iter(reply.content.metric_records.values()))
        declared = int(cast(float, metrics[self.weighted_by_key]))
        device = self.device_of[reply.metadata.src_node_id]
        answer = self.described.get(device)
        described = answer.get(names.NUM_TRAIN) if answer is not None else None
        if isinstance(described, int) and declared != described:
            return f"declares {declared} codes but described {described} training examples"
        if declared > self._codes_cap:
            return (f"declares {declared} codes, over the cap of {self._codes_cap} per device "
                    f"({self._cap_source()}): a device this large needs FedAgg(max_codes=...)")
        problem = self._normalisation_problem(reply)
        if problem:
            return problem
        record = reply.content.array_records.get(names.EMBEDDINGS)
        if record is None:
            return f"the reply holds no '{names.EMBEDDINGS}' record"
        try:
            payload = embeddings_from_record(
                record, num_classes=self.num_classes, num_samples=declared,
                embedding_shape=self.embedding_shape,
                max_bytes=embeddings_limit(declared, self.embedding_shape))
        except PayloadError as err:
            return f"bad embeddings: {err}"
        self.store.add(device, payload, payload_bytes(record))
        return None

    def _cap_source(self) -> str:
        return ("max_codes" if self.max_codes is not None else
                f"max_codes_factor={self.max_codes_factor:g} x the median device's size")

    def _normalisation_problem(self, reply: Message) -> str | None:
        """Why the device's data is normalised otherwise than the store's samples, or None."""
        sent = reply.content.config_records.get(names.CONFIG)
        mean = sent.get(names.DATA_MEAN) if sent is not None else None
        std = sent.get(names.DATA_STD) if sent is not None else None
        if not (_numbers(mean) and _numbers(std)):
            return (f"the reply's '{names.CONFIG}' record lacks the data's '{names.DATA_MEAN}' "
                    f"and '{names.DATA_STD}' (lists of numbers)")
        found = (cast(list[float], mean), cast(list[float], std))
        ours = (list(self.store.mean), list(self.store.std))
        if not (_close(found[0], ours[0]) and _close(found[1], ours[1])):
            return (f"its data has mean {found[0]} and std {found[1]}, but this FedAgg normalises "
                    f"bridge samples with mean {ours[0]} and std {ours[1]}: give FedAgg the "
                    "devices' mean and std")
        return None

    def _place_stores(self, view: RoundTopology, report: RoundReport) -> None:
        """Each online edge holds the codes of exactly the devices attached to it this round.

        A device that moved is added from the cloud's copy (cloud-to-edge bytes, no re-upload)
        and dropped by the edge it left.
        """
        for edge in range(self.topology.num_edges):
            if not view.edge_online[edge]:
                continue
            wanted = {d for d in map(int, (view.edge_of == edge).nonzero()[0]) if d in self.store}
            strategy = self.bridges[edge]
            for device in wanted - strategy.members:
                report.add("cloud_to_edge", self.store.embedding_bytes(device))
            strategy.members = wanted

    # --- the round ------------------------------------------------------------------------

    def cloud_round(self, grid: Grid, server_round: int, cloud: ArrayRecord,
                     config: ConfigRecord, timeout: float, report: RoundReport
                     ) -> tuple[ArrayRecord, MetricRecord | None]:
        view = self.topology.at_round(server_round)
        self._collect_embeddings(grid, server_round, view, timeout, report)
        self._place_stores(view, report)
        self._distil_errors, self._distil_replies = [], 0
        if self.schedule == "parallel":
            result = super().cloud_round(grid, server_round, cloud, config, timeout, report)
        else:
            result = self._sequential_round(grid, server_round, config, timeout, report, view)
        if self._distil_replies and len(self._distil_errors) == self._distil_replies:
            require_handler(self._distil_errors, DEVICE_HINT)
        return result

    def merge_evaluate(self, server_round: int, replies: list[Message],
                       group_of: dict[int, int]) -> MetricRecord | None:
        """The devices' evaluation of their kept models, merged by examples (a ClientApp that
        cannot evaluate them stops the run)."""
        require_handler(replies, DEVICE_HINT)
        return super().merge_evaluate(server_round, replies, group_of)

    def _sequential_round(self, grid: Grid, server_round: int, config: ConfigRecord,
                          timeout: float, report: RoundReport, view: RoundTopology
                          ) -> tuple[ArrayRecord, MetricRecord | None]:
        """The official demo's order: edge by edge, device by device, then edge <-> cloud."""
        report.participants = len(view.participants())
        examples: dict[int, float] = {}
        metrics: list[MetricRecord] = []
        for group, devices in self.groups(view).items():
            strategy = self.bridges[group]
            for device in devices:
                node = self.node_of[device]
                messages = list(strategy.configure_train(
                    server_round, ArrayRecord(), ConfigRecord(dict(config)),
                    EdgeGrid(grid, [node])))
                if not messages:
                    continue
                replies = list(grid.send_and_receive(messages, timeout=timeout))
                report.count(messages, replies, {node: group})
                started = time.perf_counter()
                by_group = self.split_replies(replies, {node: group}, report, self.reply_problem)
                metrics += self.aggregate_edges(server_round, by_group, examples)
                report.server_s += time.perf_counter() - started
            if group != CLOUD_DIRECT and examples.get(group):
                started = time.perf_counter()
                self._edge_cloud_exchange([group], server_round, report)
                report.server_s += time.perf_counter() - started
        report.edges = [{"edge": g, "examples": examples.get(g, 0.0)}
                        for g in range(self.topology.num_edges)]
        return state_record(self.cloud_model), self.merge_edge_metrics(metrics)

    def reply_problem(self, reply: Message, group: int) -> str | None:
        """A device's train reply must hold finite logits, one row per bridge sample it owns."""
        self._distil_replies += 1
        if reply.has_error():
            self._distil_errors.append(reply)
            return f"error reply: {reply.error.reason}"
        device = self.device_of[reply.metadata.src_node_id]
        try:
            read_logits(reply, self.store.num_samples(device), self.num_classes)
        except PayloadError as err:
            return f"bad logits: {err}"
        return metric_problem(reply.content, self.weighted_by_key)

    def aggregate_cloud(self, server_round: int, cloud: ArrayRecord,
                        examples: dict[int, float], report: RoundReport) -> ArrayRecord:
        """BSBODP between the cloud and every online edge with a store (an edge whose devices
        all sat out still distils on its store, as in the demo)."""
        view = self.topology.at_round(server_round)
        edges = [e for e in range(self.topology.num_edges)
                 if view.edge_online[e] and self.bridges[e].members]
        self._edge_cloud_exchange(edges, server_round, report)
        return state_record(self.cloud_model)

    def _edge_cloud_exchange(self, edges: list[int], server_round: int,
                             report: RoundReport) -> None:
        """Every edge of ``edges`` learns from the cloud, then the cloud from each edge: from the
        logits the edge had before this exchange (``simultaneous``) or after it learned from the
        cloud (``echo``). One edge's failure is logged and does not end the run."""
        upward = self._upward_logits(edges, report) if self.edge_cloud == "simultaneous" else {}
        for edge in progress.track(edges, len(edges), "edges learn from the cloud"):
            devices = sorted(self.bridges[edge].members)
            try:
                teacher, size = wire(self.cloud.logits(devices), self.fp16)
                report.add("cloud_to_edge", size)
                self.bridges[edge].learn(devices, teacher, server_round, self.downward)
            except Exception as exc:  # noqa: BLE001 - one edge's failure must not end the run
                log(WARNING, "Edge %s could not learn from the cloud this round (%s)", edge, exc)
        if self.edge_cloud == "echo":
            upward = self._upward_logits(edges, report)
        for edge, teacher in progress.track(upward.items(), len(upward),
                                            "the cloud learns from the edges"):
            try:
                self.cloud.learn(sorted(self.bridges[edge].members), teacher,
                                 server_round * 1_000 + edge)
            except Exception as exc:  # noqa: BLE001
                log(WARNING, "The cloud could not learn from edge %s this round (%s)", edge, exc)
        for edge in edges:
            self.edge_arrays[edge] = state_record(self.bridges[edge].model)

    def _upward_logits(self, edges: list[int], report: RoundReport) -> dict[int, torch.Tensor]:
        """Each edge's logits on its store, as the cloud receives them (an edge that fails to
        compute them is logged and left out)."""
        upward = {}
        for edge in edges:
            try:
                teacher, size = wire(
                    self.bridges[edge].logits(sorted(self.bridges[edge].members)), self.fp16)
                report.add("edge_to_cloud", size)
                upward[edge] = teacher
            except Exception as exc:  # noqa: BLE001
                log(WARNING, "Edge %s could not compute its logits for the cloud this round "
                    "(%s)", edge, exc)
        return upward


def _numbers(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _close(found: Sequence[float], expected: Sequence[float]) -> bool:
    # float32 statistics sent as float64 differ from the same constants in the 8th digit
    return len(found) == len(expected) and all(
        math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7) for a, b in zip(found, expected,
                                                                        strict=True))

"""The device side of FedAgg and FedEEC: upload bridge codes once, then learn from the parent's
logits and answer with its own (BSBODP's leaf).

FedAgg: Wu et al., INFOCOM 2024, arXiv 2312.11489; FedEEC: Wu et al., arXiv 2501.00693.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from flwr.app import ConfigRecord, Context, Message

from flower_eec.clients.device import (
    DataFn,
    Device,
    Knobs,
    ModelFn,
    TrainSettings,
    partition_id,
    reply,
    round_generator,
    state_round,
)
from flower_eec.core.bsbodp import Distillation, distil_pass, logits_on
from flower_eec.core.learning import SPIKE, Images, evaluate
from flower_eec.core.losses import SKR
from flower_eec.data.augment import augment, normalise
from flower_eec.errors import PayloadError
from flower_eec.models.bridge import BridgeAutoencoder, bridge_digest, decode, encode, load_bridge
from flower_eec.protocol import names
from flower_eec.protocol.payloads import (
    EmbeddingPayload,
    LogitsPayload,
    logits_from_record,
    logits_limit,
    to_record,
)

BridgeFn = Callable[[Context], BridgeAutoencoder]


def _cache_key(context: Context, data: Images, bridge: BridgeAutoencoder,
               fp16: bool) -> tuple[object, ...]:
    """Everything that decides a node's codes: which node, its data, the bridge, the wire."""
    return (partition_id(context), data_digest(data), bridge_digest(bridge), fp16)


def data_digest(data: Images) -> str:
    """A digest of a device's images, labels and normalisation: the key of its cached codes."""
    digest = hashlib.blake2b(digest_size=16)
    for tensor in (data.x, data.y):
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(repr((tuple(data.mean), tuple(data.std))).encode())
    return digest.hexdigest()


class FedAggDevice(Device):
    """A FedAgg/FedEEC device: its own model, its own data, the bridge's encoder and decoder.

    It answers three message types (``device.register(app)`` adds them to a ``ClientApp``):

    - ``query.embed``: the bridge codes of every training image with its label (record
      ``embeddings``), ``num-examples``, and the data's per-channel ``mean`` and ``std`` (record
      ``config``) for the server to check against its own. Knobs: ``fp16``, ``bridge-digest``
      (the server's bridge; a device with another bridge refuses).
    - ``train.distil``: the parent's logits on the device's bridge samples (record ``teacher``);
      one leaf pass ``CE(bridge) + beta_leaf * KD + gamma * CE(real images)`` on the model the
      device keeps, then the device's own logits on the same samples (record ``logits``). Knobs:
      ``T``, ``beta-leaf``, ``gamma``, ``clip``, ``fp16``, ``fidelity``, ``skr``,
      ``skr-self-knowledge``, ``skr-swap``, ``logits-batch``, ``num-classes``, the
      ``TrainSettings`` (``lr``, ``momentum``, ``weight-decay``, ``batch-size``, ``augment``,
      ``cutout``, ``seed``) and ``server-round``.
    - ``evaluate.kept``: loss and accuracy of the kept model on the local test data. Knobs:
      ``eval-batch-size``, ``fidelity``.

    Every knob comes from the message (``FedAgg``'s constructor is its source); the device's
    own parts are its model, its data and its bridge. Codes and decoded samples are computed
    once per process and node, keyed by the partition id, the data, the bridge and the knobs
    that shape them.

    Parameters
    ----------
    model_fn, train_data_fn, test_data_fn, torch_device :
        As ``Device``. Images are uint8 ``(N, C, H, W)`` that fit the bridge (the shipped one:
        3x32x32).
    bridge : BridgeAutoencoder | Callable[[Context], BridgeAutoencoder], optional
        The frozen bridge autoencoder, the same as the server's (default: the shipped CIFAR-10
        bridge, ``load_bridge()``). A function of the node's context is asked each message;
        let it return the same object each time (cache it).
    """

    handlers: ClassVar[dict[str, str]] = {names.EMBED: "embed", names.DISTIL: "distil",
                                          names.EVALUATE_KEPT: "evaluate"}

    def __init__(self, model_fn: ModelFn, train_data_fn: DataFn,
                 test_data_fn: DataFn | None = None, *,
                 bridge: BridgeAutoencoder | BridgeFn | None = None,
                 torch_device: str = "cpu") -> None:
        super().__init__(model_fn, train_data_fn, test_data_fn, torch_device=torch_device)
        self._bridge = bridge
        self._codes: dict[tuple[object, ...], torch.Tensor] = {}
        self._samples: dict[tuple[object, ...], torch.Tensor] = {}

    def bridge(self, context: Context) -> BridgeAutoencoder:
        """This node's bridge (the shipped one when the device was given none)."""
        if self._bridge is None:
            self._bridge = load_bridge()
        if isinstance(self._bridge, BridgeAutoencoder):
            return self._bridge
        return self._bridge(context)

    # --- codes and bridge samples ---------------------------------------------------------

    def codes(self, context: Context, data: Images, fp16: bool) -> torch.Tensor:
        """The codes of ``data`` as the server receives them (float16-rounded when ``fp16``)."""
        bridge = self.bridge(context)
        return self._codes_of(_cache_key(context, data, bridge, fp16), bridge, data, fp16)

    def _codes_of(self, key: tuple[object, ...], bridge: BridgeAutoencoder, data: Images,
                  fp16: bool) -> torch.Tensor:
        if key not in self._codes:
            codes = encode(bridge, data.x)
            self._codes[key] = codes.half().float() if fp16 else codes
        return self._codes[key]

    def samples(self, context: Context, data: Images, fp16: bool, raw: bool) -> torch.Tensor:
        """The bridge samples of ``data``: the rows the server's store holds for this device,
        normalised like the data (``raw``: in [0, 1], the demo's input space)."""
        bridge = self.bridge(context)
        key = _cache_key(context, data, bridge, fp16)
        if (*key, raw) not in self._samples:
            self._samples[(*key, raw)] = decode(bridge, self._codes_of(key, bridge, data, fp16),
                                                data.mean, data.std, raw=raw)
        return self._samples[(*key, raw)]

    # --- handlers -------------------------------------------------------------------------

    def embed(self, msg: Message, context: Context) -> Message:
        """``query.embed``: codes and labels of every training image, and the data's mean/std."""
        knobs = Knobs.of(msg)
        fp16 = knobs.get(names.FP16, bool)
        expected = knobs.get(names.BRIDGE_DIGEST, str)
        found = bridge_digest(self.bridge(context))
        if found != expected:
            raise PayloadError(
                f"this device's bridge (digest {found}) is not the server's ({expected}): the "
                "server would decode the codes with another decoder. Give both sides the same "
                "bridge (FedAgg(bridge=...) and FedAggDevice(bridge=...))")
        data = self.train_data_fn(context)
        payload = EmbeddingPayload(self.codes(context, data, fp16).numpy(), data.y.numpy())
        answer = reply(msg, {names.NUM_EXAMPLES: len(data)},
                       **{names.EMBEDDINGS: to_record(payload, fp16=fp16)})
        answer.content[names.CONFIG] = ConfigRecord({
            names.DATA_MEAN: [float(v) for v in data.mean],
            names.DATA_STD: [float(v) for v in data.std]})
        return answer

    def distil(self, msg: Message, context: Context) -> Message:
        """``train.distil``: learn from the parent's logits (leaf loss), keep the model, answer
        with the device's own logits on the same bridge samples."""
        started = time.perf_counter()
        knobs = Knobs.of(msg)
        s = TrainSettings.from_knobs(knobs)
        fp16, fidelity = knobs.get(names.FP16, bool), knobs.get(names.FIDELITY, bool)
        num_classes = knobs.get(names.NUM_CLASSES, int)
        device, server_round = partition_id(context), knobs.server_round
        data = self.train_data_fn(context)
        if len(data) and int(data.y.max()) >= num_classes:
            raise PayloadError(f"this device's labels reach {int(data.y.max())}, but the "
                               f"server's models have {num_classes} classes")
        record = msg.content.array_records.get(names.TEACHER)
        if record is None:
            raise PayloadError(f"the message holds no '{names.TEACHER}' record "
                               f"(it holds {sorted(msg.content.array_records)})")
        teacher = logits_from_record(record, num_samples=len(data), num_classes=num_classes,
                                     max_bytes=logits_limit(len(data), num_classes))
        rectify = knobs.get(names.SKR, bool)
        settings = Distillation(
            T=knobs.get(names.TEMPERATURE, float), beta=knobs.get(names.BETA_LEAF, float),
            lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay, batch_size=s.batch_size,
            clip=knobs.get(names.CLIP, float), spike=0.0 if fidelity else SPIKE,
            skr=SKR(self_knowledge=knobs.get(names.SKR_SELF_KNOWLEDGE, bool),
                    swap=knobs.get(names.SKR_SWAP, bool)) if rectify else None)
        # fidelity: the demo draws the augmentation once and passes in a fixed order
        real = normalise(data.x, data.mean, data.std)
        if s.augment:
            real = augment(real, round_generator(s.seed, 0 if fidelity else server_round, device),
                           cutout=s.cutout)
        held = state_round(context)
        model, kept_round = self.kept_model(context, knobs.get(names.KEPT_ROUND, int))
        samples = self.samples(context, data, fp16, raw=fidelity)
        metrics: dict[str, Any] = distil_pass(
            model, samples, data.y, torch.from_numpy(teacher.logits), settings, real=real,
            gamma=knobs.get(names.GAMMA, float), shuffle=not fidelity,
            generator=round_generator(s.seed, server_round, device, stream=1))
        own = logits_on(model, samples, knobs.get(names.LOGITS_BATCH, int), bn_train=fidelity)
        self.keep(context, model, server_round, knobs.get(names.KEEP_FROM, int))
        metrics.update({names.NUM_EXAMPLES: len(data),
                        "compute_s": time.perf_counter() - started})
        answer = reply(msg, metrics,
                       **{names.LOGITS: to_record(LogitsPayload(own.numpy()), fp16=fp16)})
        answer.content[names.KEPT] = ConfigRecord({names.KEPT_ROUND: kept_round,
                                                   names.STATE_ROUND: held})
        return answer

    def evaluate(self, msg: Message, context: Context) -> Message:
        """``evaluate.kept``: loss and accuracy of the kept model on the local test data
        (``fidelity``: BatchNorm in training mode, as the demo tests)."""
        knobs = Knobs.of(msg)
        held = state_round(context)
        model, kept_round = self.kept_model(context, knobs.get(names.KEPT_ROUND, int))
        data = self.test_data(context)
        metrics: dict[str, Any] = evaluate(model, data, knobs.get(names.EVAL_BATCH_SIZE, int),
                                           bn_train=knobs.get(names.FIDELITY, bool))
        metrics[names.NUM_EXAMPLES] = len(data)
        answer = reply(msg, metrics)
        answer.content[names.KEPT] = ConfigRecord({names.KEPT_ROUND: kept_round,
                                                   names.STATE_ROUND: held})
        return answer

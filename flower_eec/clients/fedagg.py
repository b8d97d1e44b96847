"""A FedAgg device: upload bridge codes once; learn from its edge's logits, answer with its own.

FedAgg: Wu et al., INFOCOM 2024, arXiv 2312.11489. The device is BSBODP's leaf: leaf loss on its
bridge samples and its real images, then its logits on the same bridge samples go back up.
"""

from __future__ import annotations

import time
from dataclasses import astuple
from functools import lru_cache
from typing import Any, ClassVar

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from flower_eec.clients.device import Device, round_generator
from flower_eec.core.bsbodp import Distillation, distil_pass, logits_on
from flower_eec.data.augment import augment, normalise
from flower_eec.models.bridge import BridgeAutoencoder, load_bridge
from flower_eec.protocol.payloads import (
    EMBEDDINGS_RECORD,
    LOGITS_RECORD,
    TEACHER_RECORD,
    EmbeddingPayload,
    LogitsPayload,
    logits_from_record,
    logits_limit,
    to_record,
)
from flower_eec.run.config import Config, rectification, skr_mode
from flower_eec.run.devices import device_setup
from flower_eec.run.federated import FederatedData
from flower_eec.strategies.bridge_store import decode


@lru_cache(maxsize=2)
def bridge_of(path: str) -> BridgeAutoencoder:
    """The frozen bridge (``""``: the shipped CIFAR-10 one), loaded once per process."""
    return load_bridge(path or None)


_CODES: dict[tuple[object, ...], torch.Tensor] = {}
_SAMPLES: dict[tuple[object, ...], torch.Tensor] = {}


def _key(config: Config, device: int) -> tuple[object, ...]:
    """Every setting that decides the device's shard and its codes."""
    f = config.fedagg
    return (astuple(config.data), config.seed, config.topology.num_devices, f.bridge_weights,
            f.fp16, device)


def device_codes(config: Config, data: FederatedData, device: int) -> torch.Tensor:
    """The device's codes as the server receives them (float16-rounded when ``fedagg.fp16``),
    encoded once per process."""
    key = _key(config, device)
    if key not in _CODES:
        shard = data.device_train(device)
        bridge = bridge_of(config.fedagg.bridge_weights)
        with torch.no_grad():
            codes = torch.cat([bridge.encode(shard.x[i:i + 1000].float() / 255.0)
                               for i in range(0, len(shard), 1000)])
        _CODES[key] = codes.half().float() if config.fedagg.fp16 else codes
    return _CODES[key]


def device_samples(config: Config, data: FederatedData, device: int) -> torch.Tensor:
    """The device's bridge samples, the same rows as its store entry, decoded once per process."""
    f = config.fedagg
    key = (*_key(config, device), f.fidelity)
    if key not in _SAMPLES:
        _SAMPLES[key] = decode(bridge_of(f.bridge_weights), device_codes(config, data, device),
                               data.dataset.mean, data.dataset.std, raw=f.fidelity)
    return _SAMPLES[key]


def embed(msg: Message, context: Context) -> Message:
    """``query.embed``: the codes of every training image, with their labels (sent once)."""
    config, data, device = device_setup(context)
    codes = device_codes(config, data, device)
    labels = data.device_train(device).y.numpy()
    payload = EmbeddingPayload(codes.numpy(), labels)
    return Message(RecordDict({
        EMBEDDINGS_RECORD: to_record(payload, fp16=config.fedagg.fp16),
        "metrics": MetricRecord({"num-examples": len(labels)}),
    }), reply_to=msg)


def _real_images(config: Config, data: FederatedData, device: int,
                 server_round: int) -> torch.Tensor:
    """The device's normalised images, augmented afresh each round (once and for all: fidelity)."""
    shard = data.device_train(device)
    images = normalise(shard.x, shard.mean, shard.std)
    if not config.data.augment:
        return images
    generator = round_generator(config.seed, 0 if config.fedagg.fidelity else server_round, device)
    return augment(images, generator, cutout=config.data.cutout)


def train(msg: Message, context: Context) -> Message:
    """Learn from the edge's logits (leaf loss), keep the model, reply with the device's logits."""
    started = time.perf_counter()
    config, data, device = device_setup(context)
    f, t = config.fedagg, config.train
    labels = data.device_train(device).y
    teacher = logits_from_record(msg.content.array_records[TEACHER_RECORD], num_samples=len(labels),
                                 num_classes=data.dataset.num_classes,
                                 max_bytes=logits_limit(len(labels), data.dataset.num_classes))
    sent = msg.content.config_records.get("config", ConfigRecord())
    server_round = int(sent.get("server-round", 0))  # type: ignore[arg-type]
    model = _LEGACY.kept_model(context)
    samples = device_samples(config, data, device)
    settings = Distillation(T=f.T, beta=f.beta_leaf, lr=float(sent.get("lr", t.lr)),  # type: ignore[arg-type]
                            momentum=t.momentum, weight_decay=t.weight_decay,
                            batch_size=t.batch_size, clip=f.clip,
                            skr=rectification(config) if skr_mode(config) == "both" else None)
    generator = round_generator(config.seed, server_round, device)
    metrics: dict[str, Any] = distil_pass(
        model, samples, labels, torch.from_numpy(teacher.logits), settings,
        real=_real_images(config, data, device, server_round), gamma=f.gamma,
        shuffle=not f.fidelity, generator=generator)
    own = logits_on(model, samples, t.batch_size if f.fidelity else config.eval.batch_size,
                    bn_train=f.fidelity)
    _LEGACY.keep(context, model)
    metrics.update({"num-examples": len(labels), "compute_s": time.perf_counter() - started})
    return Message(RecordDict({LOGITS_RECORD: to_record(LogitsPayload(own.numpy()), fp16=f.fp16),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


class FedAggDevice(Device):
    """The device side of FedAgg and FedEEC (being rewritten as the public device API)."""

    handlers: ClassVar[dict[str, str]] = {}


def _legacy() -> Device:
    from flower_eec.run.devices import device_model, train_data

    return Device(device_model, train_data)


_LEGACY = _legacy()  # until FedAggDevice carries the handlers

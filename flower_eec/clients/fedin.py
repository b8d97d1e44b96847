"""What a FedIN / HeteroAvg device does (our reconstruction of Chan et al., arXiv 2304.00759).

Train: local cross-entropy; under FedIN also IN training on a received feature batch, the two
gradients merged by the conflict QP; then upload one batch of its own features. Evaluate: the
received sub-model of the global model on the local test split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from torch.nn import functional as F

from flower_eec.clients.device import Device, round_generator
from flower_eec.core.fedin_qp import conflict_direction
from flower_eec.core.learning import Images, evaluate, minibatches, train_epochs
from flower_eec.data.augment import normalise
from flower_eec.errors import ConfigError
from flower_eec.models.fedin import assign_depths, build_fedin_model, feature_shapes
from flower_eec.models.resnet import ResNet
from flower_eec.protocol.payloads import (
    FeaturePayload,
    feature_bytes_per_sample,
    features_from_record,
    features_to_record,
)
from flower_eec.run.config import Config
from flower_eec.run.devices import device_setup
from flower_eec.run.federated import FederatedData

ARRAYS, FEATURES, METRICS = "arrays", "features", "metrics"
# Flower adds about 130 bytes of header per array; two arrays per feature batch.
_RECORD_OVERHEAD = 512


@dataclass(frozen=True)
class FeatureSpec:
    """The shape of every feature batch of a run: per-sample shapes, samples, wire format."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    batch: int
    fp16: bool
    max_bytes: int

    @property
    def batch_bytes(self) -> int:
        """Array bytes of one full batch."""
        return self.batch * feature_bytes_per_sample(self.in_shape, self.out_shape, self.fp16)

    def read(self, record: ArrayRecord) -> FeaturePayload:
        """Validate a received feature record against this spec."""
        return features_from_record(record, in_shape=self.in_shape, out_shape=self.out_shape,
                                    max_samples=self.batch, max_bytes=self.max_bytes)


def fedin_model(config: Config, data: FederatedData, depth: str) -> ResNet:
    """A FedIN model of ``depth`` shaped for the run's dataset, with the run's stem and width."""
    return build_fedin_model(depth, data.dataset.num_classes, data.dataset.in_channels,
                             stem=config.model.stem, width=config.model.width)


def device_depth(config: Config, device: int) -> str:
    """The depth this device carries (an even, seeded split of ``fedin.depths``)."""
    return _depths(config.topology.num_devices, tuple(config.fedin.depths), config.seed)[device]


@lru_cache(maxsize=4)
def _depths(num_devices: int, depths: tuple[str, ...], seed: int) -> list[str]:
    return assign_depths(num_devices, depths, seed)


def feature_spec(config: Config, data: FederatedData) -> FeatureSpec:
    """The run's feature batch: shapes at the E/IN split and the number of samples.

    Raises:
        ConfigError: ``fedin.feature_batch`` asks for more bytes than ``fedin.max_feature_bytes``
            allows, or not even one sample fits.
    """
    f, d = config.fedin, data.dataset
    in_shape, out_shape = _feature_shapes(f.depths[0], d.num_classes, d.in_channels,
                                          int(d.x_train.shape[-1]), config.model.stem,
                                          config.model.width)
    per_sample = feature_bytes_per_sample(in_shape, out_shape, f.fp16)
    fits = (f.max_feature_bytes - _RECORD_OVERHEAD) // per_sample
    if fits < 1 or f.feature_batch > fits:
        raise ConfigError(
            f"bad value for 'fedin.feature_batch': {f.feature_batch}; one sample's features "
            f"take {per_sample} bytes, so fedin.max_feature_bytes={f.max_feature_bytes} allows at "
            f"most {max(fits, 0)}: lower fedin.feature_batch (0 picks the largest that fits), or "
            "raise fedin.max_feature_bytes, set fedin.fp16=true or lower model.width")
    batch = f.feature_batch or min(fits, config.train.batch_size)
    return FeatureSpec(in_shape, out_shape, batch, f.fp16, f.max_feature_bytes)


@lru_cache(maxsize=8)
def _feature_shapes(depth: str, num_classes: int, in_channels: int, image_size: int, stem: str,
                    width: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    model = build_fedin_model(depth, num_classes, in_channels, stem=stem, width=width)
    return feature_shapes(model, in_channels, image_size)


def _flat(grads: list[torch.Tensor | None], params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                      for g, p in zip(grads, params, strict=True)])


def train_aligned(model: ResNet, data: Images, received: FeaturePayload, *, mu: float,
                  epochs: int, batch_size: int, lr: float, momentum: float = 0.9,
                  weight_decay: float = 0.0, augmented: bool = True, cutout: int = 0,
                  generator: torch.Generator | None = None) -> dict[str, float]:
    """Local CE training merged with IN training on ``received`` through FedIN's QP, per step.

    Per step: ``g_loc`` = grad of CE on a local mini-batch (all parameters); ``g_in`` = grad of
    ``MSE(IN(s_in), s_out) / mean(s_out^2)`` on the whole received batch (IN parameters only);
    the step follows
    the QP's direction ``d`` with SGD (momentum, weight decay).

    Returns:
        Mean training loss and accuracy, mean alignment loss, and the counts of QP steps and of
        steps where each constraint bound.
    """
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    in_ids = {id(p) for p in model.intermediate.parameters()}
    in_params = [p for p in params if id(p) in in_ids]
    optimiser = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    s_in = torch.from_numpy(received.s_in).to(device)
    s_out = torch.from_numpy(received.s_out).to(device)
    # MSE relative to the target's mean square: scale-free, so mu means the same at any width,
    # depth or training stage (raw MSE on growing features made SGD diverge on CIFAR-10).
    target_power = s_out.pow(2).mean().clamp_min(1e-8)
    model.train()
    seen, loss_sum, correct, in_sum, steps, loc_binds, in_binds = 0, 0.0, 0, 0.0, 0, 0, 0
    for x, y in minibatches(data, epochs=epochs, batch_size=batch_size, augmented=augmented,
                             cutout=cutout, generator=generator, device=device):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        g_loc = _flat(list(torch.autograd.grad(loss, params, allow_unused=True)), params)
        in_loss = F.mse_loss(model.intermediate(s_in), s_out) / target_power
        in_grads = dict(zip(map(id, in_params),
                            torch.autograd.grad(in_loss, in_params, allow_unused=True),
                            strict=True))
        g_in = _flat([in_grads.get(id(p)) for p in params], params)
        direction, solution = conflict_direction(g_loc, g_in, mu)
        offset = 0
        for p in params:
            p.grad = direction[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        optimiser.step()
        steps += 1
        loc_binds += solution.loc_binds
        in_binds += solution.in_binds
        seen += len(y)
        loss_sum += float(loss.detach()) * len(y)
        in_sum += float(in_loss.detach())
        correct += int((logits.argmax(1) == y).sum())
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1),
            "in_loss": in_sum / max(steps, 1), "qp_steps": steps, "qp_loc_binds": loc_binds,
            "qp_in_binds": in_binds}


@torch.no_grad()
def own_features(model: ResNet, data: Images, batch: int, generator: torch.Generator
                 ) -> FeaturePayload:
    """``(E(x), IN(E(x)))`` in eval mode for ``batch`` random local training images."""
    model.eval()
    index = torch.randperm(len(data), generator=generator)[:batch]
    device = next(model.parameters()).device
    s_in = model.extractor(normalise(data.x[index], data.mean, data.std).to(device))
    s_out = model.intermediate(s_in)
    return FeaturePayload(s_in.cpu().numpy(), s_out.cpu().numpy())


def _number(config: ConfigRecord, key: str, default: float) -> float:
    value = config.get(key, default)
    return float(value) if isinstance(value, (int, float)) else default


def _load(msg: Message, context: Context) -> tuple[Config, FederatedData, int, ResNet]:
    config, data, device = device_setup(context)
    model = fedin_model(config, data, device_depth(config, device))
    model.load_state_dict(msg.content.array_records[ARRAYS].to_torch_state_dict())
    return config, data, device, model


def train(msg: Message, context: Context) -> Message:
    """FedIN/HeteroAvg device round: train (aligned when a feature batch came), reply with the
    model's tensors, metrics and (FedIN) one batch of own features."""
    started = time.perf_counter()
    config, data, device, model = _load(msg, context)
    sent = msg.content.config_records.get("config", ConfigRecord())
    server_round = int(_number(sent, "server-round", 0))
    generator = round_generator(config.seed, server_round, device)
    t, shard = config.train, data.device_train(device)
    options: dict[str, Any] = {
        "epochs": t.local_epochs, "batch_size": t.batch_size, "lr": _number(sent, "lr", t.lr),
        "momentum": t.momentum, "weight_decay": t.weight_decay,
        "augmented": config.data.augment, "cutout": config.data.cutout, "generator": generator}
    content = RecordDict()
    if FEATURES in msg.content.array_records:
        spec = feature_spec(config, data)
        received = spec.read(msg.content.array_records[FEATURES])
        metrics: dict[str, Any] = train_aligned(model, shard, received, mu=config.fedin.mu,
                                                **options)
    else:
        metrics = {**train_epochs(model, shard, **options),
                   "qp_steps": 0, "qp_loc_binds": 0, "qp_in_binds": 0}
    content[ARRAYS] = ArrayRecord(model.state_dict())
    if config.method == "fedin":
        spec = feature_spec(config, data)
        content[FEATURES] = features_to_record(
            own_features(model, shard, spec.batch, generator), fp16=spec.fp16)
    metrics["num-examples"] = len(shard)
    metrics["compute_s"] = time.perf_counter() - started
    content[METRICS] = MetricRecord(metrics)
    return Message(content, reply_to=msg)


def evaluate_local(msg: Message, context: Context) -> Message:
    """Accuracy and loss of the received sub-model on the device's local test split."""
    config, data, device, model = _load(msg, context)
    local = data.device_test(device)
    metrics: dict[str, Any] = evaluate(model, local, config.eval.batch_size)
    metrics["num-examples"] = len(local)
    return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=msg)



class FedINDevice(Device):
    """The device side of FedIN and HeteroAvg (being rewritten as the public device API)."""

    handlers: ClassVar[dict[str, str]] = {}

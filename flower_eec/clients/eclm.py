"""What an ECLM device does: report its module use and budget, then adapt its sub-model locally.

ECLM (ALGORITHMS.md, section 5). The device's data follows the shift schedule (a new Dirichlet draw
every ``eclm.shift_every`` rounds) and its budget fluctuates (``eclm.budget_*``): our
reconstruction of the paper's data-distribution shifts and resource fluctuations.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from flower_eec.clients.device import Device, round_generator
from flower_eec.core.eclm_math import device_budget, shift_epoch
from flower_eec.core.eclm_training import module_use, train_modular
from flower_eec.core.learning import evaluate
from flower_eec.errors import PayloadError
from flower_eec.models import count_parameters
from flower_eec.models.modular import SELECTOR_PREFIX, ModularNet
from flower_eec.run.config import Config
from flower_eec.run.devices import build_device_model, device_setup
from flower_eec.run.federated import FederatedData
from flower_eec.run.shift import shifted

ROUTE = "query.route"  # server -> device: stem + selector; reply: module-use histogram, budget
SUBMODEL = "eclm"  # ConfigRecord of a train message naming the sub-model's modules per layer
USAGE = "usage"


def layer_key(layer: int) -> str:
    """ConfigRecord key listing the modules of ``layer`` in a sub-model."""
    return f"layer-{layer}"


def current_data(config: Config, data: FederatedData, server_round: int) -> FederatedData:
    """The devices' data at ``server_round`` under the shift schedule."""
    epoch = shift_epoch(server_round, config.eclm.shift_every)
    d = config.data
    return shifted(data, epoch, alpha=d.alpha, seed=config.seed, min_size=d.min_size,
                   local_test_size=d.local_test_size)


def budget_of(config: Config, data: FederatedData, device: int, server_round: int) -> int:
    """The device's budget (max sub-model parameters) at ``server_round``."""
    full = count_parameters(build_device_model(config, data, "modular"))
    e = config.eclm
    return device_budget(full, device, server_round, seed=config.seed, low=e.budget_low,
                         high=e.budget_high, every=e.budget_every)


def _round(msg: Message) -> int:
    sent = msg.content.config_records.get("config", ConfigRecord())
    value = sent.get("server-round", 0)
    return int(value) if isinstance(value, int) else 0


def _only_record(msg: Message) -> ArrayRecord:
    if len(msg.content.array_records) != 1:
        raise PayloadError(f"expected one ArrayRecord, got {len(msg.content.array_records)}")
    return next(iter(msg.content.array_records.values()))


def _load(model: ModularNet, arrays: ArrayRecord, need_all: bool) -> None:
    state = arrays.to_torch_state_dict()
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise PayloadError(f"received tensors the model does not have: {unknown[:3]}")
    missing = sorted(set(own) - set(state))
    if need_all and missing:
        raise PayloadError(f"received sub-model lacks tensors: {missing[:3]}")
    model.load_state_dict(state, strict=False)


def route(msg: Message, context: Context) -> Message:
    """Module-use histogram of the cloud's selector on the device's current data, and its budget."""
    config, data, device = device_setup(context)
    server_round = _round(msg)
    model = build_device_model(config, data, "modular")
    assert isinstance(model, ModularNet)
    _load(model, _only_record(msg), need_all=False)
    now = current_data(config, data, server_round)
    shard = now.device_train(device)
    usage = module_use(model, shard, config.eval.batch_size).astype(np.float32)
    metrics: dict[str, Any] = {
        "num-examples": len(shard),
        "budget": budget_of(config, data, device, server_round),
        "shift-epoch": shift_epoch(server_round, config.eclm.shift_every),
    }
    return Message(RecordDict({USAGE: ArrayRecord({USAGE: Array(usage)}),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


def kept_from(record: ConfigRecord, layers: int) -> list[list[int]]:
    """The sub-model's modules per layer from a train message's ``eclm`` record."""
    kept = []
    for layer in range(layers):
        held = record.get(layer_key(layer))
        if not isinstance(held, list) or not all(isinstance(i, int) for i in held):
            raise PayloadError(f"sub-model record lacks the module list '{layer_key(layer)}'")
        kept.append([int(i) for i in held])  # type: ignore[arg-type]
    return kept


def train(msg: Message, context: Context) -> Message:
    """Adapt the received sub-model on the device's current data; return its modules and accuracy.

    The selector stays the cloud's (it is not trained or returned); stem, modules and head are.
    Accuracy is measured on the device's current local test split before and after adaptation;
    ``usage`` is the routing mass of each module (flat, L*M) in the adapted sub-model.
    """
    started = time.perf_counter()
    config, data, device = device_setup(context)
    server_round = _round(msg)
    e, t = config.eclm, config.train
    kept = kept_from(msg.content.config_records[SUBMODEL], e.layers)
    model = ModularNet(data.dataset.num_classes, data.dataset.in_channels, layers=e.layers,
                       modules=e.modules, top_k=e.top_k, channels=e.channels, kept=kept,
                       selector_norm=e.selector_norm)
    _load(model, _only_record(msg), need_all=True)
    model.freeze_selector()
    now = current_data(config, data, server_round)
    shard, local = now.device_train(device), now.device_test(device)
    before = evaluate(model, local, config.eval.batch_size)
    generator = round_generator(config.seed, server_round, device)
    sent = msg.content.config_records.get("config", ConfigRecord())
    lr = sent.get("lr", t.lr)
    metrics: dict[str, Any] = train_modular(
        model, shard, epochs=t.local_epochs, batch_size=t.batch_size,
        lr=float(lr) if isinstance(lr, (int, float)) else t.lr, lb_weight=0.0,
        momentum=t.momentum, weight_decay=t.weight_decay, augmented=config.data.augment,
        cutout=config.data.cutout, generator=generator)
    after = evaluate(model, local, config.eval.batch_size)
    usage = module_use(model, shard, config.eval.batch_size)
    metrics.update({"accuracy": after["accuracy"], "loss": after["loss"],
                    "accuracy_before": before["accuracy"], "num-examples": len(shard),
                    USAGE: [float(u) for u in usage.ravel()],
                    "compute_s": time.perf_counter() - started})
    returned = {k: v for k, v in model.state_dict().items() if not k.startswith(SELECTOR_PREFIX)}
    return Message(RecordDict({"arrays": ArrayRecord(returned),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


class ECLMDevice(Device):
    """The device side of ECLM (being rewritten as the public device API)."""

    handlers: ClassVar[dict[str, str]] = {}

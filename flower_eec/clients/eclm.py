"""The device side of ECLM: report module use and budget, then adapt the sub-model the cloud sends.

ECLM (docs/methods.md, section ECLM). The cloud owns the modular model: every message carries its
shape (and, for ``train.adapt``, the modules of the device's sub-model), so a device needs no model
of its own, only its data and its budget. Both may change over rounds (the paper's data-distribution
shifts and resource fluctuations): the device answers for the round the message names.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message
from torch import nn

from flower_eec.clients.device import (
    DataFn,
    Device,
    Knobs,
    TrainSettings,
    partition_id,
    reply,
    round_generator,
)
from flower_eec.core.eclm_training import module_use, train_modular
from flower_eec.core.learning import Images, evaluate
from flower_eec.errors import PayloadError
from flower_eec.models.modular import SELECTOR_PREFIX, ModularNet
from flower_eec.protocol import names
from flower_eec.protocol.arrays import to_state_dict

BudgetFn = Callable[[Context, int], int]
DataAtRoundFn = Callable[[Context, int], tuple[Images, Images | None]]


def _modular_family(context: Context) -> nn.Module:
    # What ``query.describe`` names; the shape of every sub-model comes with each message.
    return ModularNet()


def data_version(images: Images) -> int:
    """A checksum of ``images`` (pixels and labels): it changes when the device's data does."""
    pixels = np.ascontiguousarray(images.x.cpu().numpy())
    labels = np.ascontiguousarray(images.y.cpu().numpy())
    return zlib.crc32(labels.tobytes(), zlib.crc32(pixels.tobytes()))


class ECLMDevice(Device):
    """An ECLM device: answers ``query.route`` and ``train.adapt`` with its own data.

    ``query.route`` carries the cloud's stem and selector; the device replies with its module-use
    histogram on its current training data (``usage``, ``(L, M)``), its example count, its budget
    and a checksum of its data (the cloud re-derives the sub-model when either changes).
    ``train.adapt`` carries the device's sub-model; the device trains it with the selector frozen
    (cross-entropy only) and replies with everything but the selector, with the routing mass of
    each module (``usage``, flat, ``L * M``) and, when it has test data, its local accuracy before
    and after adapting.

    Every knob comes with the message (``config`` record; the source is ``ECLM``'s constructor):
    the model's shape (``num-classes``, ``in-channels``, ``layers``, ``modules``, ``top-k``,
    ``channels``, ``selector-norm``), ``eval-batch-size``, ``server-round``, and for
    ``train.adapt`` the sub-model's modules (``layer-<l>``) and the ``TrainSettings`` knobs. So
    the device takes no model function: the cloud decides the model and each sub-model.

    Parameters
    ----------
    train_data_fn : Callable[[Context], Images]
        This node's training data (what ``query.describe`` counts; every round's data too,
        unless ``data_at_round_fn`` is given).
    test_data_fn : Callable[[Context], Images], optional
        This node's test data: local accuracy before and after adapting (default: none reported).
    budget_fn : Callable[[Context, int], int]
        The largest sub-model this node can take at a round, in parameters (a local setting:
        memory, battery, load). Called with the round of each ``query.route``.
    data_at_round_fn : Callable[[Context, int], tuple[Images, Images | None]], optional
        This node's ``(train, test)`` data at a round, for data that shifts over time; replaces
        ``train_data_fn`` and ``test_data_fn`` in ``query.route`` and ``train.adapt``.
    torch_device : str (default: "cpu")
        Where the sub-model runs (per node: override ``torch_device_for``).
    """

    handlers: ClassVar[dict[str, str]] = {names.ROUTE: "route", names.ADAPT: "adapt"}

    def __init__(self, train_data_fn: DataFn, test_data_fn: DataFn | None = None, *,
                 budget_fn: BudgetFn, data_at_round_fn: DataAtRoundFn | None = None,
                 torch_device: str = "cpu") -> None:
        super().__init__(_modular_family, train_data_fn, test_data_fn, torch_device=torch_device)
        self.budget_fn = budget_fn
        self.data_at_round_fn = data_at_round_fn

    def data_at(self, context: Context, server_round: int) -> tuple[Images, Images | None]:
        """``(train, test)`` data at ``server_round`` (test is None when the device has none)."""
        if self.data_at_round_fn is not None:
            return self.data_at_round_fn(context, server_round)
        test = self.test_data_fn(context) if self.test_data_fn is not None else None
        return self.train_data_fn(context), test

    def submodel(self, context: Context, knobs: Knobs,
                 kept: Sequence[Sequence[int]] | None = None) -> ModularNet:
        """The modular model the message describes (``kept``: its modules per layer; all if None),
        on ``torch_device_for(context)``."""
        model = ModularNet(knobs.get(names.NUM_CLASSES, int), knobs.get(names.IN_CHANNELS, int),
                           layers=knobs.get(names.LAYERS, int),
                           modules=knobs.get(names.MODULES, int),
                           top_k=knobs.get(names.TOP_K, int),
                           channels=knobs.get(names.CHANNELS, int), kept=kept,
                           selector_norm=knobs.get(names.SELECTOR_NORM, bool))
        return model.to(self.torch_device_for(context))

    def route(self, msg: Message, context: Context) -> Message:
        """``query.route``: module use of the received stem and selector on the current data."""
        knobs = Knobs.of(msg)
        server_round = knobs.server_round
        model = self.submodel(context, knobs)
        _load(model, _only_record(msg), need_all=False)
        train, _ = self.data_at(context, server_round)
        usage = module_use(model, train, knobs.get(names.EVAL_BATCH_SIZE, int)).astype(np.float32)
        metrics: dict[str, Any] = {
            names.NUM_EXAMPLES: len(train),
            names.BUDGET: int(self.budget_fn(context, server_round)),
            names.DATA_VERSION: data_version(train),
        }
        return reply(msg, metrics, **{names.USAGE: ArrayRecord({names.USAGE: Array(usage)})})

    def adapt(self, msg: Message, context: Context) -> Message:
        """``train.adapt``: train the received sub-model on the current data, selector frozen."""
        started = time.perf_counter()
        knobs = Knobs.of(msg)
        server_round = knobs.server_round
        settings = TrainSettings.from_knobs(knobs)
        batch = knobs.get(names.EVAL_BATCH_SIZE, int)
        model = self.submodel(context, knobs, kept_modules(knobs))
        _load(model, _only_record(msg), need_all=True)
        model.freeze_selector()
        train, test = self.data_at(context, server_round)
        before = evaluate(model, test, batch) if test is not None else None
        generator = round_generator(settings.seed, server_round, partition_id(context))
        metrics: dict[str, Any] = train_modular(
            model, train, epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
            lb_weight=0.0, momentum=settings.momentum, weight_decay=settings.weight_decay,
            augmented=settings.augment, cutout=settings.cutout, generator=generator)
        if test is not None and before is not None:
            after = evaluate(model, test, batch)
            metrics.update({"accuracy": after["accuracy"], "loss": after["loss"],
                            "accuracy_before": before["accuracy"]})
        usage = module_use(model, train, batch)
        metrics.update({names.NUM_EXAMPLES: len(train),
                        names.USAGE: [float(u) for u in usage.ravel()],
                        "compute_s": time.perf_counter() - started})
        # The selector stays the cloud's: it is neither trained nor returned.
        returned = {k: v for k, v in model.state_dict().items()
                    if not k.startswith(SELECTOR_PREFIX)}
        return reply(msg, metrics, **{names.ARRAYS: ArrayRecord(returned)})


def kept_modules(knobs: Knobs) -> list[list[int]]:
    """The sub-model's modules per layer, from a ``train.adapt`` message's ``layer-<l>`` knobs."""
    kept = []
    for layer in range(knobs.get(names.LAYERS, int)):
        held = knobs.record.get(names.layer_key(layer))
        if not isinstance(held, list) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                 for i in held):
            raise PayloadError(f"the message's '{names.CONFIG}' record lacks the module list "
                               f"'{names.layer_key(layer)}' (a list of int)")
        kept.append([int(i) for i in held])  # type: ignore[arg-type]
    return kept


def _only_record(msg: Message) -> ArrayRecord:
    if len(msg.content.array_records) != 1:
        raise PayloadError(f"expected one ArrayRecord, got {len(msg.content.array_records)}")
    return next(iter(msg.content.array_records.values()))


def _load(model: ModularNet, arrays: ArrayRecord, need_all: bool) -> None:
    state: dict[str, torch.Tensor] = to_state_dict(arrays)
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise PayloadError(f"received tensors the model does not have: {unknown[:3]}")
    missing = sorted(set(own) - set(state))
    if need_all and missing:
        raise PayloadError(f"received sub-model lacks tensors: {missing[:3]}")
    model.load_state_dict(state, strict=False)

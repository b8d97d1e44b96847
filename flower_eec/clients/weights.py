"""A device that trains and evaluates the weights it receives: FedAvg's and HierFAVG's device.

It answers Flower's plain ``train`` and ``evaluate`` messages, so any weight-averaging Flower
strategy can drive it (as the edge tier of ``Hierarchical`` or flat).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any, ClassVar

from flwr.app import ArrayRecord, Context, Message
from torch import nn

from flower_eec.clients.device import (
    DataFn,
    Device,
    Knobs,
    ModelFn,
    TrainSettings,
    partition_id,
    reply,
    round_generator,
)
from flower_eec.core.learning import Images, evaluate, train_epochs
from flower_eec.errors import PayloadError
from flower_eec.protocol import names
from flower_eec.protocol.arrays import to_state_dict

DataAtRoundFn = Callable[[Context, int], tuple[Images, Images]]


class WeightsDevice(Device):
    """Local cross-entropy training from the received weights; evaluation of received weights.

    Knobs of a ``train`` message (``config`` record): ``lr``, ``momentum``, ``weight-decay``,
    ``batch-size``, ``local-epochs``, ``augment``, ``cutout``, ``seed`` (``TrainSettings``),
    ``server-round``. Only ``lr`` is required: the others default to ``TrainSettings``'s values,
    so Flower's own strategies (which send ``lr`` at most) drive it too. Evaluate messages need
    no knob (``eval-batch-size`` is optional, default 500; ``adapt-epochs``, default 0: see
    ``evaluate``).

    ``data_at_round_fn`` (optional) gives the node's ``(train, test)`` data at a round, for data
    that shifts over time; it replaces ``train_data_fn`` and ``test_data_fn`` in ``train`` and
    ``evaluate`` (the message's ``server-round`` picks the round).
    """

    handlers: ClassVar[dict[str, str]] = {names.TRAIN: "train", names.EVALUATE: "evaluate"}

    def __init__(self, model_fn: ModelFn, train_data_fn: DataFn,
                 test_data_fn: DataFn | None = None, *,
                 data_at_round_fn: DataAtRoundFn | None = None,
                 torch_device: str = "cpu") -> None:
        super().__init__(model_fn, train_data_fn, test_data_fn, torch_device=torch_device)
        self.data_at_round_fn = data_at_round_fn

    def train_at(self, context: Context, server_round: int) -> Images:
        """The training data at ``server_round``."""
        if self.data_at_round_fn is not None:
            return self.data_at_round_fn(context, server_round)[0]
        return self.train_data_fn(context)

    def test_at(self, context: Context, server_round: int) -> Images:
        """The local test data at ``server_round``."""
        if self.data_at_round_fn is not None:
            return self.data_at_round_fn(context, server_round)[1]
        return self.test_data(context)

    def _received(self, msg: Message, context: Context) -> nn.Module:
        if len(msg.content.array_records) != 1:
            raise PayloadError(f"expected one ArrayRecord of weights, got "
                               f"{len(msg.content.array_records)}")
        model = self.model(context)
        arrays = next(iter(msg.content.array_records.values()))
        model.load_state_dict(to_state_dict(arrays))
        return model

    def train(self, msg: Message, context: Context) -> Message:
        """Train the received weights on the local data; reply with them and the metrics."""
        started = time.perf_counter()
        model = self._received(msg, context)
        knobs = Knobs.of(msg).with_defaults({names.SERVER_ROUND: 0})
        data = self.train_at(context, knobs.server_round)
        metrics = self._fit(model, data, knobs, context)
        metrics[names.NUM_EXAMPLES] = len(data)
        metrics["compute_s"] = time.perf_counter() - started
        return reply(msg, metrics, **{names.ARRAYS: ArrayRecord(model.state_dict())})

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Loss and accuracy of the received weights on the local test split; with
        ``adapt-epochs`` > 0, of a copy of them adapted to the local data first.

        Adapting: a copy of the received model trains for ``adapt-epochs`` epochs on the
        device's training data of the round (``train_epochs``, the ``train`` handler's loop),
        with the ``TrainSettings`` knobs of the message (``lr`` required, as in ``train``) and
        the ``train`` handler's random stream of that round; the received model is untouched.
        The reply's ``accuracy`` and ``loss`` are the adapted copy's; ``accuracy_before`` and
        ``loss_before`` the received model's (the names ``ECLMDevice.adapt`` reports); it adds
        the copy's ``train_*`` metrics, ``num-train`` (its training examples) and ``compute_s``.
        ``num-examples`` stays the test examples.
        """
        started = time.perf_counter()
        model = self._received(msg, context)
        knobs = Knobs.of(msg).with_defaults({names.EVAL_BATCH_SIZE: 500, names.ADAPT_EPOCHS: 0,
                                             names.SERVER_ROUND: 0})
        batch = knobs.get(names.EVAL_BATCH_SIZE, int)
        epochs = knobs.get(names.ADAPT_EPOCHS, int)
        if epochs < 0:
            raise PayloadError(f"knob '{names.ADAPT_EPOCHS}' is {epochs}, expected >= 0")
        data = self.test_at(context, knobs.server_round)
        metrics: dict[str, Any] = evaluate(model, data, batch)
        if epochs > 0:
            metrics = {"accuracy_before": metrics["accuracy"], "loss_before": metrics["loss"],
                       **self._adapted(model, knobs, epochs, context, data, batch)}
            metrics["compute_s"] = time.perf_counter() - started
        metrics[names.NUM_EXAMPLES] = len(data)
        return reply(msg, metrics)

    def _fit(self, model: nn.Module, data: Images, knobs: Knobs, context: Context,
             epochs: int | None = None) -> dict[str, Any]:
        """``train_epochs`` with the message's ``TrainSettings`` (only ``lr`` required; the
        others default to ``TrainSettings``'s) and the round's random stream; ``epochs``
        replaces ``local-epochs``."""
        s = TrainSettings.from_knobs(knobs.with_defaults(
            TrainSettings(lr=knobs.get("lr", float)).to_config()))
        return dict(train_epochs(
            model, data, epochs=s.epochs if epochs is None else epochs,
            batch_size=s.batch_size, lr=s.lr, momentum=s.momentum,
            weight_decay=s.weight_decay, augmented=s.augment, cutout=s.cutout,
            generator=round_generator(s.seed, knobs.server_round, partition_id(context))))

    def _adapted(self, received: nn.Module, knobs: Knobs, epochs: int, context: Context,
                 test: Images, batch: int) -> dict[str, Any]:
        """Train a copy of ``received`` for ``epochs`` on the round's training data; its
        training metrics, ``num-train`` and its loss and accuracy on ``test``."""
        train = self.train_at(context, knobs.server_round)
        adapted = copy.deepcopy(received)
        metrics = self._fit(adapted, train, knobs, context, epochs)
        metrics.update(evaluate(adapted, test, batch))
        metrics[names.NUM_TRAIN] = len(train)
        return metrics

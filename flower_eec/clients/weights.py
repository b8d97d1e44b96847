"""A device that trains and evaluates the weights it receives: FedAvg's and HierFAVG's device.

It answers Flower's plain ``train`` and ``evaluate`` messages, so any weight-averaging Flower
strategy can drive it (as the edge tier of ``Hierarchical`` or flat).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from flwr.app import ArrayRecord, Context, Message
from torch import nn

from flower_eec.clients.device import (
    Device,
    Knobs,
    TrainSettings,
    partition_id,
    reply,
    round_generator,
)
from flower_eec.core.learning import evaluate, train_epochs
from flower_eec.errors import PayloadError
from flower_eec.protocol import names


class WeightsDevice(Device):
    """Local cross-entropy training from the received weights; evaluation of received weights.

    Knobs of a ``train`` message (``config`` record): ``lr``, ``momentum``, ``weight-decay``,
    ``batch-size``, ``local-epochs``, ``augment``, ``cutout``, ``seed`` (``TrainSettings``),
    ``server-round``. Only ``lr`` is required: the others default to ``TrainSettings``'s values,
    so Flower's own strategies (which send ``lr`` at most) drive it too. Evaluate messages need
    no knob (``eval-batch-size`` is optional, default 500).
    """

    handlers: ClassVar[dict[str, str]] = {names.TRAIN: "train", names.EVALUATE: "evaluate"}

    def _received(self, msg: Message, context: Context) -> nn.Module:
        if len(msg.content.array_records) != 1:
            raise PayloadError(f"expected one ArrayRecord of weights, got "
                               f"{len(msg.content.array_records)}")
        model = self.model(context)
        arrays = next(iter(msg.content.array_records.values()))
        model.load_state_dict(arrays.to_torch_state_dict())
        return model

    def train(self, msg: Message, context: Context) -> Message:
        """Train the received weights on the local data; reply with them and the metrics."""
        started = time.perf_counter()
        model = self._received(msg, context)
        knobs = Knobs.of(msg)
        knobs = knobs.with_defaults({**TrainSettings(lr=knobs.get("lr", float)).to_config(),
                                     names.SERVER_ROUND: 0})
        s = TrainSettings.from_knobs(knobs)
        data = self.train_data_fn(context)
        metrics: dict[str, Any] = train_epochs(
            model, data, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
            momentum=s.momentum, weight_decay=s.weight_decay, augmented=s.augment,
            cutout=s.cutout,
            generator=round_generator(s.seed, knobs.server_round, partition_id(context)))
        metrics[names.NUM_EXAMPLES] = len(data)
        metrics["compute_s"] = time.perf_counter() - started
        return reply(msg, metrics, **{names.ARRAYS: ArrayRecord(model.state_dict())})

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Loss and accuracy of the received weights on the local test split."""
        model = self._received(msg, context)
        data = self.test_data(context)
        batch = Knobs.of(msg).with_defaults({names.EVAL_BATCH_SIZE: 500})
        metrics: dict[str, Any] = evaluate(model, data, batch.get(names.EVAL_BATCH_SIZE, int))
        metrics[names.NUM_EXAMPLES] = len(data)
        return reply(msg, metrics)

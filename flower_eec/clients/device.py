"""The public device API's base: a device's model and data, its knobs from each message, and
registration of its handlers in any Flower ``ClientApp``.

A device never reads the run config to decide what to do: the message type routes the work and
the message's ``config`` record carries every knob (the strategy's constructor is their source).
The user's functions give the device its model and data from its ``Context`` (node config, files).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from logging import INFO
from pathlib import Path
from typing import Any, ClassVar

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from torch import nn

from flower_eec.core.learning import Images
from flower_eec.errors import PayloadError
from flower_eec.protocol import names
from flower_eec.protocol.arrays import to_state_dict
from flower_eec.protocol.knobs import Knobs, TrainSettings

__all__ = ["Device", "Knobs", "TrainSettings", "partition_id", "register", "reply",
           "round_generator", "state_round"]

ModelFn = Callable[[Context], nn.Module]
DataFn = Callable[[Context], Images]
Handler = Callable[[Message, Context], Message]
KEPT_MODEL = "model"  # context.state key of the model a device keeps between rounds
KEPT_STATE = "kept"  # context.state key of the round that model is from
CHECKPOINT_ENV = "FLOWER_EEC_CHECKPOINT_DIR"


def partition_id(context: Context) -> int:
    """The device's stable identity: its node config's ``partition-id`` (Flower's convention)."""
    value = context.node_config.get(names.PARTITION_ID)
    if value is None:
        raise PayloadError(
            f"this node has no '{names.PARTITION_ID}' in its node config; start the SuperNode with "
            f"--node-config \"partition-id=<i> num-partitions=<N>\" (simulation sets it itself)")
    return int(value)  # type: ignore[arg-type]


def round_generator(seed: int, server_round: int, device: int, stream: int = 0
                    ) -> torch.Generator:
    """One random stream per (seed, round, device, stream): reruns reproduce; devices, rounds
    and streams (e.g. a pass's augmentation and its batch order) differ. (Torch's CPU generator
    keeps the seed's low 32 bits, so a stream shifts those.)"""
    base = (seed * 1_000_003 + server_round) * 100_003 + device
    return torch.Generator().manual_seed((base + stream * 0x9E3779B1) % (1 << 32))


def state_round(context: Context) -> int:
    """The round of the model a device's ``context.state`` holds (0: none)."""
    record = context.state.config_records.get(KEPT_STATE)
    value = record.get(names.KEPT_ROUND) if record is not None else None
    return int(value) if isinstance(value, int) else 0


def reply(msg: Message, metrics: dict[str, Any], **records: ArrayRecord) -> Message:
    """A reply with ``records`` and the ``metrics`` record."""
    content = RecordDict(dict(records))
    content[names.METRICS] = MetricRecord(metrics)
    return Message(content, reply_to=msg)


class Device:
    """A device of one method: its model, its data, and the handlers it answers.

    Subclasses name their handlers in ``handlers`` (message type -> method name). Register the
    device in a ``ClientApp`` with ``device.register(app)``; several devices go in one app with
    ``register(app, device, other)``.

    Parameters
    ----------
    model_fn : Callable[[Context], nn.Module]
        Builds this node's model (called when the device needs a fresh one).
    train_data_fn : Callable[[Context], Images]
        This node's training data: uint8 images ``(N, C, H, W)``, int64 labels, and the
        dataset's per-channel mean and std. Cache it yourself if loading is slow.
    test_data_fn : Callable[[Context], Images], optional
        This node's test data for the ``evaluate`` handlers (default: no local evaluation).
    torch_device : str (default: "cpu")
        Where the model trains. A subclass may choose per node instead, by overriding
        ``torch_device_for`` (our app's devices read it from the run config).
    """

    handlers: ClassVar[dict[str, str]] = {}

    def __init__(self, model_fn: ModelFn, train_data_fn: DataFn,
                 test_data_fn: DataFn | None = None, *, torch_device: str = "cpu") -> None:
        self.model_fn = model_fn
        self.train_data_fn = train_data_fn
        self.test_data_fn = test_data_fn
        self.torch_device = torch.device(torch_device)

    def register(self, app: ClientApp) -> None:
        """Add ``query.describe`` and this device's handlers to ``app``."""
        register(app, self)

    def torch_device_for(self, context: Context) -> torch.device:
        """Where this node's models compute: ``torch_device`` (a subclass may decide per node)."""
        return self.torch_device

    def model(self, context: Context) -> nn.Module:
        """A fresh model from ``model_fn``, on ``torch_device_for(context)``."""
        return self.model_fn(context).to(self.torch_device_for(context))

    def kept_model(self, context: Context, expected: int = -1) -> tuple[nn.Module, int]:
        """The model this device kept after round ``expected`` (0: a fresh one; -1: whatever
        it kept last), and the round it is really from (0: fresh).

        ``context.state`` holds the last model kept, with its round. When that is not the
        expected round (a late reply of a timed-out round can write an older state back; a
        resumed run starts with an empty state), the model of that round is read from the
        device's checkpoint folder (see ``checkpoint_dir``). Failing that, the device goes on
        with what it has and says so: the returned round differs from ``expected``.
        """
        model = self.model(context)
        have = state_round(context)
        if expected in (have, -1):
            if KEPT_MODEL in context.state.array_records:
                model.load_state_dict(to_state_dict(context.state.array_records[KEPT_MODEL]))
            return model, have
        saved = self.kept_file(context, expected) if expected > 0 else None
        if saved is not None and saved.is_file():
            # map_location: a file saved from a GPU also loads where no GPU is
            model.load_state_dict(torch.load(saved, map_location="cpu", weights_only=True))
            log(INFO, "Device %d: its state holds the model of round %d, not of round %d as "
                "expected: restored that one from %s", partition_id(context), have, expected,
                saved)
            return model, expected
        if expected == 0 or KEPT_MODEL not in context.state.array_records:
            return model, 0
        model.load_state_dict(to_state_dict(context.state.array_records[KEPT_MODEL]))
        return model, have

    def keep(self, context: Context, model: nn.Module, server_round: int = 0,
             keep_from: int = 0) -> None:
        """Store the device's model after ``server_round`` for its next message, and in its
        checkpoint folder if it has one (dropping files of rounds before ``keep_from``)."""
        context.state[KEPT_MODEL] = ArrayRecord(model.state_dict())
        context.state[KEPT_STATE] = ConfigRecord({names.KEPT_ROUND: server_round})
        path = self.kept_file(context, server_round)
        if path is None or server_round <= 0:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        torch.save(model.state_dict(), temporary)
        os.replace(temporary, path)  # a kill leaves the previous files whole
        for old in path.parent.glob("round-*.pt"):
            if int(old.stem.split("-")[1]) < min(keep_from, server_round):
                old.unlink(missing_ok=True)

    def checkpoint_dir(self, context: Context) -> Path | None:
        """Where this node keeps its models of past rounds: the node config's
        ``checkpoint-dir``, else the environment's ``FLOWER_EEC_CHECKPOINT_DIR``, else none."""
        folder = context.node_config.get(names.CHECKPOINT_DIR) or os.environ.get(CHECKPOINT_ENV)
        return Path(str(folder)) if folder else None

    def kept_file(self, context: Context, server_round: int) -> Path | None:
        """The file of the model kept after ``server_round`` (None without a folder)."""
        folder = self.checkpoint_dir(context)
        if folder is None:
            return None
        return folder / f"device-{partition_id(context)}" / f"round-{server_round}.pt"

    def test_data(self, context: Context) -> Images:
        """The local test data (a ``PayloadError`` when the device was given none)."""
        if self.test_data_fn is None:
            raise PayloadError("this device was built without test_data_fn, so it cannot "
                               "evaluate; pass test_data_fn or turn device evaluation off")
        return self.test_data_fn(context)

    def describe(self, msg: Message, context: Context, handled: Sequence[str]) -> Message:
        """``query.describe``: partition id, data sizes, model, and the message types answered."""
        test = len(self.test_data_fn(context)) if self.test_data_fn is not None else 0
        info = ConfigRecord({
            names.PARTITION_ID: partition_id(context),
            names.NUM_TRAIN: len(self.train_data_fn(context)),
            names.NUM_TEST: test,
            names.MODEL: type(self.model_fn(context)).__name__,
            names.HANDLERS: list(handled),
        })
        return Message(RecordDict({names.DESCRIPTION: info}), reply_to=msg)


def register(app: ClientApp, *devices: Device) -> None:
    """Register ``query.describe`` (answered by the first device) and every device's handlers.

    Raises:
        ValueError: Two devices handle the same message type, or ``app`` already has a handler
            for one of them (Flower's own check).
    """
    if not devices:
        raise ValueError("register needs at least one device")
    handled = [names.DESCRIBE] + [t for d in devices for t in type(d).handlers]
    duplicated = sorted({t for t in handled if handled.count(t) > 1})
    if duplicated:
        raise ValueError(f"two devices answer {duplicated}; register only one of them")
    first = devices[0]
    _add(app, names.DESCRIBE, lambda msg, context: first.describe(msg, context, handled))
    for device in devices:
        for message_type, method in type(device).handlers.items():
            _add(app, message_type, getattr(device, method))


def _add(app: ClientApp, message_type: str, handler: Handler) -> None:
    category, _, action = message_type.partition(".")
    decorator = getattr(app, category)
    decorator(action)(handler) if action else decorator()(handler)

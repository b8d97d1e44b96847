"""Tests of MeteredGrid's byte counting over an in-process grid with hand-made devices."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)

from flower_eec.grid.local import LocalGrid
from flower_eec.grid.metered import MeteredGrid, Traffic, message_bytes, record_bytes


def device(message: Message, context: Context) -> Message:
    """Reply with twice the received arrays; device 1 fails; every device reports compute_s."""
    pid = int(context.node_config["partition-id"])
    if pid == 1:
        raise RuntimeError("boom")
    kind = message.metadata.message_type
    arrays = message.content.array_records["arrays"]
    metrics = MetricRecord({"num-examples": 10 + pid, "compute_s": 0.25 * (pid + 1)})
    if kind == "evaluate":
        return Message(RecordDict({"metrics": metrics}), reply_to=message)
    doubled = ArrayRecord({k: Array(2 * v.numpy()) for k, v in arrays.items()})
    return Message(RecordDict({"arrays": doubled, "metrics": metrics}), reply_to=message)


def content(size: int) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(size, np.float32)),
                                              "b": Array(np.zeros(3, np.float64))}),
                       "config": ConfigRecord({"lr": 0.1, "server-round": 1})})


def messages(kind: str, nodes: list[int], size: int = 16) -> list[Message]:
    return [Message(content(size), dst_node_id=n, message_type=kind) for n in nodes]


def test_record_bytes_adds_up_every_record() -> None:
    records = content(16)

    expected = (records.array_records["arrays"].count_bytes()
                + records.config_records["config"].count_bytes())

    assert record_bytes(records) == expected
    # float32 x 16 and float64 x 3 of data at least, plus keys and the config values.
    assert expected > 16 * 4 + 3 * 8


def test_sent_and_received_bytes_equal_the_records_count_bytes() -> None:
    grid = MeteredGrid(LocalGrid(device, 4))
    sent = messages("train", [1000, 1001, 1002, 1003])

    replies = list(grid.send_and_receive(sent, timeout=1.0))

    traffic, exchange_s = grid.drain()
    assert list(traffic) == ["train"]
    train = traffic["train"]
    assert train.sent == 4
    assert train.sent_bytes == sum(
        m.content.array_records["arrays"].count_bytes()
        + m.content.config_records["config"].count_bytes() for m in sent)
    good = [r for r in replies if not r.has_error()]
    assert len(good) == 3
    assert train.received_bytes == sum(
        r.content.array_records["arrays"].count_bytes()
        + r.content.metric_records["metrics"].count_bytes() for r in good)
    assert train.received_bytes == sum(message_bytes(r) for r in replies)
    assert train.replies == 4
    assert train.errors == 1
    # Devices 0, 2, 3 report 0.25, 0.75 and 1.0 seconds of compute; the failed one nothing.
    assert train.device_compute_s == pytest.approx(2.0)
    assert exchange_s >= 0.0


def test_an_error_reply_carries_no_bytes() -> None:
    grid = MeteredGrid(LocalGrid(device, 4))

    [reply] = grid.send_and_receive(messages("train", [1001]))

    assert reply.has_error()
    assert message_bytes(reply) == 0
    traffic, _ = grid.drain()
    assert traffic["train"] == Traffic(sent_bytes=record_bytes(content(16)), received_bytes=0,
                                       sent=1, replies=1, errors=1, device_compute_s=0.0,
                                       failed={1001: "error reply: RuntimeError: boom"})


def test_missing_replies_show_as_sent_minus_replies() -> None:
    def drop(message: Message) -> bool:
        return message.metadata.dst_node_id in (1002, 1003)

    grid = MeteredGrid(LocalGrid(device, 4, drop=drop))
    sent = messages("train", [1000, 1001, 1002, 1003])

    replies = list(grid.send_and_receive(sent))

    assert len(replies) == 2
    train = grid.drain()[0]["train"]
    assert train.sent == 4
    assert train.sent_bytes == sum(message_bytes(m) for m in sent)
    assert train.replies == 2
    assert train.errors == 1
    assert train.sent - train.replies == 2
    assert train.received_bytes == message_bytes(replies[0]) + message_bytes(replies[1])
    assert train.failed == {1001: "error reply: RuntimeError: boom",
                            1002: "no reply before the time-out",
                            1003: "no reply before the time-out"}


def test_message_types_are_counted_apart() -> None:
    grid = MeteredGrid(LocalGrid(device, 4))

    grid.send_and_receive(messages("train", [1000], size=8))
    grid.send_and_receive(messages("evaluate", [1000, 1002], size=8))
    grid.send_and_receive([Message(RecordDict(), dst_node_id=1000,
                                   message_type="query.describe")])

    traffic, _ = grid.drain()
    assert sorted(traffic) == ["evaluate", "query", "train"]
    assert traffic["train"].sent == 1
    assert traffic["evaluate"].sent == 2
    assert traffic["evaluate"].sent_bytes == 2 * record_bytes(content(8))
    # Evaluate replies carry only their MetricRecord.
    assert traffic["evaluate"].received_bytes == 2 * MetricRecord(
        {"num-examples": 10, "compute_s": 0.25}).count_bytes()
    assert traffic["query"].sent_bytes == 0


def test_drain_returns_the_totals_since_the_last_drain_and_resets() -> None:
    grid = MeteredGrid(LocalGrid(device, 4))
    grid.send_and_receive(messages("train", [1000, 1002]))

    first, _ = grid.drain()
    second, exchange_s = grid.drain()

    assert first["train"].sent == 2
    assert second == {}
    assert exchange_s == 0.0
    assert grid.traffic == {}

    grid.send_and_receive(messages("train", [1003]))
    third, _ = grid.drain()
    assert third["train"].sent == 1
    assert third["train"].sent_bytes == record_bytes(content(16))


def test_push_and_pull_are_metered_too() -> None:
    grid = MeteredGrid(LocalGrid(device, 4))
    sent = messages("train", [1000, 1002])

    ids = list(grid.push_messages(sent))
    replies = list(grid.pull_messages(ids))

    train = grid.drain()[0]["train"]
    assert (train.sent, train.replies) == (2, 2)
    assert train.sent_bytes == sum(message_bytes(m) for m in sent)
    assert train.received_bytes == sum(message_bytes(r) for r in replies)


def test_the_grid_underneath_is_visible_through_the_meter() -> None:
    local = LocalGrid(device, 3)
    grid = MeteredGrid(local)

    assert list(grid.get_node_ids()) == [1000, 1001, 1002]
    assert [node.node_id for node in grid.get_nodes()] == [1000, 1001, 1002]
    assert grid.run is local.run

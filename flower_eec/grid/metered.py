"""Byte counting of what actually travels: a Grid wrapper that meters every message and reply."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from flower_eec.core.learning import SKIPPED_STEPS
from flower_eec.grid.forwarding import ForwardingGrid


def record_bytes(content: RecordDict) -> int:
    """Bytes of a message's records (array data, metric and config values, their keys)."""
    return sum(record.count_bytes() for record in content.values())


def message_bytes(message: Message) -> int:
    """Bytes of one message; an error reply carries no records."""
    return record_bytes(message.content) if message.has_content() else 0


@dataclass
class Traffic:
    """Totals of one stretch of exchanges, per direction."""

    sent_bytes: int = 0
    received_bytes: int = 0
    sent: int = 0
    replies: int = 0
    errors: int = 0
    device_compute_s: float = 0.0
    skipped_steps: int = 0  # training steps the devices' guard skipped (their replies' metric)
    failed: dict[int, str] = field(default_factory=dict)  # node id -> why it gave no result


class MeteredGrid(ForwardingGrid):
    """A Grid that forwards to another and adds up, per message type, what each exchange moved.

    ``drain()`` returns the totals since the last call, so a caller can report them per round.
    Replies whose MetricRecord holds ``compute_s`` add it to ``device_compute_s``. In
    ``send_and_receive``, a node that answers with an error, or not at all, is noted in
    ``failed`` with the reason.
    """

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.traffic: dict[str, Traffic] = {}
        self.exchange_s = 0.0

    def drain(self) -> tuple[dict[str, Traffic], float]:
        """Totals per message type and seconds spent in send_and_receive since the last drain."""
        drained = (self.traffic, self.exchange_s)
        self.traffic, self.exchange_s = {}, 0.0
        return drained

    def _of(self, message_type: str) -> Traffic:
        return self.traffic.setdefault(message_type.split(".")[0], Traffic())

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self._count_sent(messages)
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.grid.pull_messages(message_ids))
        self._count_received(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self._count_sent(messages)
        start = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.exchange_s += time.perf_counter() - start
        self._count_received(replies)
        answered = {reply.metadata.src_node_id for reply in replies}
        for message in messages:
            if message.metadata.dst_node_id not in answered:
                self._of(message.metadata.message_type).failed[
                    message.metadata.dst_node_id] = "no reply before the time-out"
        return replies

    def _count_sent(self, messages: list[Message]) -> None:
        for message in messages:
            traffic = self._of(message.metadata.message_type)
            traffic.sent_bytes += message_bytes(message)
            traffic.sent += 1

    def _count_received(self, replies: list[Message]) -> None:
        for reply in replies:
            traffic = self._of(reply.metadata.message_type)
            traffic.received_bytes += message_bytes(reply)
            traffic.replies += 1
            traffic.errors += reply.has_error()
            if reply.has_error():
                reason = (str(reply.error.reason).strip().splitlines() or [""])[-1]
                traffic.failed[reply.metadata.src_node_id] = f"error reply: {reason[:300]}"
            if reply.has_content():
                for metrics in reply.content.metric_records.values():
                    compute = metrics.get("compute_s")
                    if isinstance(compute, float):
                        traffic.device_compute_s += compute
                    skipped = metrics.get(SKIPPED_STEPS)
                    if isinstance(skipped, int):
                        traffic.skipped_steps += skipped

"""Checks on device replies before a strategy aggregates them: a bad reply fails its device only."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from flower_eec.errors import ProtocolError
from flower_eec.protocol.arrays import values

# Flower's ClientApp raises this when no handler is registered for a message type; the engines
# turn it into the error reply's reason (wrapped in the exception's type and quotes).
_MISSING = re.compile(r"No (train|evaluate|query) function registered with name '(\w+)'")
_DEFAULT_ACTION = "default"  # Flower's action of a bare "train" / "evaluate" / "query"


def train_reply_problem(reply: Message, reference: ArrayRecord | None,
                        weighted_by_key: str = "num-examples") -> str | None:
    """Why a train reply cannot be aggregated, or None when it can.

    A usable reply holds one ArrayRecord with the keys, shapes and dtypes of ``reference``
    (when given) and finite values, and one MetricRecord with a positive ``weighted_by_key``.
    """
    if reply.has_error():
        return f"error reply: {reply.error.reason}"
    content = reply.content
    if len(content.array_records) != 1:
        return f"expected one ArrayRecord, got {len(content.array_records)}"
    arrays = next(iter(content.array_records.values()))
    if reference is not None:
        if set(arrays) != set(reference):
            missing = sorted(set(reference) - set(arrays))[:3]
            extra = sorted(set(arrays) - set(reference))[:3]
            return f"array keys differ from the model's (missing {missing}, extra {extra})"
        for key, array in arrays.items():
            expected = reference[key]
            if tuple(array.shape) != tuple(expected.shape) or array.dtype != expected.dtype:
                return (f"array '{key}' is {array.dtype}{list(array.shape)}, "
                        f"expected {expected.dtype}{list(expected.shape)}")
    for key, array in arrays.items():
        data = values(array)
        if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
            return f"array '{key}' holds NaN or infinite values"
    return metric_problem(content, weighted_by_key)


def metric_problem(content: RecordDict, weighted_by_key: str = "num-examples") -> str | None:
    """Why a reply's MetricRecord cannot weight an average, or None."""
    if len(content.metric_records) != 1:
        return f"expected one MetricRecord, got {len(content.metric_records)}"
    metrics = next(iter(content.metric_records.values()))
    weight = metrics.get(weighted_by_key)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        return f"MetricRecord lacks a numeric '{weighted_by_key}'"
    if not math.isfinite(weight) or weight <= 0:
        return f"'{weighted_by_key}' is {weight}, expected a positive number"
    return None


def common_metrics(replies: Iterable[Message]) -> list[Message]:
    """Keep in every reply only the scalar metrics that all replies share.

    Flower's built-in aggregation raises when metric keys differ between replies; a device
    that reports one extra metric must not cost the whole edge its round.
    """
    replies = list(replies)
    if not replies:
        return replies
    records = [next(iter(r.content.metric_records.items())) for r in replies]
    shared = set.intersection(*(set(record) for _, record in records))
    for reply, (name, record) in zip(replies, records, strict=True):
        if set(record) != shared:
            reply.content[name] = MetricRecord({k: v for k, v in record.items() if k in shared})
    return replies


def missing_handler(reply: Message) -> str | None:
    """The message type a reply says its ClientApp has no handler for, or None.

    A device whose ClientApp lacks the handler answers with an error reply whose reason holds
    Flower's "No <category> function registered with name '<action>'"; the message type is
    ``<category>.<action>``, or ``<category>`` for the default action.
    """
    if not reply.has_error():
        return None
    found = _MISSING.search(reply.error.reason or "")
    if found is None:
        return None
    category, action = found.groups()
    return category if action == _DEFAULT_ACTION else f"{category}.{action}"


def require_handler(replies: Iterable[Message], device: str) -> None:
    """Raise ``ProtocolError`` when every reply says its ClientApp lacks the handler.

    Args:
        replies: The replies of one exchange (no replies: nothing to tell, no error).
        device: How a user adds the handlers, e.g. ``"FedAggDevice(...).register(app)"``.

    Raises:
        ProtocolError: Naming the missing message type, ``device`` and the README section.
    """
    missing = {missing_handler(reply) for reply in replies}
    if not missing or None in missing:
        return
    types = ", ".join(sorted(str(m) for m in missing))
    raise ProtocolError(
        f"no device answers '{types}': their ClientApp has no handler for it, so every round "
        f"would fail. Register the method's device in the ClientApp, {device}, as the "
        f"README's section \"In your own Flower project\" shows")

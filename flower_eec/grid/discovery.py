"""Which Flower node is which device: ``query.describe`` where answered, else a fixed order."""

from __future__ import annotations

import time
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from flower_eec.errors import ConfigError
from flower_eec.protocol.names import DESCRIBE, PARTITION_ID
from flower_eec.protocol.replies import missing_handler


def wait_for_nodes(grid: Grid, expected: int, timeout: float = 60.0) -> list[int]:
    """Node ids once ``expected`` nodes have registered; a mismatch is a ConfigError, not a hang."""
    deadline = time.monotonic() + timeout
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if len(node_ids) != expected:
        raise ConfigError(
            f"the federation has {len(node_ids)} nodes but topology.num_devices is {expected}: "
            f"run with --federation-config \"num-supernodes={expected}\" "
            f"(or set topology.num_devices={len(node_ids)})")
    return node_ids


def _ask(grid: Grid, node_ids: list[int], timeout: float) -> list[Message]:
    messages = [Message(RecordDict(), dst_node_id=n, message_type=DESCRIBE) for n in node_ids]
    return list(grid.send_and_receive(messages, timeout=timeout))


def _description(reply: Message) -> ConfigRecord | None:
    if reply.has_error() or not reply.content.config_records:
        return None
    return next(iter(reply.content.config_records.values()))


def _silence(replies: list[Message]) -> str:
    """Why the first node's answer places nothing, in a few words (for the log line)."""
    if not replies:
        return "no reply before the time-out"
    if missing_handler(replies[0]) == DESCRIBE:
        return "it has no handler for it"
    if replies[0].has_error():
        reason = str(replies[0].error.reason).strip().splitlines() or [""]
        return f"error reply: {reason[0][:120]}"
    return f"its answer has no '{PARTITION_ID}'"


def discover(grid: Grid, node_ids: list[int], timeout: float = 60.0,
             answers: dict[int, ConfigRecord] | None = None) -> dict[int, int]:
    """Map device index (the node's ``partition-id``) to node id.

    Nodes whose ClientApp answers ``query.describe`` with a ``partition-id`` are placed by it;
    if any does not, every node is placed by sorted node id (deterministic within a run).
    ``answers``, when given, receives each placed device's answer (e.g. its ``num-train``).

    One node is asked first: a ClientApp without a describe handler (any standard Flower app)
    then costs one INFO line here and one error reply, not one error per node. (Flower logs the
    exception of that one call where the ClientApp runs; nothing on the server side can stop it.)
    """
    if not node_ids:
        return {}
    probe = _ask(grid, node_ids[:1], timeout)
    first = _description(probe[0]) if probe else None
    if first is None or not isinstance(first.get(PARTITION_ID), int):
        log(INFO, "The ClientApp does not answer %s (%s): placing %d devices by sorted node id",
            DESCRIBE, _silence(probe), len(node_ids))
        return dict(enumerate(sorted(node_ids)))
    replies = probe + _ask(grid, node_ids[1:], timeout)
    placed: dict[int, int] = {}
    described: dict[int, ConfigRecord] = {}
    for reply in replies:
        description = _description(reply)
        pid = description.get(PARTITION_ID) if description is not None else None
        if description is not None and isinstance(pid, int) and 0 <= pid < len(node_ids):
            placed[pid] = reply.metadata.src_node_id
            described[pid] = description
    if len(placed) == len(node_ids) and len(set(placed.values())) == len(node_ids):
        log(INFO, "Discovered %d devices through %s", len(placed), DESCRIBE)
        if answers is not None:
            answers.update(described)
        return dict(sorted(placed.items()))
    log(WARNING, "%d of %d nodes answered %s with distinct partition ids; placing devices by "
        "sorted node id", len(placed), len(node_ids), DESCRIBE)
    return dict(enumerate(sorted(node_ids)))


def place_devices(grid: Grid, num_devices: int, node_wait: float, timeout: float,
                  answers: dict[int, ConfigRecord] | None = None, describe: bool = True
                  ) -> tuple[dict[int, int], dict[int, int]]:
    """Wait for ``num_devices`` nodes, discover them; return device -> node and node -> device.

    ``describe=False`` sends no ``query.describe`` at all and places devices by sorted node id.
    """
    node_ids = wait_for_nodes(grid, num_devices, node_wait)
    if describe:
        node_of = discover(grid, node_ids, timeout=min(timeout, 120.0), answers=answers)
    else:
        node_of = dict(enumerate(sorted(node_ids)))
    return node_of, {node: device for device, node in node_of.items()}

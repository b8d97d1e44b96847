"""Which Flower node is which device: ``query.describe`` where answered, else a fixed order."""

from __future__ import annotations

import time
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from flower_eec.errors import ConfigError

DESCRIBE = "query.describe"


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


def discover(grid: Grid, node_ids: list[int], timeout: float = 60.0,
             answers: dict[int, ConfigRecord] | None = None) -> dict[int, int]:
    """Map device index (the node's ``partition-id``) to node id.

    Nodes whose ClientApp answers ``query.describe`` with a ``partition-id`` are placed by it;
    if any does not, every node is placed by sorted node id (deterministic within a run).
    ``answers``, when given, receives each placed device's answer (e.g. its ``num-train``).
    """
    messages = [Message(RecordDict(), dst_node_id=n, message_type=DESCRIBE) for n in node_ids]
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    placed: dict[int, int] = {}
    for reply in replies:
        if reply.has_error() or not reply.content.config_records:
            continue
        described = next(iter(reply.content.config_records.values()))
        pid = described.get("partition-id")
        if isinstance(pid, int) and 0 <= pid < len(node_ids):
            placed[pid] = reply.metadata.src_node_id
            if answers is not None:
                answers[pid] = described
    if len(placed) == len(node_ids) and len(set(placed.values())) == len(node_ids):
        log(INFO, "Discovered %d devices through %s", len(placed), DESCRIBE)
        return dict(sorted(placed.items()))
    log(WARNING, "%d of %d nodes answered %s; placing devices by sorted node id",
        len(placed), len(node_ids), DESCRIBE)
    if answers is not None:
        answers.clear()  # they were keyed by partition ids that now place nothing
    return dict(enumerate(sorted(node_ids)))


def place_devices(grid: Grid, num_devices: int, node_wait: float, timeout: float,
                  answers: dict[int, ConfigRecord] | None = None
                  ) -> tuple[dict[int, int], dict[int, int]]:
    """Wait for ``num_devices`` nodes, discover them; return device -> node and node -> device."""
    node_ids = wait_for_nodes(grid, num_devices, node_wait)
    node_of = discover(grid, node_ids, timeout=min(timeout, 120.0), answers=answers)
    return node_of, {node: device for device, node in node_of.items()}

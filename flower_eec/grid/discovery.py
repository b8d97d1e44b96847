"""Which Flower node is which device: ``query.describe`` where answered (always, for our devices),
else a fixed order."""

from __future__ import annotations

import time
from logging import INFO

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from flower_eec.errors import ConfigError, ProtocolError
from flower_eec.protocol.names import DESCRIBE, PARTITION_ID
from flower_eec.protocol.replies import missing_handler


def wait_for_nodes(grid: Grid, expected: int, timeout: float = 60.0) -> list[int]:
    """Node ids once ``expected`` nodes have registered; a mismatch is a ConfigError, not a hang.

    More nodes than expected is an error at once; fewer, once ``timeout`` seconds have passed
    without the rest registering (a line says what is awaited after the first second).
    """
    started = time.monotonic()
    said = False
    while True:
        node_ids = sorted(grid.get_node_ids())
        waited = time.monotonic() - started
        if len(node_ids) >= expected or waited > timeout:
            break
        if not said and waited >= 1.0:
            log(INFO, "Waiting up to %g s for %d nodes to register (%d so far)", timeout,
                expected, len(node_ids))
            said = True
        time.sleep(0.2)
    if len(node_ids) != expected:
        raise ConfigError(node_count_problem(len(node_ids), expected, timeout))
    return node_ids


def node_count_problem(found: int, expected: int, waited: float) -> str:
    """What to tell a user whose federation has ``found`` nodes where ``expected`` are needed
    (after waiting ``waited`` seconds for the missing ones)."""
    after = f" after {waited:g} s (simulation.node_wait)" if found < expected else ""
    return (f"the federation has {found} nodes but topology.num_devices is {expected}{after}: "
            f"run with --federation-config \"num-supernodes={expected}\" "
            f"(or set topology.num_devices={found})")


def _ask(grid: Grid, node_ids: list[int], deadline: float) -> list[Message]:
    """Ask ``node_ids`` to describe themselves, asking again those that give no reply (a cold
    start can outlast one attempt) until ``deadline``; returns every reply received."""
    replies: list[Message] = []
    waiting = list(node_ids)
    while waiting:
        messages = [Message(RecordDict(), dst_node_id=n, message_type=DESCRIBE) for n in waiting]
        got = list(grid.send_and_receive(messages, timeout=max(deadline - time.monotonic(), 1.0)))
        replies += got
        answered = {reply.metadata.src_node_id for reply in got}
        waiting = [n for n in waiting if n not in answered]
        if waiting and time.monotonic() >= deadline:
            break
        if waiting and not got:
            time.sleep(0.2)  # nothing came back at once (e.g. nodes still starting): pace the asks
    return replies


def _description(reply: Message) -> ConfigRecord | None:
    if reply.has_error() or not reply.content.config_records:
        return None
    return next(iter(reply.content.config_records.values()))


def _first_line(reply: Message) -> str:
    return (str(reply.error.reason).strip().splitlines() or [""])[0][:200]


def discover(grid: Grid, node_ids: list[int], wait: float = 60.0,
             answers: dict[int, ConfigRecord] | None = None) -> dict[int, int]:
    """Map device index (the node's ``partition-id``) to node id.

    Devices that answer ``query.describe`` with a ``partition-id`` (all of flower-eec's) are
    always placed by it: nodes that give no reply are asked again for up to ``wait`` seconds
    (independent of any round timeout), and if some never answer, or two claim one id, the run
    stops with a ``ProtocolError`` that says so. Only a ClientApp that has no describe handler
    at all (any standard Flower app), or answers it without a ``partition-id``, gets its nodes
    placed by sorted node id (deterministic within a run). ``answers``, when given, receives
    each placed device's answer (e.g. its ``num-train``).

    One node is asked first: a ClientApp without a describe handler then costs one INFO line
    here and one error reply, not one error per node. (Flower logs the exception of that one
    call where the ClientApp runs; nothing on the server side can stop it.)

    Raises:
        ProtocolError: A node never answers within ``wait``, a device's describe fails, or the
            partition ids are not ``0 .. len(node_ids) - 1``, each once.
    """
    if not node_ids:
        return {}
    log(INFO, "Asking the %d devices who they are", len(node_ids))
    deadline = time.monotonic() + wait
    probe = _ask(grid, node_ids[:1], deadline)
    if not probe:
        raise ProtocolError(_silent([node_ids[0]], wait))
    first = probe[0]
    if first.has_error() and missing_handler(first) != DESCRIBE:
        raise ProtocolError(f"node {node_ids[0]} failed to describe itself ({DESCRIBE}): "
                            f"{_first_line(first)}")
    described = _description(first)
    if described is None or not isinstance(described.get(PARTITION_ID), int):
        why = ("it has no handler for it" if first.has_error()
               else f"its answer has no '{PARTITION_ID}'")
        log(INFO, "The ClientApp does not answer %s (%s): placing %d devices by sorted node id",
            DESCRIBE, why, len(node_ids))
        return dict(enumerate(sorted(node_ids)))
    replies = probe + _ask(grid, node_ids[1:], deadline)
    placed: dict[int, list[int]] = {}
    descriptions: dict[int, ConfigRecord] = {}
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            raise ProtocolError(f"node {node} failed to describe itself ({DESCRIBE}): "
                                f"{_first_line(reply)}")
        description = _description(reply)
        pid = description.get(PARTITION_ID) if description is not None else None
        if description is None or not isinstance(pid, int) or not 0 <= pid < len(node_ids):
            raise ProtocolError(
                f"node {node} describes itself as partition-id {pid!r}; the {len(node_ids)} "
                f"devices must be 0 .. {len(node_ids) - 1}: start each SuperNode with its own "
                f"--node-config \"partition-id=<i> num-partitions={len(node_ids)}\"")
        placed.setdefault(pid, []).append(node)
        descriptions[pid] = description
    shared = {pid: nodes for pid, nodes in placed.items() if len(nodes) > 1}
    if shared:
        raise ProtocolError(f"several nodes claim one partition-id ({shared}, id: nodes): give "
                            "each SuperNode its own --node-config \"partition-id=<i>\"")
    answered = {nodes[0] for nodes in placed.values()}
    silent = [n for n in node_ids if n not in answered]
    if silent:
        raise ProtocolError(_silent(silent, wait))
    log(INFO, "Discovered %d devices through %s", len(placed), DESCRIBE)
    if answers is not None:
        answers.update(descriptions)
    return {pid: nodes[0] for pid, nodes in sorted(placed.items())}


def _silent(nodes: list[int], wait: float) -> str:
    return (f"{len(nodes)} node(s) ({nodes[:8]}{' ...' if len(nodes) > 8 else ''}) gave no "
            f"answer to {DESCRIBE} within {wait:g} s, so devices cannot be placed by their "
            "partition id: raise simulation.node_wait (Hierarchical's node_wait) if the nodes "
            "start slowly, or check their logs")


def place_devices(grid: Grid, num_devices: int, node_wait: float,
                  answers: dict[int, ConfigRecord] | None = None, describe: bool = True
                  ) -> tuple[dict[int, int], dict[int, int]]:
    """Wait for ``num_devices`` nodes, discover them; return device -> node and node -> device.

    ``node_wait`` bounds both the wait for the nodes to register and their discovery.
    ``describe=False`` sends no ``query.describe`` at all and places devices by sorted node id.
    """
    node_ids = wait_for_nodes(grid, num_devices, node_wait)
    if describe:
        node_of = discover(grid, node_ids, wait=node_wait, answers=answers)
    else:
        node_of = dict(enumerate(sorted(node_ids)))
    return node_of, {node: device for device, node in node_of.items()}

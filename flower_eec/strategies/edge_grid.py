"""A view of a Grid restricted to one edge's devices, so any Flower strategy can serve as a tier."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class EdgeGrid(Grid):
    """The nodes of one edge in one round; sending goes through ``Hierarchical``, not here.

    An edge strategy calls ``get_node_ids()`` to sample its devices; messages are collected
    from every edge and sent together in one ``send_and_receive``.
    """

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        self.grid = grid
        self.node_ids = list(node_ids)

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise RuntimeError("an edge's strategy only configures and aggregates; "
                           "Hierarchical sends the messages of all edges together")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise RuntimeError("an edge's strategy only configures and aggregates")

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        raise RuntimeError("an edge's strategy only configures and aggregates")

"""A view of a Grid restricted to one edge's devices, so any Flower strategy can serve as a tier."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import Message
from flwr.serverapp import Grid

from flower_eec.grid.forwarding import ForwardingGrid

if TYPE_CHECKING:
    from flwr.proto.node_pb2 import NodeInfo


class EdgeGrid(ForwardingGrid):
    """The nodes of one edge in one round; sending goes through ``Hierarchical``, not here.

    An edge strategy calls ``get_node_ids()`` to sample its devices; messages are collected
    from every edge and sent together in one ``send_and_receive``.
    """

    def __init__(self, grid: Grid, node_ids: Iterable[int]) -> None:
        super().__init__(grid)
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def get_nodes(self) -> Iterable[NodeInfo]:
        """The underlying grid's information on this edge's nodes only."""
        mine = set(self.node_ids)
        return [node for node in self.grid.get_nodes() if node.node_id in mine]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise RuntimeError("an edge's strategy only configures and aggregates; "
                           "Hierarchical sends the messages of all edges together")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise RuntimeError("an edge's strategy only configures and aggregates")

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        raise RuntimeError("an edge's strategy only configures and aggregates")

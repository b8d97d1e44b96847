"""An in-process Grid: runs a ClientApp on N simulated nodes in this process, no Ray, no network.

For fast tests and debugging; replies, errors and time-outs behave as under Flower's engines.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from flower_eec.grid.flower_internals import set_message_id, set_task_identity

ERROR_CODE_CLIENT_EXCEPTION = 2


class LocalGrid(Grid):
    """Deliver each message to ``client_app`` for its node, one after the other.

    Node ids are ``1000 + partition_id`` (not 0..N-1, so code cannot confuse the two).
    ``drop`` decides, per message, that no reply comes back (a time-out).
    """

    def __init__(self, client_app: ClientApp | Callable[[Message, Context], Message],
                 num_nodes: int, run_config: dict | None = None,
                 drop: Callable[[Message], bool] | None = None, run_id: int = 1) -> None:
        self.client_app = client_app
        self.drop = drop or (lambda message: False)
        self._run = Run.create_empty(run_id=run_id)
        self._ids = itertools.count(1)
        set_task_identity(run_id)  # as Flower's runtimes do before the ServerApp starts
        self.contexts = {
            1000 + pid: Context(run_id=run_id, node_id=1000 + pid,
                                node_config={"partition-id": pid, "num-partitions": num_nodes},
                                state=RecordDict(), run_config=dict(run_config or {}))
            for pid in range(num_nodes)
        }
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = f"m{next(self._ids)}"
            set_message_id(message, message_id)
            ids.append(message_id)
            if not self.drop(message):
                self._replies[message_id] = self._deliver(message)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, message: Message) -> Message:
        context = self.contexts[message.metadata.dst_node_id]
        try:
            return self.client_app(message, context)
        except Exception as exc:  # noqa: BLE001 - a device's failure becomes an error reply
            error = Error(code=ERROR_CODE_CLIENT_EXCEPTION, reason=f"{type(exc).__name__}: {exc}")
            return Message(error, reply_to=message)

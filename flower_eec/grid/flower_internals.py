"""The only place that touches Flower below its public API, for running Flower code in-process.

Flower 1.41/1.42 offer no public way to do two things an in-process grid needs:

* ``Message(content, dst_node_id=..., message_type=...)`` reads the process's task identity
  (``flwr.supercore.task_identity.TaskIdentity``), which Flower's runtimes set before they start
  an app. Outside a runtime (``LocalGrid``, unit tests that build messages) someone must set it.
* A message id is assigned by the SuperLink; ``Metadata.message_id`` has no setter. Flower's own
  in-memory grid writes the slot behind the property, as ``set_message_id`` does.

Both are pinned by ``tests/test_flower_api.py``: a Flower release that changes them fails
there, not in a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flwr.app import Message
from flwr.supercore.task_identity import TaskIdentity


def set_task_identity(run_id: int, task_id: int = 1, node_id: int = 0) -> None:
    """Make this process build messages as task ``task_id`` of run ``run_id`` on ``node_id``
    (0: the server side), as Flower's runtimes do before an app starts."""
    TaskIdentity.run_id = run_id
    TaskIdentity.task_id = task_id
    TaskIdentity.node_id = node_id


@contextmanager
def task_identity(run_id: int = 1, task_id: int = 1, node_id: int = 0) -> Iterator[None]:
    """``set_task_identity`` for the ``with`` block; the previous identity (set or not) after."""
    # The properties raise while unset, so the saved state is read from the slots behind them.
    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    set_task_identity(run_id, task_id, node_id)
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved


def set_message_id(message: Message, message_id: str) -> None:
    """Give ``message`` the id a SuperLink would, so that replies name it in
    ``reply_to_message_id``."""
    message.metadata.__dict__["_message_id"] = message_id

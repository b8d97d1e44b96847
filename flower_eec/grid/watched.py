"""A Grid whose exchanges show their replies arriving ("train: devices replied 3/20") while a
progress reporter is on (``flower_eec.progress``); otherwise every call is passed on unchanged.

To show replies as they come, ``send_and_receive`` does what Flower's own grids do inside it,
push the messages, then pull the replies until all are in or ``timeout`` has passed, with a
progress update after every pull.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message

from flower_eec import progress
from flower_eec.grid.forwarding import ForwardingGrid

PULL_INTERVAL_S = 0.1  # as Flower's in-memory grid (the Simulation Engine's)


class WatchedGrid(ForwardingGrid):
    """Forwards to ``self.grid``; ``send_and_receive`` reports its replies while progress is on."""

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        if not progress.active():
            return self.grid.send_and_receive(messages, timeout=timeout)
        messages = list(messages)
        if not messages:
            return []
        kind = messages[0].metadata.message_type
        waiting = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        with progress.task(f"{kind}: devices replied", len(waiting)) as update:
            while True:
                got = list(self.grid.pull_messages(waiting))
                replies += got
                waiting -= {reply.metadata.reply_to_message_id for reply in got}
                update(len(replies))
                if not waiting or (deadline is not None and time.monotonic() >= deadline):
                    return replies
                time.sleep(PULL_INTERVAL_S)

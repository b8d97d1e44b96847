"""Progress bars in a terminal (rich), the reporter ``flower-eec run`` installs when stderr is one.

While the bars are live, rich routes what is written to stderr and stdout above them; Flower's
console log handler keeps the stream it was created with, so it is pointed at rich's for that
time (else its lines would tear through the bars) and given its own back afterwards.
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
)
from rich.text import Text

from flower_eec.progress import Reporter, eta_text

FLOWER_LOGGER = "flwr"


class Timing(ProgressColumn):
    """A task's elapsed time and ETA as ``progress.eta_text`` writes them: the mean pace of the
    steps done since the task began (rich's own ETA waits for two steps, here the rounds)."""

    def render(self, task: Task) -> Text:
        done = int(task.completed) - int(task.fields.get("done_before", 0))
        remaining = int((task.total or 0) - task.completed)
        return Text(eta_text(task.elapsed or 0.0, done, remaining), style="progress.elapsed")


class Bars(Reporter):
    """One bar per task: description, bar, done/total, elapsed time and ETA. Use as a context
    manager (the bars are live inside it) together with ``progress.reporting``."""

    enabled = True

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Timing(),
            console=console or Console(stderr=True), transient=True, refresh_per_second=4)
        self._streams: list[tuple[logging.StreamHandler, object]] = []  # type: ignore[type-arg]

    def begin(self, description: str, total: int, done: int = 0) -> int:
        return int(self.progress.add_task(description, total=total, completed=done,
                                          done_before=done))

    def update(self, task: int, done: int) -> None:
        self.progress.update(TaskID(task), completed=done)

    def end(self, task: int) -> None:
        self.progress.remove_task(TaskID(task))

    def __enter__(self) -> Bars:
        before = sys.stderr
        self.progress.start()
        if sys.stderr is not before:  # rich redirected stderr: Flower's lines go there too
            for handler in logging.getLogger(FLOWER_LOGGER).handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is before:
                    self._streams.append((handler, handler.setStream(sys.stderr)))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        for handler, stream in self._streams:
            handler.setStream(stream)
        self._streams = []
        self.progress.stop()

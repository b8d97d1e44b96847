"""Progress of long work for whoever watches a run: the rounds, with elapsed time and an ETA,
and the passes inside a round (replies arriving, batches done).

There is one reporter per process. It is silent until a program installs another one
(``flower-eec run`` installs terminal bars when stderr is a terminal), so users of the
strategies as a library see nothing new. Library code reports through ``track``, ``task`` and
``rounds``; while the reporter is silent they only hand the items on. ``rounds`` also logs one
line per round through Flower's logger, with the elapsed time and an ETA from the second round
on: that line is what a run shows where there is no terminal (``flwr run``, a pipe).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from logging import INFO
from time import monotonic
from typing import TypeVar

from flwr.common.logger import log

T = TypeVar("T")


class Reporter:
    """The silent reporter (the default). A reporter that draws sets ``enabled`` and overrides
    the three methods; a task is whatever id ``begin`` returns."""

    enabled = False

    def begin(self, description: str, total: int, done: int = 0) -> int:
        """Start showing a task of ``total`` steps, ``done`` of them already done."""
        return 0

    def update(self, task: int, done: int) -> None:
        """``done`` steps of ``task`` are done."""

    def end(self, task: int) -> None:
        """Stop showing ``task``."""


_reporter: Reporter = Reporter()


def current() -> Reporter:
    """The process's reporter."""
    return _reporter


def active() -> bool:
    """Whether the process's reporter shows anything."""
    return _reporter.enabled


@contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Use ``reporter`` for the process while the block runs, then the previous one again."""
    global _reporter
    previous, _reporter = _reporter, reporter
    try:
        yield reporter
    finally:
        _reporter = previous


@contextmanager
def task(description: str, total: int, done: int = 0) -> Iterator[Callable[[int], None]]:
    """Show a task while the block runs; the block calls what it gets with the steps done."""
    reporter = _reporter
    if not reporter.enabled:
        yield lambda steps: None
        return
    handle = reporter.begin(description, total, done)
    try:
        yield lambda steps: reporter.update(handle, steps)
    finally:
        reporter.end(handle)


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Yield ``items``; while a reporter is on, show ``description`` with the items done of
    ``total``. E.g. ``for batch in track(batches, len(batches), "distillation"): ...``"""
    if not _reporter.enabled:
        yield from items
        return
    with task(description, total) as update:
        for done, item in enumerate(items, 1):
            yield item
            update(done)


def rounds(first: int, last: int, description: str = "rounds") -> Iterator[int]:
    """The rounds ``first .. last``, each logged as it starts (``[ROUND r/N]``, then the
    elapsed time and an ETA once a round of this process has ended) and shown as a bar."""
    started = monotonic()
    with task(description, last, first - 1) as update:
        for server_round in range(first, last + 1):
            done, left = server_round - first, last - server_round + 1
            timing = eta_text(monotonic() - started, done, left) if done else ""
            log(INFO, "[ROUND %d/%d]%s", server_round, last, f" {timing}" if timing else "")
            yield server_round
            update(server_round)


def eta_seconds(elapsed: float, done: int, remaining: int) -> float | None:
    """Seconds left for ``remaining`` steps when ``done`` steps took ``elapsed`` seconds (None
    before the first step is done)."""
    if done <= 0:
        return None
    return elapsed / done * max(remaining, 0)


def duration(seconds: float) -> str:
    """``42s``, ``3m 05s``, ``2h 07m``."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def eta_text(elapsed: float, done: int, remaining: int) -> str:
    """``elapsed 1m 05s, ETA 2m 10s`` (only the elapsed time while nothing is done)."""
    eta = eta_seconds(elapsed, done, remaining)
    text = f"elapsed {duration(elapsed)}"
    return text if eta is None else f"{text}, ETA {duration(eta)}"

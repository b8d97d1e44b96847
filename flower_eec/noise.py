"""What a run keeps off the console: known third-party messages, each named with where it comes
from and why hiding it loses nothing, and the traceback of our own errors (their message says
it all). Everything shows when asked for (``flower-eec run --verbose``, Flower's own verbose
logging, or ``FLOWER_EEC_VERBOSE=1``).

Log lines are matched by Flower's logger and the start of their text, Python warnings by their
category, the module that issues them and the start of their text, so that anything else, and
any other wording of the same thing, still shows.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flwr.app import Context, Message
from flwr.common.logger import ConsoleHandler

from flower_eec.errors import FlowerEECError

FLOWER_LOGGER = "flwr"
VERBOSE_ENV = "FLOWER_EEC_VERBOSE"

# Lines of Flower's logger that every run printed and that say nothing about the run.
FLOWER_LINES = (
    # `flower-eec run` drives Flower's Simulation Engine through `flwr.simulation.run_simulation`
    # (the only way to start it from Python with our apps bound to a resolved config); Flower
    # warns on every call that this function is deprecated in favour of `flwr run`, which the
    # README documents as well. Nothing for the user to do.
    r"DEPRECATED FEATURE: The `run_simulation` function is deprecated",
    # Every Ray actor logs this as the simulation shuts it down at the end of a run: routine.
    r"Manually terminating ClientAppActor",
)
# Flower's strategies log these on every configure and aggregate call. Nested as edge tiers
# they repeat once per edge without saying which edge; the run's own line per round counts
# the devices and failures. Lines that report failures still show.
STRATEGY_CHATTER = (
    r"(configure_train|configure_evaluate): Sampled \d+ nodes \(out of \d+\)$",
    r"(aggregate_train|aggregate_evaluate): Received \d+ results and 0 failures$",
)
# Python warnings: (category, issuing module, start of the text).
WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    # Ray 2.x warns on every `ray.init` that a future version will stop setting
    # CUDA_VISIBLE_DEVICES="" for actors that ask for no GPU. Our ClientApp actors ask for
    # `simulation.client_gpus`; the behaviour we rely on is today's, and the warning (a "Tip")
    # asks nothing of the user. The environment variable it mentions would change behaviour,
    # so it is filtered rather than set.
    (FutureWarning, r"ray\.", r"Tip: In future versions of Ray, Ray will no longer override"),
)


class LineFilter(logging.Filter):
    """Drops the records whose message starts with one of ``patterns`` (regular expressions)."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record is shown as logging would
            return True
        return not any(p.match(message) for p in self.patterns)


class OwnErrorsPlain(logging.Filter):
    """Records that carry one of flower-eec's own errors (``FlowerEECError``) lose their
    traceback, and the error joins their line: its message says what to change, while the
    traceback (Flower logs a run's exception with one, a page of Flower's frames and ours)
    only hides it. Any other exception keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, FlowerEECError):
            record.msg = f"{record.getMessage()}: {type(error).__name__}: {error}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


_run_filters = (LineFilter(FLOWER_LINES + STRATEGY_CHATTER), OwnErrorsPlain())


def show_everything() -> bool:
    """Whether nothing is to be hidden: ``FLOWER_EEC_VERBOSE=1`` (``flower-eec run --verbose``
    sets it, and Ray's actors inherit it) or Flower's console logging at DEBUG (Flower's
    verbose mode, ``flwr run`` with ``verbose=true`` in the federation config)."""
    if os.environ.get(VERBOSE_ENV) == "1":
        return True
    return any(isinstance(h, ConsoleHandler) and logging.NOTSET < h.level <= logging.DEBUG
               for h in logging.getLogger(FLOWER_LOGGER).handlers)


def hide() -> None:
    """Hide the known noise in this process from now on (nothing when ``show_everything``)."""
    logger = logging.getLogger(FLOWER_LOGGER)
    if _run_filters[0] in logger.filters or show_everything():
        return
    for line_filter in _run_filters:
        logger.addFilter(line_filter)
    for category, module, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def unhide() -> None:
    """Undo ``hide``'s filter of Flower's lines (warning filters stay: tests restore them with
    ``warnings.catch_warnings``)."""
    for line_filter in _run_filters:
        logging.getLogger(FLOWER_LOGGER).removeFilter(line_filter)


def hiding_mod(msg: Message, context: Context,
               call_next: Callable[[Message, Context], Message]) -> Message:
    """A ClientApp mod that calls ``hide`` in the process running the device: Ray's actors are
    processes of their own, and Flower logs there as it shuts them down."""
    hide()
    return call_next(msg, context)


@contextmanager
def strategy_chatter_hidden() -> Iterator[None]:
    """Hide Flower's per-call strategy lines (``STRATEGY_CHATTER``) while the block runs: what
    ``Hierarchical`` wraps around its edge strategies' calls."""
    if show_everything():
        yield
        return
    logger, line_filter = logging.getLogger(FLOWER_LOGGER), LineFilter(STRATEGY_CHATTER)
    logger.addFilter(line_filter)
    try:
        yield
    finally:
        logger.removeFilter(line_filter)

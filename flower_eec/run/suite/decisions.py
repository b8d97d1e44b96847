"""What the suite does with a run's folder: skip it, resume it, start it, or stop at it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flower_eec.run.config import unread_sections
from flower_eec.run.results import LOCK, live_holder
from flower_eec.run.suite.spec import PlannedRun, flatten

# the files of a run's folder
RESULTS = "results.json"
CHECKPOINT = "checkpoint.pt"  # flower_eec.run.checkpoint.CHECKPOINT (that module imports torch)
RUN_RECORD = "suite_run.json"  # the suite's record of the run's processes (peak memory, ...)
RUN_LOG = "suite_run.log"  # their output
# keys that may differ between a run's saved config and the suite's without making it stale
# (where the run is, how many rounds: decided apart; and what does not change its numbers)
UNCOMPARED = ("out", "resume", "overwrite", "data.root", "train.rounds", "data.verify",
              "checkpoint.every")

Action = Literal["skip", "resume", "start", "stale", "busy"]


@dataclass(frozen=True)
class Decision:
    """``skip`` (done), ``resume`` (from the checkpoint of round ``from_round - 1``), ``start``
    (afresh, replacing whatever partial files are there), ``stale`` (done or begun with another
    config or more rounds) or ``busy`` (a live run writes there)."""

    action: Action
    reason: str
    from_round: int = 1


def config_differences(saved: Mapping[str, Any], planned: Mapping[str, Any],
                       ignore: Sequence[str] = UNCOMPARED) -> list[str]:
    """The dotted keys present in both configs whose values differ (``ignore``'s keys and
    sections aside), each as ``key: saved -> planned``. Keys only one of them has are not
    compared: a key added to the schema later does not make older runs stale."""
    left, right = flatten(saved), flatten(planned)
    return [f"{key}: {left[key]!r} -> {right[key]!r}" for key in sorted(set(left) & set(right))
            if not _ignored(key, ignore) and left[key] != right[key]]


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    """Whether dotted ``key`` is one of ``ignore`` or lies in a section named there."""
    return any(key == name or key.startswith(f"{name}.") for name in ignore)


def checkpoint_round(completed: int, every: int, planned: int) -> int:
    """The round of the last checkpoint of a run that recorded ``completed`` rounds of
    ``planned``, saving one every ``every`` rounds and after its last (0: none)."""
    if every <= 0:
        return 0
    return completed if completed >= planned else completed - completed % every


def decide(results: Mapping[str, Any] | None, planned: PlannedRun, *,
           has_checkpoint: bool, busy: bool = False) -> Decision:
    """What the suite does with ``planned``'s folder, given its ``results.json`` (None when
    there is none), whether it holds a checkpoint and whether a live run holds its lock."""
    if busy:
        return Decision("busy", "a live run is writing into its folder")
    if results is None:
        return Decision("start", "no results yet")
    config = results.get("config") or {}
    # another method's knobs (every config holds them all) do not change this run's numbers
    differs = config_differences(config, planned.config,
                                 (*UNCOMPARED, *unread_sections(planned.config["method"])))
    if differs:
        more = f" and {len(differs) - 3} more" if len(differs) > 3 else ""
        return Decision("stale", f"its config differs: {'; '.join(differs[:3])}{more}")
    done, status = int(results.get("completed_rounds", 0)), results.get("status", "?")
    if done > planned.rounds:
        return Decision("stale", f"it has {done} rounds, the suite asks for {planned.rounds}")
    if status == "finished" and done == planned.rounds:
        return Decision("skip", f"finished, {done} rounds")
    so_far = f"{status} after {done} of {planned.rounds} rounds"
    every = int(config.get("checkpoint", {}).get("every", 1))
    saved = checkpoint_round(done, every, int(results.get("planned_rounds", planned.rounds)))
    if has_checkpoint and 0 < saved < planned.rounds:
        return Decision("resume", so_far, saved + 1)
    return Decision("start", f"{so_far}, no checkpoint to go on from")


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's mapping, or None when it is missing or unreadable."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def decide_folder(planned: PlannedRun) -> Decision:
    """``decide`` on what ``planned``'s folder holds now."""
    return decide(read_json(planned.folder / RESULTS), planned,
                  has_checkpoint=(planned.folder / CHECKPOINT).is_file(),
                  busy=live_holder(planned.folder / LOCK) is not None)

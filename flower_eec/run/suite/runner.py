"""Running what is left of a suite: one run after the other, each in a process of its own."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flower_eec.run.results import atomic_write
from flower_eec.run.suite.decisions import (
    RESULTS,
    RUN_LOG,
    RUN_RECORD,
    Decision,
    decide_folder,
    read_json,
)
from flower_eec.run.suite.memory import TreeSampler
from flower_eec.run.suite.report import write_report
from flower_eec.run.suite.spec import PlannedRun, Suite, SuiteError, plan

STOP_WAIT_S = 10.0  # after Ctrl-C, how long a run may take to stop before it is killed


@dataclass(frozen=True)
class Outcome:
    """How one run's process ended: exit status, seconds, peak memory of its process tree
    (sum of resident set sizes; and of proportional set sizes, which count a shared page
    once), and whether the suite was interrupted (Ctrl-C) while it ran."""

    returncode: int
    wall_s: float
    peak_rss_bytes: int
    peak_pss_bytes: int = 0
    interrupted: bool = False


Launcher = Callable[[PlannedRun, Sequence[str], Path], Outcome]


def command(planned: PlannedRun, decision: Decision) -> list[str]:
    """The command line of a run: ``flower-eec run`` in a fresh interpreter."""
    cli = [sys.executable, "-m", "flower_eec.run.cli", "run"]
    if decision.action == "resume":  # the saved config, with the suite's overrides and rounds
        rounds = () if any(o.startswith("train.rounds=") for o in planned.overrides) else (
            f"train.rounds={planned.rounds}",)
        return [*cli, "--resume", str(planned.folder), *rounds, *planned.overrides]
    return [*cli, planned.entry.method, *planned.overrides, "--out", str(planned.folder),
            "--overwrite"]


def launch(planned: PlannedRun, argv: Sequence[str], log: Path) -> Outcome:
    """``run_sampled`` for one planned run of the suite."""
    return run_sampled(planned.label, argv, log)


def run_sampled(label: str, argv: Sequence[str], log: Path,
                env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Outcome:
    """Run ``argv`` in a session of its own (in ``cwd``, with ``env``, default this process's),
    its output appended to ``log`` under a ``label`` line, sampling the memory of its process
    tree. On Ctrl-C the run gets SIGINT (as in a terminal) and ``STOP_WAIT_S`` seconds to
    record it, then its process group is killed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    interrupted = False
    # no telemetry unless asked for
    environment = {"FLWR_TELEMETRY_ENABLED": "0", **(os.environ if env is None else env)}
    with log.open("ab") as handle:
        handle.write(f"\n# {datetime.now().isoformat(timespec='seconds')} "
                     f"{label}\n$ {shlex.join(argv)}\n".encode())
        handle.flush()
        process = subprocess.Popen(list(argv), stdout=handle, stderr=subprocess.STDOUT,
                                   env=environment, cwd=cwd, start_new_session=True)
        sampler = TreeSampler(process.pid)
        sampler.start()
        try:
            returncode = process.wait()
        except KeyboardInterrupt:
            interrupted = True
            returncode = _stop(process)
        finally:
            sampler.stop()
    return Outcome(returncode, round(time.perf_counter() - started, 3), sampler.peak_rss,
                   sampler.peak_pss, interrupted)


def _stop(process: subprocess.Popen[bytes]) -> int:
    """SIGINT to the run's process, then SIGKILL to its process group (Ray's processes too)
    once it has ended or ``STOP_WAIT_S`` seconds have passed. A run under Ray seldom ends on
    SIGINT: killed, its folder says ``running`` and the next pass resumes it."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=STOP_WAIT_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):  # a second Ctrl-C: at once
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone with it
    return process.wait()


def record_attempt(planned: PlannedRun, decision: Decision, argv: Sequence[str],
                   outcome: Outcome) -> None:
    """Add an attempt to ``suite_run.json`` in the run's folder (a started run begins a new
    record): ``attempts`` (each: action, from_round, command, returncode, wall_s,
    peak_rss_bytes, peak_pss_bytes, interrupted, ended), and over them the peak memory, the
    summed wall time and the last exit status."""
    path = planned.folder / RUN_RECORD
    earlier = [] if decision.action == "start" else (read_json(path) or {}).get("attempts", [])
    attempts = [*earlier, {
        "action": decision.action, "from_round": decision.from_round, "command": list(argv),
        "returncode": outcome.returncode, "wall_s": outcome.wall_s,
        "peak_rss_bytes": outcome.peak_rss_bytes, "peak_pss_bytes": outcome.peak_pss_bytes,
        "interrupted": outcome.interrupted,
        "ended": datetime.now().isoformat(timespec="seconds")}]
    record = {
        "entry": planned.entry.name, "method": planned.entry.method, "seed": planned.seed,
        "peak_rss_bytes": max(a["peak_rss_bytes"] for a in attempts),
        "peak_pss_bytes": max(a["peak_pss_bytes"] for a in attempts),
        "wall_s": round(sum(a["wall_s"] for a in attempts), 3),
        "returncode": outcome.returncode, "log": RUN_LOG, "attempts": attempts}
    planned.folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(record, indent=1) + "\n").encode())


def _without_data(runs: Sequence[PlannedRun]) -> list[str]:
    """The entries that read a real dataset but have no data.root (nor $FLOWER_EEC_DATA)."""
    if os.environ.get("FLOWER_EEC_DATA"):
        return []
    return sorted({r.entry.name for r in runs
                   if r.config["data"]["dataset"] != "synthetic" and not r.config["data"]["root"]})


def run_suite(suite: Suite, *, launcher: Launcher = launch, only: Sequence[str] = (),
              restart_stale: bool = False, dry_run: bool = False,
              echo: Callable[[str], None] = print) -> int:
    """Run what is left of ``suite`` (``only``: these entries), one run after the other, then
    write the report. Returns 0 when every run asked for has finished, 1 when some have not
    (a run that failed or was interrupted), 2 when nothing ran (stale runs, missing data)."""
    unknown = sorted(set(only) - {e.name for e in suite.entries})
    if unknown:
        raise SuiteError(f"--only: no entry named {', '.join(unknown)} in suite '{suite.name}' "
                         f"(entries: {', '.join(e.name for e in suite.entries)})")
    runs = plan(suite)
    chosen = [r for r in runs if not only or r.entry.name in only]
    stale = [(r, d) for r in chosen if (d := decide_folder(r)).action == "stale"]
    if stale and not restart_stale:
        for r, d in stale:
            echo(f"stale: {r.folder}: {d.reason}")
        echo("Nothing was run: move those folders away (or choose another --out), or give "
             "--restart-stale to run them again from round 1.")
        return 2
    without_data = _without_data(chosen)
    if without_data and not dry_run:
        echo(f"Entries {', '.join(without_data)} read a real dataset: give data.root=PATH (or "
             "--data-root PATH) or set FLOWER_EEC_DATA. Nothing was run.")
        return 2
    for index, planned in enumerate(chosen, 1):
        decision = decide_folder(planned)  # afresh: the runs before may have taken hours
        if decision.action == "stale":
            decision = Decision("start", f"restarted ({decision.reason})")
        head = f"[{index}/{len(chosen)}] {planned.label}: {decision.action}"
        if decision.action in ("skip", "busy"):
            echo(f"{head} ({decision.reason})")
            continue
        argv = command(planned, decision)
        start = f" from round {decision.from_round}" if decision.action == "resume" else ""
        echo(f"{head}{start} ({decision.reason})")
        if dry_run:
            echo(f"  $ {shlex.join(argv)}")
            continue
        outcome = launcher(planned, argv, planned.folder / RUN_LOG)
        record_attempt(planned, decision, argv, outcome)
        results = read_json(planned.folder / RESULTS) or {}
        echo(f"  -> {results.get('status', 'no results')}, "
             f"{results.get('completed_rounds', 0)} of {planned.rounds} rounds, exit "
             f"{outcome.returncode}, {outcome.wall_s:.0f} s, peak memory of the process tree "
             f"{outcome.peak_rss_bytes / 2**20:,.0f} MiB"
             + ("" if outcome.returncode == 0 else f" (log: {planned.folder / RUN_LOG})"))
        if outcome.interrupted:
            echo("Interrupted: the runs so far are kept; run the suite again to go on.")
            break
    if dry_run:
        return 0
    write_report(suite, runs, echo)
    return 0 if all(decide_folder(r).action == "skip" for r in chosen) else 1

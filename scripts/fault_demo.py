"""Kill a real run and resume it: does the resumed run end as the uninterrupted one would?

Runs ``flower-eec run <method> profile=smoke`` on Flower's Simulation Engine (Ray) three ways,
each in its own process and results folder:

``whole``     the uninterrupted run of ``--rounds`` rounds;
``killed``    the same run, stopped with SIGKILL (``kill -9``, nothing can be saved at that
              moment) together with every process it started, once it has recorded round
              ``--kill-after``;
``resumed``   ``flower-eec run --resume`` of the killed run's folder.

It then prints, per round, the cloud's accuracy and loss and the devices' mean local accuracy of
the whole and the killed-and-resumed run, whether each round is identical, and what the killed
run's folder said when it died. Writes ``benchmarks/results/fault_demo_<method>.json``.

Run (from the repository root)::

    FLWR_TELEMETRY_ENABLED=0 python scripts/fault_demo.py                  # FedAgg, 4 rounds
    FLWR_TELEMETRY_ENABLED=0 python scripts/fault_demo.py --method hierfavg
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flower_eec.run.cli", "run", *args]


def children_of(pid: int) -> list[int]:
    """Every process started, directly or not, by ``pid`` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def completed(out: Path) -> int:
    try:
        return int(json.loads((out / "results.json").read_text())["completed_rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def kill_after(args: list[str], out: Path, rounds: int, limit_s: float = 900) -> float:
    """Start the run, SIGKILL it and its processes once ``rounds`` are recorded; seconds run."""
    started = time.monotonic()
    run = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while run.poll() is None and completed(out) < rounds:
            if time.monotonic() - started > limit_s:
                raise TimeoutError(f"round {rounds} not recorded within {limit_s:g} s")
            time.sleep(0.1)
    finally:
        started_by_run = children_of(run.pid)
        run.kill()
        for pid in started_by_run:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        run.wait()
    if run.returncode != -signal.SIGKILL:
        raise RuntimeError(f"the run ended by itself (exit {run.returncode}) before the kill")
    return time.monotonic() - started


def rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"round": r["round"], "cloud_accuracy": r["cloud"].get("accuracy"),
             "cloud_loss": r["cloud"].get("loss"),
             "device_accuracy": r["devices"].get("mean_local_accuracy")}
            for r in summary["rounds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="fedagg")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--kill-after", type=int, default=2)
    options = parser.parse_args()
    settings = [options.method, "profile=smoke", f"train.rounds={options.rounds}"]
    with tempfile.TemporaryDirectory() as folder:
        whole_out, cut_out = Path(folder) / "whole", Path(folder) / "killed"
        subprocess.run(command(*settings, "--out", str(whole_out)), cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed_s = kill_after(command(*settings, "--out", str(cut_out)), cut_out,
                              options.kill_after)
        at_kill = json.loads((cut_out / "results.json").read_text())
        subprocess.run(command("--resume", str(cut_out)), cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        whole = json.loads((whole_out / "results.json").read_text())
        resumed = json.loads((cut_out / "results.json").read_text())
    report = {
        "method": options.method, "rounds": options.rounds,
        "killed_after_s": round(killed_s, 1),
        "at_kill": {"status": at_kill["status"], "completed_rounds": at_kill["completed_rounds"]},
        "resumed": {"status": resumed["status"], "completed_rounds": resumed["completed_rounds"],
                    "rounds": [r["round"] for r in resumed["rounds"]]},
        "whole": rows(whole), "killed_and_resumed": rows(resumed),
    }
    report["identical_rounds"] = [a == b for a, b in zip(report["whole"],
                                                         report["killed_and_resumed"],
                                                         strict=False)]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"fault_demo_{options.method}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{options.method}, profile smoke, {options.rounds} rounds on Ray; SIGKILL once round "
          f"{options.kill_after} was recorded ({killed_s:.1f} s in): the folder said "
          f"status={at_kill['status']!r}, completed_rounds={at_kill['completed_rounds']}")
    print(f"resumed: status={resumed['status']!r}, rounds {report['resumed']['rounds']}")
    print("round | cloud acc whole / resumed | cloud loss whole / resumed | device acc "
          "whole / resumed | identical")
    for a, b, same in zip(report["whole"], report["killed_and_resumed"],
                          report["identical_rounds"], strict=False):
        print(f"{a['round']:5d} | {a['cloud_accuracy']} / {b['cloud_accuracy']} | "
              f"{a['cloud_loss']} / {b['cloud_loss']} | {a['device_accuracy']} / "
              f"{b['device_accuracy']} | {same}")
    print(f"written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

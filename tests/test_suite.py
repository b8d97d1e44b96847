"""The benchmark suite runner (flower_eec.run.suite): its statistics on hand-made results with
known answers, its skip / resume / start decisions through a fake launcher, the memory of a
process tree, and one real run under Ray that resumes an interrupted run."""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from flower_eec.app.client_app import app
from flower_eec.grid.local import LocalGrid
from flower_eec.run import experiment
from flower_eec.run.config import Config, parse_overrides, resolve, to_json
from flower_eec.run.suite import decisions, memory, report, runner, spec, stats
from flower_eec.run.suite.decisions import Decision
from flower_eec.run.suite.runner import Outcome
from flower_eec.run.suite.spec import PlannedRun, Suite

SUITES = Path(__file__).resolve().parents[1] / "benchmarks" / "suites"
MiB = 2**20


# --- hand-made results ---------------------------------------------------------------------------

# cloud accuracy per round, per (entry, seed): the known answers below are computed from these
CURVES = {("hierfavg", 0): [0.10, 0.20, 0.30], ("hierfavg", 1): [0.20, 0.26, 0.24],
          ("fedavg", 0): [0.05, 0.10, 0.15], ("fedavg", 1): [0.05, 0.12, 0.20]}
WALL = [10.0, 2.0, 4.0]  # seconds of rounds 1, 2, 3 (round 1: Ray's start-up)
BYTES = [5000, 1000, 3000]  # device_to_edge bytes of rounds 1, 2, 3


def round_record(round_: int, accuracy: float | None, wall_s: float) -> dict[str, Any]:
    return {"round": round_, "wall_s": wall_s,
            "cloud": {} if accuracy is None else {"accuracy": accuracy, "loss": 1.0},
            "comm_bytes": {"device_to_edge": BYTES[(round_ - 1) % len(BYTES)],
                           "edge_to_device": 0},
            "timing": {"exchange_s": 0.0, "server_s": 0.0, "device_compute_s": 0.0}}


def results_of(config: dict[str, Any], accuracies: list[float], status: str = "finished",
               wall: list[float] = WALL) -> dict[str, Any]:
    rounds = [round_record(i + 1, a, wall[i]) for i, a in enumerate(accuracies)]
    return {"method": config["method"], "status": status, "completed_rounds": len(rounds),
            "planned_rounds": config["train"]["rounds"], "config": config, "rounds": rounds}


def test_mean_and_sample_sd_of_known_numbers() -> None:
    mean, sd = stats.mean_sd([2, 4, 4, 4, 5, 5, 7, 9])
    assert mean == 5.0
    assert sd == pytest.approx(math.sqrt(32 / 7))  # sum of squares 32, n - 1 = 7
    assert stats.mean_sd([0.3]) == (0.3, None)
    assert stats.mean_sd([]) == (None, None)
    assert stats.stat([1.0, None, 3.0]) == {"mean": 2.0, "sd": pytest.approx(math.sqrt(2)),
                                             "n": 2}


def test_rounds_to_a_threshold_on_a_made_up_curve() -> None:
    results = {"rounds": [round_record(1, 0.10, 1), round_record(2, None, 1),  # not evaluated
                          round_record(3, 0.26, 1), round_record(4, 0.24, 1),
                          round_record(5, 0.31, 1)]}
    curve = stats.cloud_curve(results)
    assert curve == [(1, 0.10), (3, 0.26), (4, 0.24), (5, 0.31)]
    assert stats.rounds_to(curve, 0.25) == 3
    assert stats.rounds_to(curve, 0.30) == 5
    assert stats.rounds_to(curve, 0.26) == 3  # "at least": equal counts
    assert stats.rounds_to(curve, 0.50) is None  # never reached


def test_an_entry_row_from_two_seeds_one_of_which_never_reaches_30() -> None:
    config = resolve("hierfavg", {"train": {"rounds": 3}})
    entry = spec.Entry("hierfavg", "hierfavg")
    metrics = []
    for seed in (0, 1):
        c = {**bench_config(config), "seed": seed}
        record = {"peak_rss_bytes": (seed + 1) * 100 * MiB, "attempts": []}
        metrics.append(stats.run_metrics(results_of(c, CURVES["hierfavg", seed]), record))
    row = stats.entry_row(entry, metrics, planned_seeds=2)
    assert row["seeds"] == [0, 1]
    assert row["final"]["mean"] == pytest.approx(0.27)  # 0.30 and 0.24
    assert row["final"]["sd"] == pytest.approx(math.sqrt(2 * 0.03**2))
    assert row["best"]["mean"] == pytest.approx(0.28)  # 0.30 and 0.26
    assert row["last5"]["mean"] == pytest.approx((0.20 + 0.70 / 3) / 2)  # 3 rounds: all of them
    assert row["reach"]["25%"] == {"mean": 2.5, "sd": pytest.approx(math.sqrt(0.5)),
                                   "n": 2, "reached": 2, "of": 2}  # rounds 3 and 2
    assert row["reach"]["30%"] == {"mean": 3.0, "sd": None, "n": 1, "reached": 1, "of": 2}
    # from round 2 on: (1000 + 3000) / 2; round 1 apart
    assert row["bytes_per_round"]["device_to_edge"]["mean"] == 2000
    assert row["bytes_round1"]["device_to_edge"]["mean"] == 5000
    assert row["s_per_round"] == {"mean": 3.0, "sd": 0.0, "n": 2}  # (2 + 4) / 2, round 1 out
    assert row["peak_rss_bytes"]["mean"] == 150 * MiB
    assert row["peak_rss_bytes"]["sd"] == pytest.approx(math.sqrt(2 * (50 * MiB) ** 2))
    assert [p["round"] for p in row["curve"]] == [1, 2, 3]
    assert row["curve"][1]["mean"] == pytest.approx(0.23)
    assert row["curve"][1]["sd"] == pytest.approx(math.sqrt(2 * 0.03**2))


def test_the_first_round_of_a_resumed_process_is_left_out_of_the_seconds_per_round() -> None:
    config = bench_config(resolve("hierfavg", {"train": {"rounds": 3}}))
    record = {"attempts": [{"action": "start"}, {"action": "resume", "from_round": 3}]}
    metrics = stats.run_metrics(results_of(config, [0.1, 0.2, 0.3]), record)
    assert metrics["s_per_round"] == 2.0  # round 2 only: 1 and 3 began a process
    assert metrics["wall_s"] == 16.0


def test_mean_curve_over_seeds_with_rounds_some_seeds_lack() -> None:
    curve = stats.mean_curve([[(1, 0.1), (2, 0.3)], [(1, 0.3)]])
    assert curve == [{"round": 1, "mean": pytest.approx(0.2), "sd": pytest.approx(math.sqrt(0.02)),
                      "n": 2},
                     {"round": 2, "mean": 0.3, "sd": None, "n": 1}]


def bench_config(config: Config) -> dict[str, Any]:
    from flower_eec.run.config import to_dict

    return to_dict(config)


def test_the_figure_has_whole_rounds_on_its_x_axis() -> None:
    row = {"entry": "a", "seeds": [0, 1], "curve": [{"round": r, "mean": 0.1 * r, "sd": 0.01}
                                                     for r in (1, 2, 3)]}
    fig = report.figure([row], "three rounds")
    fig.canvas.draw()  # the ticks are placed when drawn
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if low <= t <= high]
    assert len(ticks) >= 2 and all(t == int(t) for t in ticks)


# --- the suite file ------------------------------------------------------------------------------


def test_suite_files_are_checked_before_anything_runs(tmp_path: Path) -> None:
    base = {"profile": "smoke", "seeds": [0], "entries": [{"name": "a", "method": "hierfavg"}]}
    suite = spec.parse_suite({**base, "overrides": {"topology": {"edge_outages": [[1, 2, 3]]},
                                                     "eval.every": 1, "data.verify": False}},
                              "s.yaml")
    assert suite.overrides == ("topology.edge_outages=[[1, 2, 3]]", "eval.every=1",
                               "data.verify=false")
    assert suite.out == Path("results/suite-s")
    assert suite.report_stem == Path("results/suite-s/suite")
    named = spec.parse_suite({**base, "report": "r/suite_s"}, "s.yaml")
    assert named.report_stem == Path("r/suite_s")
    # --out moves the report with the runs, so a run elsewhere never overwrites the named one
    assert spec.parse_suite({**base, "report": "r/suite_s"}, "s.yaml", out="o").report_stem \
        == Path("o/suite")
    bad = {"unknown key(s) color": {**base, "color": 1},
           "seeds must be": {**base, "seeds": [0, 0]},
           "set by the suite itself": {**base, "overrides": ["seed=3"]},
           "appear more than once": {**base, "entries": [{"name": "a", "method": "fedavg"}] * 2},
           "no method": {**base, "entries": [{"name": "a"}]},
           "not of the form key=value": {**base, "overrides": ["train.lr"]}}
    for message, content in bad.items():
        with pytest.raises(spec.SuiteError, match=re.escape(message)):
            spec.parse_suite(content, "s.yaml")
    wrong = spec.parse_suite({**base, "overrides": ["train.nope=1"]}, "s.yaml")
    with pytest.raises(spec.SuiteError, match="entry 'a': .*unknown config key 'train.nope'"):
        spec.plan(wrong)


def test_the_shipped_suites_resolve_for_every_entry_and_seed() -> None:
    smoke = spec.plan(spec.load_suite(SUITES / "smoke.yaml"))
    assert [(r.entry.name, r.seed) for r in smoke] == [("hierfavg", 0), ("hierfavg", 1),
                                                       ("fedavg", 0), ("fedavg", 1)]
    cpu_suite = spec.load_suite(SUITES / "cpu.yaml", extra=["data.root=/data"])
    cpu = {(r.entry.name, r.seed): r for r in spec.plan(cpu_suite)}
    assert {name for name, _ in cpu} == {"fedavg", "hierfavg", "fedagg", "fedeec",
                                          "fedeec-dynamic", "fedin", "heteroavg", "eclm",
                                          "fedavg-adapted"}
    assert {seed for _, seed in cpu} == {0, 1, 2}
    dynamic = cpu["fedeec-dynamic", 2].config
    assert (dynamic["seed"], dynamic["data"]["dataset"], dynamic["data"]["root"]) == (
        2, "cifar10", "/data")
    assert dynamic["topology"]["mobility"] == dynamic["topology"]["device_dropout"] == 0.2
    assert dynamic["topology"]["edge_outages"] == [[1, 8, 12]]
    assert cpu["fedeec", 0].config["topology"]["mobility"] == 0.0
    assert all(r.rounds == 20 for r in cpu.values())
    # the ablations share the cpu suite's folder: their `fedagg` is the cpu suite's very runs
    ablations = spec.load_suite(SUITES / "cpu-fedagg.yaml", extra=["data.root=/data"])
    fedagg = {(r.entry.name, r.seed): r for r in spec.plan(ablations)}
    for seed in (0, 1, 2):
        assert fedagg["fedagg", seed].folder == cpu["fedagg", seed].folder
        assert fedagg["fedagg", seed].config == cpu["fedagg", seed].config
    for entry in ("fedagg-beta10", "fedeec-beta10", "fedeec-dynamic-beta10", "fedagg-fidelity"):
        assert fedagg[entry, 0].config["fedagg"]["beta"] == 10.0
    assert cpu["fedagg", 0].config["fedagg"]["beta"] == cpu["fedeec", 0].config["fedagg"]["beta"]
    assert cpu["fedagg", 0].config["fedagg"]["beta"] == 1.0
    assert fedagg["fedagg-fidelity", 1].config["fedagg"]["fidelity"] is True
    # the dynamic entries differ from the cpu suite's in beta only
    differs = decisions.config_differences(cpu["fedeec-dynamic", 1].config,
                                           fedagg["fedeec-dynamic-beta10", 1].config)
    assert differs == ["fedagg.beta: 1.0 -> 10.0"]


# --- the runner, with a fake launcher ------------------------------------------------------------


class FakeLauncher:
    """Writes a run's results.json as `flower-eec run` would (curves from CURVES), counting
    launches; a resumed run keeps its rounds and adds the rest (its first new round slow)."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, planned: PlannedRun, argv: Any, log: Path) -> Outcome:
        self.commands.append(list(argv))
        planned.folder.mkdir(parents=True, exist_ok=True)
        accuracies = CURVES[planned.entry.name, planned.seed]
        path = planned.folder / "results.json"
        if "--resume" in argv:
            saved = json.loads(path.read_text())
            done = saved["completed_rounds"]
            wall = [r["wall_s"] for r in saved["rounds"]] + [7.0] + WALL[done + 1:]
        else:
            wall = WALL
        path.write_text(json.dumps(results_of(planned.config, accuracies, wall=wall)))
        (planned.folder / "checkpoint.pt").write_bytes(b"")
        return Outcome(0, 1.0, (planned.seed + 1) * 100 * MiB, (planned.seed + 1) * 90 * MiB)


def three_round_suite(tmp_path: Path, **entry_overrides: list[str]) -> Suite:
    return spec.parse_suite(
        {"profile": "smoke", "rounds": 3, "seeds": [0, 1],
         "entries": [{"name": name, "method": name, "overrides": entry_overrides.get(name, [])}
                     for name in ("hierfavg", "fedavg")]},
        "fake.yaml", out=tmp_path / "suite")


def test_the_runner_starts_skips_and_resumes(tmp_path: Path) -> None:
    suite = three_round_suite(tmp_path)
    launcher, lines = FakeLauncher(), list[str]()
    assert runner.run_suite(suite, launcher=launcher, echo=lines.append) == 0
    assert len(launcher.commands) == 4
    first = launcher.commands[0]
    assert first[1:5] == ["-m", "flower_eec.run.cli", "run", "hierfavg"]
    assert first[5:] == ["profile=smoke", "train.rounds=3", "seed=0", "--out",
                         str(tmp_path / "suite" / "hierfavg" / "seed0"), "--overwrite"]
    for entry in ("hierfavg", "fedavg"):
        for seed in (0, 1):
            folder = tmp_path / "suite" / entry / f"seed{seed}"
            assert json.loads((folder / "results.json").read_text())["status"] == "finished"
            record = json.loads((folder / "suite_run.json").read_text())
            assert record["peak_rss_bytes"] == (seed + 1) * 100 * MiB
            assert [a["action"] for a in record["attempts"]] == ["start"]

    # the report: the known answers of the hand-made curves
    written = json.loads((tmp_path / "suite" / "suite.json").read_text())
    rows = {row["entry"]: row for row in written["entries"]}
    assert rows["hierfavg"]["final"]["mean"] == pytest.approx(0.27)
    assert rows["hierfavg"]["reach"]["30%"]["reached"] == 1
    assert rows["fedavg"]["final"]["mean"] == pytest.approx(0.175)
    assert rows["hierfavg"]["largest_drop"] == pytest.approx(0.02)
    assert rows["fedavg"]["largest_drop"] == 0.0
    assert rows["fedavg"]["reach"]["25%"] == {"mean": None, "sd": None, "n": 0, "reached": 0,
                                              "of": 2}
    table = (tmp_path / "suite" / "suite.md").read_text()
    assert "| hierfavg | hierfavg | 2/2 | 27.00 ± 4.24 | 28.00 ± 2.83 | 21.67 ± 2.36 | " \
           "2.5 (2/2) | 3.0 (1/2) | 2.0 | 3.0 ± 0.0 | 150 ± 71 |" in table  # seed 1: 26 -> 24
    assert "| fedavg | fedavg | 2/2 | 17.50 ± 3.54 |" in table
    assert "- (0/2) | - (0/2)" in table
    assert "| hierfavg | 2.0 ± 0.0 (5.0 ± 0.0) |" in table  # kB from round 2 on (round 1)
    assert (tmp_path / "suite" / "suite.png").read_bytes().startswith(b"\x89PNG")

    # a second invocation runs nothing
    launcher.commands.clear()
    assert runner.run_suite(suite, launcher=launcher, echo=lines.append) == 0
    assert launcher.commands == []

    # an interrupted run (failed after round 2 of 3, with its checkpoint) is resumed
    folder = tmp_path / "suite" / "hierfavg" / "seed1"
    saved = json.loads((folder / "results.json").read_text())
    saved.update(status="failed", reason="KeyboardInterrupt: killed", completed_rounds=2,
                 rounds=saved["rounds"][:2])
    (folder / "results.json").write_text(json.dumps(saved))
    report_only = report.collect(suite, spec.plan(suite))
    assert report_only[0]["seeds"] == [0]
    assert report_only[0]["missing"] == [{"seed": 1, "state": "failed after 2 of 3 rounds",
                                          "reason": "KeyboardInterrupt: killed"}]
    assert runner.run_suite(suite, launcher=launcher, echo=lines.append) == 0
    assert launcher.commands == [[sys.executable, "-m", "flower_eec.run.cli", "run",
                                  "--resume", str(folder), "profile=smoke", "train.rounds=3",
                                  "seed=1"]]
    record = json.loads((folder / "suite_run.json").read_text())
    assert [(a["action"], a["from_round"]) for a in record["attempts"]] == [("start", 1),
                                                                            ("resume", 3)]
    rows = {r["entry"]: r for r in json.loads((tmp_path / "suite" / "suite.json").read_text())
            ["entries"]}
    # seed 1's round 3 began the resumed process (7 s): left out, so seed 1 counts round 2 only
    assert [run["s_per_round"] for run in rows["hierfavg"]["runs"]] == [3.0, 2.0]
    assert any("resume from round 3 (failed after 2 of 3 rounds)" in line for line in lines)


def test_a_run_of_another_config_is_stale_and_nothing_runs(tmp_path: Path) -> None:
    launcher = FakeLauncher()
    assert runner.run_suite(three_round_suite(tmp_path), launcher=launcher,
                           echo=lambda line: None) == 0
    changed = three_round_suite(tmp_path, hierfavg=["train.lr=0.01"])
    launcher.commands.clear()
    lines: list[str] = []
    assert runner.run_suite(changed, launcher=launcher, echo=lines.append) == 2
    assert launcher.commands == []
    assert sum(line.startswith("stale:") for line in lines) == 2
    assert "train.lr: 0.05 -> 0.01" in lines[0]
    assert runner.run_suite(changed, launcher=launcher, restart_stale=True,
                           echo=lines.append) == 0
    assert [c[4] for c in launcher.commands] == ["hierfavg", "hierfavg"]  # started afresh
    assert all("--overwrite" in c for c in launcher.commands)


def test_decisions_on_what_a_folder_holds() -> None:
    planned = PlannedRun(spec.Entry("h", "hierfavg"), 0, Path("x"), (),
                         bench_config(resolve("hierfavg", {"train": {"rounds": 4}})))
    config = planned.config

    def decide(results: dict[str, Any] | None, checkpoint: bool = True,
               busy: bool = False) -> Decision:
        return decisions.decide(results, planned, has_checkpoint=checkpoint, busy=busy)

    four = results_of(config, [0.1, 0.2, 0.3, 0.4], wall=[1.0] * 4)
    assert decide(None).action == "start"
    assert decide(four).action == "skip"
    assert decide(four, busy=True).action == "busy"
    running = {**four, "status": "running", "completed_rounds": 2}
    assert decide(running) == Decision("resume", "running after 2 of 4 rounds", 3)
    assert decide(running, checkpoint=False).action == "start"
    every3 = {**running, "config": {**config, "checkpoint": {"every": 3}}}
    assert decide(every3).action == "start"  # its last checkpoint: none before round 3
    shorter = {**four, "completed_rounds": 2, "planned_rounds": 2}
    assert decide(shorter) == Decision("resume", "finished after 2 of 4 rounds", 3)
    assert decide({**four, "completed_rounds": 5}).action == "stale"
    other = {**four, "config": {**config, "seed": 7, "out": "/elsewhere"}}
    assert decide(other) == Decision("stale", "its config differs: seed: 7 -> 0")
    # another method's knobs (every config holds every section) are not this run's
    fedagg = {**config["fedagg"], "beta": 10.0 - config["fedagg"]["beta"]}
    assert decide({**four, "config": {**config, "fedagg": fedagg}}).action == "skip"
    assert decisions.checkpoint_round(7, 3, 20) == 6
    assert decisions.checkpoint_round(7, 3, 7) == 7  # the last round always has one
    assert decisions.checkpoint_round(7, 0, 20) == 0


# --- the memory of a process tree ----------------------------------------------------------------


def test_the_tree_of_a_process_from_a_made_up_table() -> None:
    parents = {10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20}
    assert memory.tree(10, parents) == {10, 11, 12, 13}
    assert memory.tree(21, parents) == {21}
    assert memory.parent_of("42 (a b) c) S 7 42 42 0") == 7  # a name with spaces and ')'
    status = "Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n"
    assert memory.field_kib(status, "VmRSS") == 1024 * 1024
    assert memory.field_kib(status, "Pss") == 0


GRANDCHILD = "x = b'x' * (200 * 2**20); print('ready', flush=True); import sys; sys.stdin.read()"


def test_the_memory_of_a_grandchild_counts() -> None:
    """A child whose own child holds 200 MiB: the tree's resident memory holds it too."""
    child = subprocess.Popen(
        [sys.executable, "-c",
         f"import subprocess, sys; subprocess.run([sys.executable, '-c', {GRANDCHILD!r}])"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        assert len(memory.tree(child.pid, memory.process_parents())) == 2
        rss, pss = memory.tree_memory(child.pid)
        assert rss >= 200 * MiB
        assert pss == 0 or pss >= 190 * MiB  # where smaps_rollup is readable
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert child.returncode == 0


def test_launch_records_the_exit_status_and_the_output(tmp_path: Path) -> None:
    planned = PlannedRun(spec.Entry("h", "hierfavg"), 0, tmp_path, (), {})
    outcome = runner.launch(planned, [sys.executable, "-c", "print('hello'); raise SystemExit(3)"],
                           tmp_path / "run.log")
    assert (outcome.returncode, outcome.interrupted) == (3, False)
    assert outcome.peak_rss_bytes > 0
    log = (tmp_path / "run.log").read_text()
    assert "h seed 0" in log and "hello" in log


# --- one real run under Ray ----------------------------------------------------------------------


class KilledGrid(LocalGrid):
    """The in-process grid, gone at the training of round ``kill_at`` (as a killed run's)."""

    def __init__(self, config: Config, kill_at: int | None = None) -> None:
        super().__init__(app, config.topology.num_devices, {"config-json": to_json(config)})
        self.kill_at = kill_at

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        if messages and messages[0].metadata.message_type.startswith("train"):
            if int(messages[0].content.config_records["config"]["server-round"]) == self.kill_at:
                raise KeyboardInterrupt("killed")
        return super().send_and_receive(messages, timeout=timeout)


def in_process(planned: PlannedRun, kill_at: int | None = None) -> None:
    """Run ``planned`` on the in-process grid, as the suite would (same overrides)."""
    config = resolve(planned.entry.method, {**parse_overrides(list(planned.overrides)),
                                            "out": str(planned.folder)})
    if kill_at is None:
        experiment.run(KilledGrid(config), config)
    else:
        with pytest.raises(KeyboardInterrupt):
            experiment.run(KilledGrid(config, kill_at), config)


@pytest.mark.e2e  # starts Ray through `flower-eec run`
def test_the_smoke_suite_resumes_an_interrupted_run_under_ray(tmp_path: Path) -> None:
    """HierFAVG of the smoke suite, seeds 0 and 1: seed 1 finished and seed 0 interrupted in
    round 2 (both made in-process); the suite resumes seed 0 in a process of its own (Ray),
    skips seed 1, and reports what their results.json say."""
    full = spec.load_suite(SUITES / "smoke.yaml", out=tmp_path / "smoke")
    suite = replace(full, entries=full.entries[:1])
    seed0, seed1 = spec.plan(suite)
    in_process(seed1)
    in_process(seed0, kill_at=2)
    before = json.loads((seed0.folder / "results.json").read_text())
    assert (before["status"], before["completed_rounds"]) == ("failed", 1)
    finished_at = (seed1.folder / "results.json").stat().st_mtime_ns

    launched: list[list[str]] = []

    def counting(planned: PlannedRun, argv: Any, log: Path) -> Outcome:
        launched.append(list(argv))
        return runner.launch(planned, argv, log)

    lines: list[str] = []
    assert runner.run_suite(suite, launcher=counting, echo=lines.append) == 0, "\n".join(lines)
    assert len(launched) == 1 and launched[0][4:6] == ["--resume", str(seed0.folder)]
    for planned in (seed0, seed1):
        results = json.loads((planned.folder / "results.json").read_text())
        assert (results["status"], results["completed_rounds"]) == ("finished", 2)
    after = json.loads((seed0.folder / "results.json").read_text())
    assert after["rounds"][0] == before["rounds"][0]  # round 1 kept: resumed, not restarted
    assert (seed1.folder / "results.json").stat().st_mtime_ns == finished_at  # skipped
    record = json.loads((seed0.folder / "suite_run.json").read_text())
    assert [(a["action"], a["from_round"], a["returncode"]) for a in record["attempts"]] == [
        ("resume", 2, 0)]
    assert record["peak_rss_bytes"] > 200 * MiB  # torch and Ray's workers, at least

    # the table's numbers are those of the two results.json, by hand
    runs = [json.loads((p.folder / "results.json").read_text()) for p in (seed0, seed1)]
    finals = [r["rounds"][-1]["cloud"]["accuracy"] for r in runs]
    bests = [max(x["cloud"]["accuracy"] for x in r["rounds"]) for r in runs]
    links = {k for r in runs for x in r["rounds"][1:] for k, v in x["comm_bytes"].items() if v}
    row = json.loads((tmp_path / "smoke" / "suite.json").read_text())["entries"][0]
    assert row["final"]["mean"] == pytest.approx(statistics.mean(finals))
    assert row["final"]["sd"] == pytest.approx(statistics.stdev(finals))
    assert row["best"]["mean"] == pytest.approx(statistics.mean(bests))
    for link in links:  # two rounds: round 2 is the steady state
        assert row["bytes_per_round"][link]["mean"] == pytest.approx(
            statistics.mean(r["rounds"][1]["comm_bytes"][link] for r in runs))
    assert row["s_per_round"]["mean"] == pytest.approx(runs[1]["rounds"][1]["wall_s"])  # seed
    # 0's round 2 began the resumed process: only seed 1's round 2 counts
    assert row["peak_rss_bytes"] == {"mean": record["peak_rss_bytes"], "sd": None, "n": 1}
    table = (tmp_path / "smoke" / "suite.md").read_text()
    mean, sd = 100 * statistics.mean(finals), 100 * statistics.stdev(finals)
    assert f"| hierfavg | hierfavg | 2/2 | {mean:.2f} ± {sd:.2f} |" in table

    launched.clear()
    assert runner.run_suite(suite, launcher=counting, echo=lines.append) == 0
    assert launched == []  # everything done: nothing runs


def test_seconds_per_round_are_the_median_so_one_slowed_round_does_not_move_them() -> None:
    rounds = [{"round": r, "wall_s": s, "cloud": {"accuracy": 0.1}}
              for r, s in [(1, 50.0), (2, 10.0), (3, 12.0), (4, 90.0)]]
    assert stats.run_metrics({"rounds": rounds})["s_per_round"] == 12.0  # of 10, 12, 90


def test_largest_drop_is_the_largest_fall_between_consecutive_evaluated_rounds() -> None:
    assert stats.largest_drop([(1, 0.3), (2, 0.5), (3, 0.35), (5, 0.45), (6, 0.2)]) \
        == pytest.approx(0.25)
    assert stats.largest_drop([(1, 0.1), (2, 0.2)]) == 0.0
    assert stats.largest_drop([(1, 0.1)]) is None


def test_the_devices_local_accuracy_over_rounds_and_seeds_with_and_before_adapting() -> None:
    def run(locals_: list[float | None], before: list[float] | None = None) -> dict[str, Any]:
        rounds = []
        for i, local in enumerate(locals_):
            devices = {} if local is None else {"mean_local_accuracy": local}
            if before is not None:
                devices["mean_local_accuracy_before"] = before[i]
            rounds.append({"round": i + 1, "wall_s": 1.0, "cloud": {"accuracy": 0.1},
                           "devices": devices})
        return stats.run_metrics({"rounds": rounds})

    adapted = [run([0.4, 0.5, 0.6], before=[0.2, 0.3, 0.4]), run([0.6, 0.7, 0.8], [0.2] * 3)]
    assert adapted[0]["local_mean"] == pytest.approx(0.5)
    assert adapted[0]["local_final"] == pytest.approx(0.6)
    assert adapted[0]["local_before_mean"] == pytest.approx(0.3)
    row = stats.entry_row(spec.Entry("eclm", "eclm"), adapted, planned_seeds=2)
    assert row["local_mean"]["mean"] == pytest.approx(0.6)  # 0.5 and 0.7
    assert row["local_mean"]["sd"] == pytest.approx(math.sqrt(2 * 0.1**2))
    assert row["local_final"]["mean"] == pytest.approx(0.7)
    assert row["local_before_mean"]["mean"] == pytest.approx(0.25)

    skipped = run([None, 0.3, None])  # rounds the devices did not evaluate are left out
    assert (skipped["local_mean"], skipped["local_final"]) == (pytest.approx(0.3), 0.3)
    assert skipped["local_before_mean"] is None
    none = stats.entry_row(spec.Entry("fedagg", "fedagg"), [run([None])], planned_seeds=1)

    suite = Suite(name="t", profile="smoke", seeds=(0, 1), rounds=None, out=Path("."),
                  entries=())
    table = report.markdown([{**row, "missing": []}, {**none, "missing": []}], suite, "about")
    assert "| eclm | 60.00 ± 14.14 | 70.00 ± 14.14 | 25.00 ± 7.07 |" in table
    assert "| fedagg | -" not in table  # no local accuracy: not in the devices' table

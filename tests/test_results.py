"""Tests of the results folder (results.json, metrics.csv, plots) from hand-made round records."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from flower_eec.errors import ConfigError
from flower_eec.run import results
from flower_eec.run.config import Config, resolve, to_dict
from flower_eec.run.results import (
    LINKS,
    Recorder,
    accuracy_figure,
    comm_figure,
    write_metrics_csv,
)

PNG = b"\x89PNG\r\n\x1a\n"


def rounds() -> list[dict[str, Any]]:
    return [
        {"round": 1, "cloud": {"accuracy": 0.30, "loss": 1.9},
         "edges": [{"edge": 0, "accuracy": 0.20, "loss": 2.0, "examples": 100.0},
                   {"edge": 1, "accuracy": 0.25, "loss": 2.1, "examples": 80.0}],
         "devices": {"mean_local_accuracy": 0.50, "mean_local_loss": 1.2,
                     "participants": 4, "failures": 1},
         "comm_bytes": {"device_to_edge": 400, "edge_to_device": 800, "edge_to_cloud": 200,
                        "cloud_to_edge": 200}},
        {"round": 2, "cloud": {"accuracy": 0.40, "loss": 1.7},
         "edges": [{"edge": 0, "accuracy": 0.35}, {"edge": 1, "accuracy": 0.30}],
         "devices": {"mean_local_accuracy": 0.60, "participants": 4, "failures": 0},
         "comm_bytes": {"device_to_edge": 410}},
        # A round without evaluation (eval.every > 1): no cloud accuracy.
        {"round": 3, "cloud": {}, "edges": [], "devices": {"participants": 4, "failures": 0},
         "comm_bytes": {}},
    ]


@pytest.fixture(scope="module")
def config() -> Config:
    return resolve(None, {"train": {"rounds": 3}})


@pytest.fixture(scope="module")
def written(config: Config, tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("results") / "run"
    recorder = Recorder(config, out)
    for record in rounds():
        recorder.add_round(record)
    return out, recorder.finish()


def test_add_round_keeps_results_json_up_to_date(config: Config, tmp_path: Path) -> None:
    recorder = Recorder(config, tmp_path / "run")

    recorder.add_round(rounds()[0])

    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [1]
    assert (saved["status"], saved["completed_rounds"]) == ("running", 1)
    assert "final" not in saved  # a run that has not finished does not look finished
    assert (tmp_path / "run" / "metrics.csv").read_text().count("\n1,cloud,") == 1

    recorder.add_round(rounds()[1])

    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["round"] for r in saved["rounds"]] == [1, 2]
    assert recorder.finish()["final"]["cloud_accuracy"] == saved["rounds"][-1]["cloud"][
        "accuracy"]


def test_every_file_of_the_results_folder(written: tuple[Path, dict[str, Any]]) -> None:
    out, _ = written

    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.png", "comm.png", "metrics.csv", "results.json"]
    for name in ("accuracy.png", "comm.png"):
        assert (out / name).read_bytes().startswith(PNG)


def test_results_json_has_the_architecture_fields(written: tuple[Path, dict[str, Any]],
                                                  config: Config) -> None:
    out, summary = written
    saved = json.loads((out / "results.json").read_text())

    assert saved == json.loads(json.dumps(summary))
    assert set(saved) == {"method", "status", "completed_rounds", "planned_rounds", "config",
                          "versions", "rounds", "final"}
    assert (saved["status"], saved["completed_rounds"]) == ("finished", len(saved["rounds"]))
    assert saved["method"] == "hierfavg"
    assert saved["config"] == to_dict(config)
    assert set(saved["versions"]) == {"flower_eec", "flwr", "torch"}
    assert saved["versions"]["flwr"].startswith("1.4")
    first = saved["rounds"][0]
    assert {"round", "wall_s", "cloud", "edges", "devices", "comm_bytes"} <= set(first)
    assert first["cloud"] == {"accuracy": 0.30, "loss": 1.9}
    assert first["devices"]["failures"] == 1
    assert first["wall_s"] >= 0


def test_comm_bytes_has_every_link_with_zeros_filled_in(
        written: tuple[Path, dict[str, Any]]) -> None:
    _, summary = written

    for record in summary["rounds"]:
        assert list(record["comm_bytes"]) == list(LINKS)
    assert summary["rounds"][0]["comm_bytes"] == {
        "device_to_edge": 400, "edge_to_device": 800, "edge_to_cloud": 200,
        "cloud_to_edge": 200, "device_to_cloud": 0, "cloud_to_device": 0}
    assert summary["rounds"][1]["comm_bytes"]["device_to_edge"] == 410
    assert sum(summary["rounds"][2]["comm_bytes"].values()) == 0


def test_final_holds_the_last_and_best_cloud_accuracy(
        written: tuple[Path, dict[str, Any]]) -> None:
    _, summary = written

    final = summary["final"]
    # Round 3 was not evaluated: the last accuracy is round 2's.
    assert final["cloud_accuracy"] == 0.40
    assert final["best_cloud_accuracy"] == 0.40
    assert final["total_wall_s"] >= 0
    assert final["peak_rss_mb"] > 0


def test_best_differs_from_last_when_accuracy_drops(config: Config) -> None:
    recorder = Recorder(config)
    for round_, accuracy in ((1, 0.5), (2, 0.7), (3, 0.6)):
        recorder.add_round({"round": round_, "cloud": {"accuracy": accuracy}})

    final = recorder.finish()["final"]

    assert final["cloud_accuracy"] == 0.6
    assert final["best_cloud_accuracy"] == 0.7


def test_no_evaluated_round_gives_no_accuracy(config: Config) -> None:
    recorder = Recorder(config)
    recorder.add_round({"round": 1})

    final = recorder.finish()["final"]

    assert final["cloud_accuracy"] is None
    assert final["best_cloud_accuracy"] is None


def test_without_out_nothing_is_written(config: Config, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    recorder = Recorder(config)
    recorder.add_round(rounds()[0])

    summary = recorder.finish()

    assert [r["round"] for r in summary["rounds"]] == [1]
    assert list(tmp_path.iterdir()) == []


def test_metrics_csv_has_one_row_per_round_and_tier(written: tuple[Path, dict[str, Any]]) -> None:
    out, summary = written

    with (out / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))

    assert [(r["round"], r["tier"], r["index"]) for r in rows] == [
        ("1", "cloud", ""), ("1", "edge", "0"), ("1", "edge", "1"), ("1", "devices", ""),
        ("2", "cloud", ""), ("2", "edge", "0"), ("2", "edge", "1"), ("2", "devices", ""),
        ("3", "cloud", ""), ("3", "devices", "")]
    cloud1, edge0, edge1, devices1 = rows[:4]
    assert (cloud1["accuracy"], cloud1["loss"]) == ("0.3", "1.9")
    assert float(cloud1["wall_s"]) == summary["rounds"][0]["wall_s"]
    assert [int(cloud1[link]) for link in LINKS] == [400, 800, 200, 200, 0, 0]
    assert (edge0["accuracy"], edge0["loss"]) == ("0.2", "2.0")
    assert (edge1["accuracy"], edge1["loss"]) == ("0.25", "2.1")
    assert all(edge0[link] == "" for link in LINKS)
    assert (devices1["accuracy"], devices1["loss"]) == ("0.5", "1.2")
    assert rows[7]["loss"] == ""  # round 2's devices reported no loss
    assert (rows[8]["accuracy"], rows[8]["loss"]) == ("", "")


def test_write_metrics_csv_header(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"

    write_metrics_csv([], path)

    assert path.read_text().splitlines() == [
        "round,tier,index,accuracy,loss,wall_s," + ",".join(LINKS)]


# --- a folder that says what it is, and holds one run -------------------------------------------


def test_a_folder_that_holds_a_run_is_refused_unless_overwrite(config: Config,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = Recorder(config, out)
    first.add_round(rounds()[0])
    first.finish()
    (out / "notes.txt").write_text("mine")  # a file of the user's: never removed

    with pytest.raises(ConfigError, match=r"already holds a run \(results.json, metrics.csv, "
                                          r"accuracy.png, comm.png\).*--resume \(under flwr run: "
                                          r"overrides='resume=true'\).*--overwrite \(under flwr "
                                          r"run: overrides='overwrite=true'\)"):
        Recorder(config, out)
    assert json.loads((out / "results.json").read_text())["status"] == "finished"

    second = Recorder(config, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [".lock", "notes.txt"]
    second.add_round(rounds()[1])
    assert [r["round"] for r in second.finish()["rounds"]] == [2]


def test_a_live_run_keeps_its_folder_and_a_dead_one_does_not(config: Config,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                               stdin=subprocess.PIPE)
    try:
        (out / ".lock").write_text(json.dumps({"pid": sleeper.pid,
                                               "host": socket.gethostname()}))
        with pytest.raises(ConfigError, match=f"another run \\(process {sleeper.pid}\\) is "
                                              "writing into"):
            Recorder(config, out, overwrite=True)
    finally:
        sleeper.communicate(b"")  # it ends, as a killed run would
    recorder = Recorder(config, out)  # the dead run's lock is taken over
    assert json.loads((out / ".lock").read_text())["pid"] == os.getpid()
    recorder.finish()
    assert not (out / ".lock").exists()


def test_a_failed_run_says_so_and_keeps_its_rounds(config: Config, tmp_path: Path) -> None:
    recorder = Recorder(config, tmp_path / "run")
    recorder.add_round(rounds()[0])

    summary = recorder.fail("RuntimeError: the grid went away")

    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert (saved["status"], saved["reason"]) == ("failed", "RuntimeError: the grid went away")
    assert (saved["completed_rounds"], saved["planned_rounds"]) == (1, config.train.rounds)
    assert "final" not in saved
    assert (tmp_path / "run" / "accuracy.png").read_bytes()[:8] == PNG
    assert not (tmp_path / "run" / ".lock").exists()


def test_a_run_that_fails_before_its_first_round_leaves_nothing(config: Config,
                                                                tmp_path: Path) -> None:
    Recorder(config, tmp_path / "run").fail("ConfigError: bad")
    assert not (tmp_path / "run").exists()


# --- plots a paper can use ----------------------------------------------------------------------


def _drawn(fig: Figure) -> Figure:
    FigureCanvasAgg(fig).draw()  # lays out and makes the tick labels, as saving does
    return fig


def _fake_plot(titles: list[str]) -> Any:
    def plot(_rounds: list[dict[str, Any]], path: Path, title: str) -> None:
        titles.append(title)
        path.write_bytes(PNG)
    return plot


def test_plot_titles_name_method_dataset_profile_and_seed(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    config = resolve(None, {"seed": 7, "train": {"rounds": 1}})
    titles: list[str] = []
    monkeypatch.setattr(results, "plot_accuracy", _fake_plot(titles))
    monkeypatch.setattr(results, "plot_comm", _fake_plot(titles))
    recorder = Recorder(config, tmp_path / "run")
    recorder.add_round(rounds()[0])

    recorder.finish()

    assert titles == ["hierfavg on synthetic, profile smoke, seed 7"] * 2
    assert accuracy_figure(rounds(), titles[0]).get_suptitle() == titles[0]
    assert comm_figure(rounds(), titles[0]).get_suptitle() == titles[0]


@pytest.mark.parametrize("count", [2, 3, 7, 40, 500])
def test_rounds_are_ticked_in_whole_numbers(count: int) -> None:
    many = [{"round": k, "cloud": {"accuracy": 0.5}, "comm_bytes": {
        link: 1000 * (i + 1) for i, link in enumerate(LINKS)}} for k in range(1, count + 1)]

    for fig in (accuracy_figure(many), comm_figure(many)):
        for ax in _drawn(fig).axes:
            assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert len(ticks) >= 2
            assert all(float(t).is_integer() for t in ticks), ticks  # never 1.25, 1.5, ...


def test_comm_plot_shows_every_link_on_its_own_line() -> None:
    fig = comm_figure(rounds())

    # Round 1 carried 400/800 bytes between devices and edges and 200 both ways between edges
    # and the cloud; no round used device <-> cloud, which gets no panel.
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert list(panels) == ["device \u2194 edge", "edge \u2194 cloud"]
    mib = 2**20
    expected = {
        "device \u2194 edge": {"device_to_edge": [400, 410, 0], "edge_to_device": [800, 0, 0]},
        "edge \u2194 cloud": {"edge_to_cloud": [200, 0, 0], "cloud_to_edge": [200, 0, 0]}}
    for title, links in expected.items():
        ax = panels[title]
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == set(links)
        for link, values in links.items():
            assert np.asarray(lines[link].get_xdata()).tolist() == [1, 2, 3]
            assert np.asarray(lines[link].get_ydata()) == pytest.approx(
                [v / mib for v in values])
            assert lines[link].get_visible() and max(values) / mib <= ax.get_ylim()[1]
        up, down = lines.values()
        # edge <-> cloud carried the same bytes both ways: the lines lie on each other, so each
        # must still show by its colour, dash and marker
        assert up.get_color() != down.get_color()
        assert up.get_linestyle() != down.get_linestyle()
        assert up.get_marker() != down.get_marker()


def test_comm_plot_gives_device_cloud_traffic_a_third_panel() -> None:
    record = {"round": 1, "comm_bytes": {link: 0 for link in LINKS} | {"cloud_to_device": 5}}

    titles = [ax.get_title() for ax in comm_figure([record]).axes]

    assert titles == ["device \u2194 cloud"]


def test_plots_are_readable_at_their_saved_size(tmp_path: Path) -> None:
    for draw, save in ((accuracy_figure, results.plot_accuracy),
                       (comm_figure, results.plot_comm)):
        fig = _drawn(draw(rounds(), "hierfavg on synthetic, profile smoke, seed 0"))
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
        assert texts and min(float(t.get_fontsize()) for t in texts) >= 9
        legend = fig.legends[0]
        renderer = cast(FigureCanvasAgg, fig.canvas).get_renderer()
        for ax in fig.axes:  # the legend sits below the panels, never on the data
            assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))

        path = tmp_path / "plot.png"
        save(rounds(), path, title="t")
        header = path.read_bytes()[:24]
        assert header.startswith(PNG)
        # 7 x 4 inches at 150 dpi
        assert (int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")) == (
            1050, 600)

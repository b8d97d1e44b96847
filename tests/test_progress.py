"""Progress reporting: silent by default, what a reporter is told, the ETA, replies arriving, the
terminal bars and the CLI's --quiet."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from rich.console import Console
from rich.progress import Task, TaskID

from flower_eec import noise, progress
from flower_eec.grid.local import LocalGrid
from flower_eec.grid.watched import WatchedGrid
from flower_eec.run import cli
from flower_eec.run.bars import Bars, Timing
from flower_eec.strategies.hierarchical import Hierarchical
from flower_eec.topology import Topology


class Recording(progress.Reporter):
    """A reporter that notes what it is told."""

    enabled = True

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.tasks = 0

    def begin(self, description: str, total: int, done: int = 0) -> int:
        self.tasks += 1
        self.events.append(("begin", description, total, done))
        return self.tasks

    def update(self, task: int, done: int) -> None:
        self.events.append(("update", task, done))

    def end(self, task: int) -> None:
        self.events.append(("end", task))


@pytest.fixture
def recording() -> Iterator[Recording]:
    with progress.reporting(Recording()) as reporter:
        yield reporter  # type: ignore[misc]


def test_progress_is_silent_by_default() -> None:
    assert not progress.active()
    assert type(progress.current()) is progress.Reporter
    assert list(progress.track(iter("abc"), 3, "letters")) == ["a", "b", "c"]
    with progress.task("anything", 2) as update:
        update(1)  # does nothing


def test_track_yields_every_item_and_reports_each(recording: Recording) -> None:
    assert progress.active()

    assert list(progress.track(iter([10, 20, 30]), 3, "batches")) == [10, 20, 30]

    assert recording.events == [("begin", "batches", 3, 0), ("update", 1, 1),
                                ("update", 1, 2), ("update", 1, 3), ("end", 1)]


def test_reporting_puts_the_previous_reporter_back() -> None:
    with progress.reporting(Recording()):
        assert progress.active()
    assert not progress.active()


def test_eta_from_known_elapsed_times() -> None:
    assert progress.eta_seconds(60.0, 2, 3) == 90.0
    assert progress.eta_seconds(60.0, 0, 3) is None
    assert progress.eta_text(60.0, 2, 3) == "elapsed 1m 00s, ETA 1m 30s"
    assert progress.eta_text(5.4, 0, 3) == "elapsed 5s"
    assert progress.eta_text(7200.0, 1, 10) == "elapsed 2h 00m, ETA 20h 00m"
    assert [progress.duration(s) for s in (0, 42, 65, 3599, 3725)] == [
        "0s", "42s", "1m 05s", "59m 59s", "1h 02m"]


def test_rounds_log_each_start_with_elapsed_time_and_eta(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        recording: Recording) -> None:
    clock = iter([100.0, 130.0, 160.0])  # the start, then as rounds 2 and 3 start
    monkeypatch.setattr(progress, "monotonic", lambda: next(clock))

    with caplog.at_level(logging.INFO, logger="flwr"):
        assert list(progress.rounds(1, 3)) == [1, 2, 3]

    assert [r.getMessage() for r in caplog.records] == [
        "[ROUND 1/3]", "[ROUND 2/3] elapsed 30s, ETA 1m 00s",
        "[ROUND 3/3] elapsed 1m 00s, ETA 30s"]
    assert recording.events[0] == ("begin", "rounds", 3, 0)
    assert [e[2] for e in recording.events if e[0] == "update"] == [1, 2, 3]


def test_a_resumed_run_counts_the_eta_from_its_own_rounds(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        recording: Recording) -> None:
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(progress, "monotonic", lambda: next(clock))

    with caplog.at_level(logging.INFO, logger="flwr"):
        assert list(progress.rounds(4, 5)) == [4, 5]

    assert [r.getMessage() for r in caplog.records] == ["[ROUND 4/5]",
                                                        "[ROUND 5/5] elapsed 10s, ETA 10s"]
    assert recording.events[0] == ("begin", "rounds", 5, 3)


def echo(message: Message, context: Context) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 1})}),
                   reply_to=message)


class CountingGrid(LocalGrid):
    sends = 0

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        self.sends += 1
        return super().send_and_receive(messages, timeout=timeout)


def messages(grid: LocalGrid) -> list[Message]:
    return [Message(RecordDict(), dst_node_id=node, message_type="train")
            for node in grid.get_node_ids()]


def test_a_watched_grid_reports_the_replies_as_they_come(recording: Recording) -> None:
    local = CountingGrid(echo, 3)
    grid = WatchedGrid(local)

    replies = list(grid.send_and_receive(messages(local), timeout=5.0))

    assert sorted(r.metadata.src_node_id for r in replies) == [1000, 1001, 1002]
    assert local.sends == 0  # pushed and pulled, to see the replies arrive
    assert recording.events == [("begin", "train: devices replied", 3, 0), ("update", 1, 3),
                                ("end", 1)]


def test_a_watched_grid_gives_up_at_the_timeout(recording: Recording) -> None:
    local = LocalGrid(echo, 3, drop=lambda m: m.metadata.dst_node_id == 1001)
    replies = list(WatchedGrid(local).send_and_receive(messages(local), timeout=0.05))
    assert sorted(r.metadata.src_node_id for r in replies) == [1000, 1002]


def test_a_watched_grid_only_forwards_while_progress_is_off() -> None:
    local = CountingGrid(echo, 2)
    replies = list(WatchedGrid(local).send_and_receive(messages(local), timeout=5.0))
    assert len(replies) == 2 and local.sends == 1


def test_bars_draw_tasks_and_route_flowers_log_lines_above_them() -> None:
    screen = io.StringIO()
    flower = logging.getLogger("flwr")
    handler = logging.StreamHandler(sys.stderr)  # as Flower's console handler: on stderr
    flower.addHandler(handler)
    try:
        with Bars(Console(file=screen, force_terminal=True, width=100)) as bars, \
                progress.reporting(bars):
            for _ in progress.track(range(3), 3, "distillation"):
                bars.progress.refresh()
            flower.warning("a line from Flower")
        assert handler.stream is sys.stderr  # given back
    finally:
        flower.removeHandler(handler)

    assert "distillation" in screen.getvalue()
    assert "a line from Flower" in screen.getvalue()  # printed by rich, above the bars
    assert not progress.active()


def test_quiet_shows_no_progress_and_only_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    handlers = logging.getLogger("flwr").handlers
    levels = [h.level for h in handlers]
    seen = []

    with cli.console(quiet=True, verbose=False):
        seen.append((progress.active(), [h.level for h in handlers]))

    assert seen == [(False, [max(level, logging.WARNING) for level in levels])]
    assert [h.level for h in handlers] == levels
    noise.unhide()


def test_not_a_terminal_means_no_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with cli.console(quiet=False, verbose=False):
        assert not progress.active()
    noise.unhide()


def test_verbose_tells_rays_actors_to_show_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(noise.VERBOSE_ENV, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    with cli.console(quiet=False, verbose=True):
        assert noise.show_everything()
    assert not any(isinstance(f, noise.LineFilter) for f in logging.getLogger("flwr").filters)


def test_the_cli_takes_quiet_and_verbose() -> None:
    args = cli._parser().parse_args(["run", "hierfavg", "--quiet"])
    assert (args.quiet, args.verbose) == (True, False)


def test_the_final_line_of_a_quiet_run(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(json.dumps({"final": {"cloud_accuracy": 0.135}}))
    assert cli.final_line(tmp_path) == f"results in {tmp_path} (final cloud accuracy 13.50%)"
    assert cli.final_line(tmp_path / "gone") == f"results in {tmp_path / 'gone'}"


def test_the_bars_timing_column_counts_only_this_runs_steps() -> None:
    task = Task(TaskID(0), "rounds", total=5, completed=3, _get_time=lambda: 100.0,
                fields={"done_before": 1})  # resumed after round 1
    task.start_time = 40.0
    assert Timing().render(task).plain == "elapsed 1m 00s, ETA 1m 00s"


def device(message: Message, context: Context) -> Message:
    """Describes itself, trains (w + 1, one example), evaluates."""
    pid = int(context.node_config["partition-id"])
    if message.metadata.message_type == "query.describe":
        return Message(RecordDict({"d": ConfigRecord({"partition-id": pid})}), reply_to=message)
    metrics = MetricRecord({"num-examples": 1, "accuracy": 0.5})
    if message.metadata.message_type == "evaluate":
        return Message(RecordDict({"metrics": metrics}), reply_to=message)
    arrays = ArrayRecord({"w": Array(message.content.array_records["arrays"]["w"].numpy() + 1)})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=message)


def test_a_hierarchical_run_reports_rounds_exchanges_and_tier_passes(
        recording: Recording) -> None:
    edge = FedAvg(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1)
    strategy = Hierarchical(edge=edge, topology=Topology(num_devices=4, num_edges=2),
                            evaluate_edges=True, node_wait=1.0)
    strategy.start(WatchedGrid(LocalGrid(device, 4)),
                   ArrayRecord({"w": Array(np.zeros(2, np.float32))}), num_rounds=2,
                   evaluate_fn=lambda server_round, arrays: MetricRecord({"accuracy": 0.5}))

    begun = [(e[1], e[2]) for e in recording.events if e[0] == "begin"]
    assert begun[:2] == [("query.describe: devices replied", 1),
                         ("query.describe: devices replied", 3)]
    assert begun[2] == ("rounds", 2)
    assert begun.count(("train: devices replied", 4)) == 2
    assert begun.count(("edges aggregate their devices' replies", 2)) == 2
    assert begun.count(("evaluating the edge models", 2)) == 2
    assert len([e for e in recording.events if e[0] == "end"]) == len(begun)  # none left


@pytest.mark.parametrize(("edge_rounds", "bars"), [(1, 0), (2, 1)])
def test_edge_rounds_get_a_bar_when_there_are_several(
        recording: Recording, edge_rounds: int, bars: int) -> None:
    edge = FedAvg(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1)
    strategy = Hierarchical(edge=edge, topology=Topology(num_devices=4, num_edges=2),
                            edge_rounds=edge_rounds, node_wait=1.0)
    strategy.start(LocalGrid(device, 4), ArrayRecord({"w": Array(np.zeros(2, np.float32))}),
                   num_rounds=1)
    begun = [(e[1], e[2]) for e in recording.events if e[0] == "begin"]
    assert begun.count(("edge rounds", edge_rounds)) == bars

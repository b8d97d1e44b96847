"""A federation of the wrong size is told before the first round, in one line that says which
number to pass: at once when there are more nodes than devices, after ``simulation.node_wait``
when some never register."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from flower_eec.app.client_app import app as client_app
from flower_eec.errors import ConfigError
from flower_eec.grid.discovery import node_count_problem, wait_for_nodes
from flower_eec.grid.local import LocalGrid
from flower_eec.run import experiment
from flower_eec.run.config import resolve, to_json


class Nodes(LocalGrid):
    """A grid whose registered nodes are ``counts[i]`` on the i-th look (the last one after)."""

    def __init__(self, *counts: int) -> None:
        super().__init__(lambda message, context: message, max(counts))
        self.counts = list(counts)

    def get_node_ids(self) -> Iterable[int]:
        count = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
        return list(range(1000, 1000 + count))


def test_more_nodes_than_devices_is_an_error_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        wait_for_nodes(Nodes(5), expected=4, timeout=60.0)
    assert time.monotonic() - started < 1.0
    assert str(caught.value) == (
        'the federation has 5 nodes but topology.num_devices is 4: run with --federation-config '
        '"num-supernodes=4" (or set topology.num_devices=5)')


def test_fewer_nodes_are_awaited_for_node_wait_then_named() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r'has 3 nodes but topology.num_devices is 4 after '
                                          r'0.3 s \(simulation.node_wait\): run with '
                                          r'--federation-config "num-supernodes=4"'):
        wait_for_nodes(Nodes(3), expected=4, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5


def test_nodes_that_register_late_are_awaited(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="flwr"):
        assert wait_for_nodes(Nodes(0, 2, 4), expected=4, timeout=5.0) == [1000, 1001, 1002,
                                                                            1003]


def test_the_message_says_which_number_to_pass() -> None:
    assert "num-supernodes=20" in node_count_problem(4, 20, 60.0)
    assert "topology.num_devices=4" in node_count_problem(4, 20, 60.0)
    assert "after" not in node_count_problem(30, 20, 60.0)


def test_a_run_on_the_wrong_federation_stops_before_loading_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = resolve(None, {"method": "hierfavg", "profile": "smoke",
                            "out": str(tmp_path / "out")})
    loaded: list[object] = []
    monkeypatch.setattr(experiment, "federated_data", lambda c: loaded.append(c))
    grid = LocalGrid(client_app, 5, {"config-json": to_json(config)})

    with pytest.raises(ConfigError, match="the federation has 5 nodes"):
        experiment.run(grid, config)

    assert loaded == []
    # a run that failed before its first round leaves no results folder behind
    assert not (tmp_path / "out").exists()


def test_the_server_app_ends_a_wrong_federation_as_a_failed_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from flwr.app import Context, RecordDict

    from flower_eec import noise
    from flower_eec.app.server_app import main

    monkeypatch.delenv(noise.VERBOSE_ENV, raising=False)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                      run_config={"method": "hierfavg", "profile": "smoke",
                                  "out": str(tmp_path / "out"),
                                  "overrides": "simulation.node_wait=0.2"})
    try:
        with pytest.raises(ConfigError) as caught:  # Flower marks a run that raises as failed
            main(LocalGrid(client_app, 3, {}), context)
        with caplog.at_level(logging.ERROR, logger="flwr"):  # as Flower then logs it
            logging.getLogger("flwr").error("Simulation raised an exception",
                                            exc_info=caught.value)
    finally:
        noise.unhide()

    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "Simulation raised an exception: ConfigError: the federation has 3 nodes but "
        "topology.num_devices is 4 after 0.2 s (simulation.node_wait): run with "
        '--federation-config "num-supernodes=4" (or set topology.num_devices=3)']
    assert "Traceback" not in caplog.text
    assert not (tmp_path / "out").exists()

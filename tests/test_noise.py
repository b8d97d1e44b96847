"""What a run keeps off the console: each known third-party message, matched precisely (the same
message stays hidden, any other shows), our own errors without their traceback, and nothing
hidden when everything is asked for."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from flwr.common.logger import log, warn_deprecated_feature
from flwr.serverapp.strategy import FedAvg
from test_progress import device

from flower_eec import noise
from flower_eec.errors import ConfigError
from flower_eec.grid.local import LocalGrid
from flower_eec.strategies.hierarchical import Hierarchical
from flower_eec.topology import Topology

RUN_SIMULATION_DEPRECATED = (
    "The `run_simulation` function is deprecated and will be removed in a future version of "
    "Flower. Please use `flwr run` in the CLI instead to run your simulation.")
RAY_TIP = ("Tip: In future versions of Ray, Ray will no longer override accelerator visible "
           "devices env var if num_gpus=0 or num_gpus=None (default).")


@pytest.fixture
def hidden(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(noise.VERBOSE_ENV, raising=False)
    noise.unhide()
    with warnings.catch_warnings():
        noise.hide()
        yield
    noise.unhide()


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


def test_flowers_known_lines_are_hidden_and_others_not(
        hidden: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="flwr"):
        warn_deprecated_feature(RUN_SIMULATION_DEPRECATED)  # as Flower logs it
        log(logging.WARNING, "Manually terminating %s", "ClientAppActor")
        log(logging.INFO, "configure_train: Sampled %s nodes (out of %s)", 2, 2)
        log(logging.INFO, "%s: Received %s results and %s failures", "aggregate_train", 2, 0)
        # the same kinds of line that say something else still show
        warn_deprecated_feature("`DPFedAvgFixed` wrapper")
        log(logging.INFO, "%s: Received %s results and %s failures", "aggregate_train", 1, 1)
        log(logging.WARNING, "Manually terminating %s", "SomethingElse")

    assert [m.splitlines()[0] for m in messages(caplog)] == [
        "DEPRECATED FEATURE: `DPFedAvgFixed` wrapper",
        "aggregate_train: Received 1 results and 1 failures",
        "Manually terminating SomethingElse"]


def test_rays_tip_is_filtered_by_category_module_and_text(hidden: None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        noise.hide()  # again, in front of "always"
        noise.unhide()
        noise.hide()
        warnings.warn_explicit(RAY_TIP, FutureWarning, "worker.py", 1, module="ray._private.worker")
        warnings.warn_explicit(RAY_TIP, FutureWarning, "mine.py", 1, module="mine")
        warnings.warn_explicit("Tip: something else", FutureWarning, "worker.py", 2,
                               module="ray._private.worker")
        warnings.warn_explicit(RAY_TIP, DeprecationWarning, "worker.py", 3,
                               module="ray._private.worker")

    assert [(w.category, w.filename) for w in caught] == [
        (FutureWarning, "mine.py"), (FutureWarning, "worker.py"),
        (DeprecationWarning, "worker.py")]


def test_our_own_errors_are_logged_as_one_line(
        hidden: None, caplog: pytest.LogCaptureFixture) -> None:
    errors: list[Exception] = []
    for made in (ConfigError("the federation has 3 nodes but topology.num_devices is 4"),
                 RuntimeError("bug")):
        try:
            raise made
        except Exception as raised:  # noqa: BLE001 - kept with its traceback
            errors.append(raised)
    with caplog.at_level(logging.INFO, logger="flwr"):
        for error in errors:  # as Flower logs the exception that ended a run
            log(logging.ERROR, "%s raised an exception", "Simulation", exc_info=error)

    ours, other = caplog.records
    assert ours.getMessage() == ("Simulation raised an exception: ConfigError: the federation "
                                 "has 3 nodes but topology.num_devices is 4")
    assert ours.exc_info is None and caplog.text.count("Traceback") == 1
    assert other.exc_info is not None  # any other exception keeps its traceback


def test_nothing_is_hidden_when_everything_is_asked_for(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    noise.unhide()
    monkeypatch.setenv(noise.VERBOSE_ENV, "1")
    noise.hide()
    with caplog.at_level(logging.INFO, logger="flwr"), noise.strategy_chatter_hidden():
        log(logging.WARNING, "Manually terminating %s", "ClientAppActor")
        log(logging.INFO, "configure_train: Sampled %s nodes (out of %s)", 2, 2)
    assert len(caplog.records) == 2
    assert not logging.getLogger("flwr").filters


def test_flowers_debug_logging_counts_as_asking_for_everything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.common.logger import console_handler

    monkeypatch.delenv(noise.VERBOSE_ENV, raising=False)
    assert not noise.show_everything()
    monkeypatch.setattr(console_handler, "level", logging.DEBUG)
    assert noise.show_everything()


def test_a_hierarchical_run_does_not_repeat_flowers_lines_per_edge(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(noise.VERBOSE_ENV, raising=False)
    noise.unhide()  # a library user's process: nothing installed
    edge = FedAvg(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1)
    strategy = Hierarchical(edge=edge, topology=Topology(num_devices=4, num_edges=2),
                            node_wait=1.0)
    with caplog.at_level(logging.INFO, logger="flwr"):
        strategy.start(LocalGrid(device, 4), ArrayRecord({"w": Array(np.zeros(2, np.float32))}),
                       num_rounds=2)

    lines = messages(caplog)
    assert not [m for m in lines if "Sampled" in m or "Received" in m]
    assert [m for m in lines if m.startswith("[ROUND 1/2]")] == [
        "[ROUND 1/2]", "[ROUND 1/2] 4 devices, 0 failed, cloud {}"]
    assert not logging.getLogger("flwr").filters  # nothing left behind

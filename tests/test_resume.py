"""Checkpoint and resume on the in-process grid: a run killed after round k and resumed gives the
rounds of the uninterrupted run, to the bit."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg
from test_hierarchical import FakeDevices, initial

from flower_eec.app.client_app import app
from flower_eec.errors import ConfigError
from flower_eec.grid.local import LocalGrid
from flower_eec.run import experiment
from flower_eec.run.config import Config, resolve, to_json
from flower_eec.run.resumable import flat_loop

SAME = ("round", "cloud", "edges", "devices", "comm_bytes")


class KilledGrid(LocalGrid):
    """A grid that goes away at the train exchange of round ``kill_at`` (as a killed run's)."""

    def __init__(self, config: Config, kill_at: int | None = None) -> None:
        super().__init__(app, config.topology.num_devices, {"config-json": to_json(config)})
        self.kill_at, self.rounds = kill_at, 0

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        if messages and messages[0].metadata.message_type.startswith("train"):
            round_ = int(messages[0].content.config_records["config"]["server-round"])
            if round_ == self.kill_at:
                raise KeyboardInterrupt("killed")
        return super().send_and_receive(messages, timeout=timeout)


def config_of(method: str, out: Path, rounds: int, **overrides: Any) -> Config:
    return resolve(method, {"profile": "smoke", "out": str(out), "train": {"rounds": rounds},
                            **overrides})


def killed_and_resumed(method: str, tmp_path: Path, rounds: int, kill_at: int,
                       **overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    whole = config_of(method, tmp_path / "whole", rounds, **overrides)
    uninterrupted = experiment.run(KilledGrid(whole), whole)

    cut = config_of(method, tmp_path / "cut", rounds, **overrides)
    with pytest.raises(KeyboardInterrupt):
        experiment.run(KilledGrid(cut, kill_at=kill_at), cut)
    saved = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert (saved["status"], saved["completed_rounds"]) == ("failed", kill_at - 1)

    again = config_of(method, tmp_path / "cut", rounds, resume=True, **overrides)
    resumed = experiment.run(KilledGrid(again), again)  # a new grid: devices start afresh
    return uninterrupted, resumed


def assert_same_rounds(uninterrupted: dict[str, Any], resumed: dict[str, Any]) -> None:
    assert [r["round"] for r in resumed["rounds"]] == [r["round"] for r in
                                                       uninterrupted["rounds"]]
    for whole, cut in zip(uninterrupted["rounds"], resumed["rounds"], strict=True):
        cut = {**cut, "devices": {k: v for k, v in cut["devices"].items() if k != "restored"}}
        for key in SAME:
            assert cut.get(key) == whole.get(key), (whole["round"], key)
    assert resumed["status"] == "finished"
    assert resumed["final"]["cloud_accuracy"] == uninterrupted["final"]["cloud_accuracy"]


def test_hierfavg_killed_and_resumed_is_the_uninterrupted_run(tmp_path: Path) -> None:
    uninterrupted, resumed = killed_and_resumed("hierfavg", tmp_path, rounds=3, kill_at=2)
    assert_same_rounds(uninterrupted, resumed)
    cloud = torch.load(tmp_path / "cut" / "models" / "cloud.pt")
    assert all(torch.equal(cloud[k], v) for k, v in
               torch.load(tmp_path / "whole" / "models" / "cloud.pt").items())


@pytest.mark.parametrize(("method", "overrides"), [
    ("fedagg", {}),
    ("fedeec", {"topology": {"mobility": 0.5}}),
])
def test_fedagg_family_killed_and_resumed_is_the_uninterrupted_run(
        method: str, overrides: dict[str, Any], tmp_path: Path) -> None:
    uninterrupted, resumed = killed_and_resumed(method, tmp_path, rounds=2, kill_at=2,
                                                **overrides)
    assert_same_rounds(uninterrupted, resumed)
    assert all("stale" not in r["devices"] for r in resumed["rounds"])
    # the resumed run's devices started empty and took their round-1 models from their folders
    assert resumed["rounds"][1]["devices"]["restored"] == {
        str(d): {"held": 0, "used": 1} for d in range(4)}
    names = sorted(p.name for p in (tmp_path / "cut" / "models").iterdir())
    assert names == ["cloud.pt", "edge-0.pt", "edge-1.pt"]
    # the devices kept their models of the checkpoint's round and after, under the run folder
    kept = sorted(p.name for p in (tmp_path / "cut" / "devices" / "device-0").iterdir())
    assert kept == ["round-1.pt", "round-2.pt"]


@pytest.mark.parametrize(("method", "overrides"), [
    ("fedin", {}),
    ("fedin", {"fedin": {"hierarchical": True}}),
    ("fedavg", {}),
    ("eclm", {}),
])
def test_the_other_methods_killed_and_resumed_are_the_uninterrupted_run(
        method: str, overrides: dict[str, Any], tmp_path: Path) -> None:
    uninterrupted, resumed = killed_and_resumed(method, tmp_path, rounds=2, kill_at=2,
                                                **overrides)
    assert_same_rounds(uninterrupted, resumed)


def test_the_flat_loop_is_flowers_start_round_for_round() -> None:
    """What Flower's Strategy.start does, flat_loop does: same arrays and metrics, FedAvg."""

    def run(loop: bool) -> tuple[ArrayRecord, list[Any]]:
        seen: list[Any] = []
        random.seed(5)
        strategy = FedAvg(fraction_train=0.5, min_train_nodes=2, min_available_nodes=4)
        grid = LocalGrid(FakeDevices(), 4)

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> None:
            seen.append((server_round, arrays.to_numpy_ndarrays()[0].tolist()))

        if loop:
            arrays = flat_loop(strategy, grid, initial(), 1, 3, evaluate_fn=evaluate_fn)
        else:
            arrays = strategy.start(grid, initial(), num_rounds=3,
                                    evaluate_fn=evaluate_fn).arrays
        return arrays, seen

    (ours, ours_seen), (flowers, flowers_seen) = run(True), run(False)
    assert ours_seen == flowers_seen and len(ours_seen) == 4
    assert ours.to_numpy_ndarrays()[0].tolist() == flowers.to_numpy_ndarrays()[0].tolist()


def test_resume_needs_a_checkpoint_and_rounds_left(tmp_path: Path) -> None:
    config = config_of("hierfavg", tmp_path / "none", 2, resume=True)
    with pytest.raises(ConfigError, match="holds no checkpoint"):
        experiment.run(KilledGrid(config), config)
    done = config_of("hierfavg", tmp_path / "done", 2)
    experiment.run(KilledGrid(done), done)
    again = config_of("hierfavg", tmp_path / "done", 2, resume=True)
    with pytest.raises(ConfigError, match="of round 2, and the run has 2 rounds"):
        experiment.run(KilledGrid(again), again)

"""Tests of whole runs on the smoke profile through the in-process grid and the real ClientApp.

HierFAVG with one edge round per cloud round is FedAvg (the same example-weighted mean, taken in
two steps), so both methods must give the same cloud model, round by round.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord

from flower_eec.app.client_app import app
from flower_eec.errors import ConfigError
from flower_eec.grid.local import LocalGrid
from flower_eec.run import experiment
from flower_eec.run.config import Config, resolve, to_dict, to_json
from flower_eec.run.devices import build_device_model
from flower_eec.run.federated import federated_data
from flower_eec.run.results import LINKS

ROUND_FIELDS = {"round", "wall_s", "cloud", "edges", "devices", "comm_bytes"}


def smoke(method: str, out: Path, **overrides: Any) -> Config:
    return resolve(None, {"method": method, "profile": "smoke", "out": str(out), **overrides})


def run(config: Config) -> dict[str, Any]:
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    return experiment.run(grid, config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Config, dict[str, Any]]]:
    done = {}
    for name, method in (("hierfavg", "hierfavg"), ("again", "hierfavg"), ("fedavg", "fedavg")):
        config = smoke(method, tmp_path_factory.mktemp(name))
        done[name] = (config, run(config))
    return done


def model_bytes(config: Config) -> int:
    data = federated_data(config)
    return ArrayRecord(build_device_model(config, data, "cnn3").state_dict()).count_bytes()


def test_hierfavg_with_one_edge_round_equals_fedavg(runs: dict) -> None:
    _, hier = runs["hierfavg"]
    _, flat = runs["fedavg"]

    assert [r["round"] for r in hier["rounds"]] == [r["round"] for r in flat["rounds"]] == [1, 2]
    for h, f in zip(hier["rounds"], flat["rounds"], strict=True):
        assert h["cloud"]["loss"] == pytest.approx(f["cloud"]["loss"], abs=1e-6)
        assert h["cloud"]["accuracy"] == pytest.approx(f["cloud"]["accuracy"], abs=1e-6)
        assert h["devices"]["mean_local_accuracy"] == pytest.approx(
            f["devices"]["mean_local_accuracy"], abs=1e-6)
        assert h["devices"]["mean_local_loss"] == pytest.approx(
            f["devices"]["mean_local_loss"], abs=1e-6)
    assert hier["final"]["cloud_accuracy"] == pytest.approx(flat["final"]["cloud_accuracy"])


def test_a_run_is_deterministic(runs: dict) -> None:
    _, first = runs["hierfavg"]
    _, second = runs["again"]

    for a, b in zip(first["rounds"], second["rounds"], strict=True):
        for key in ("round", "cloud", "edges", "devices", "comm_bytes"):
            assert a[key] == b[key]


def test_another_seed_gives_another_run(runs: dict, tmp_path: Path) -> None:
    _, first = runs["hierfavg"]

    other = run(smoke("hierfavg", tmp_path, seed=1, train={"rounds": 1}))

    assert other["rounds"][0]["cloud"]["loss"] != first["rounds"][0]["cloud"]["loss"]


def test_the_cloud_learns_something_and_metrics_are_sane(runs: dict) -> None:
    _, summary = runs["hierfavg"]

    for record in summary["rounds"]:
        assert 0.0 <= record["cloud"]["accuracy"] <= 1.0
        assert record["cloud"]["loss"] > 0
        assert (record["devices"]["participants"], record["devices"]["failures"]) == (4, 0)
        assert [e["edge"] for e in record["edges"]] == [0, 1]
        assert all(e["examples"] > 0 and 0.0 <= e["accuracy"] <= 1.0 for e in record["edges"])
    # Two rounds of SGD on the synthetic task must lower the global test loss.
    assert summary["rounds"][1]["cloud"]["loss"] < summary["rounds"][0]["cloud"]["loss"]


def test_edge_and_cloud_traffic_is_one_model_per_online_edge(runs: dict) -> None:
    config, hier = runs["hierfavg"]
    _, flat = runs["fedavg"]
    size = model_bytes(config)

    for h, f in zip(hier["rounds"], flat["rounds"], strict=True):
        assert h["comm_bytes"]["edge_to_cloud"] == 2 * size
        assert h["comm_bytes"]["cloud_to_edge"] == 2 * size
        assert h["comm_bytes"]["device_to_cloud"] == h["comm_bytes"]["cloud_to_device"] == 0
        # Four train and four evaluate messages each carry the model down.
        assert 8 * size < h["comm_bytes"]["edge_to_device"] < 8 * size + 2000
        # The same messages travel in flat FedAvg, only on the device-cloud link.
        assert f["comm_bytes"]["cloud_to_device"] == h["comm_bytes"]["edge_to_device"]
        assert f["comm_bytes"]["edge_to_cloud"] == f["comm_bytes"]["device_to_edge"] == 0
    # Round 2 has no discovery round: devices upload exactly the same as in flat FedAvg.
    assert hier["rounds"][1]["comm_bytes"]["device_to_edge"] == (
        flat["rounds"][1]["comm_bytes"]["device_to_cloud"])
    assert 4 * size < flat["rounds"][1]["comm_bytes"]["device_to_cloud"] < 4 * size + 2000


@pytest.mark.parametrize("name", ["hierfavg", "fedavg"])
def test_the_results_folder(runs: dict, name: str) -> None:
    config, summary = runs[name]
    out = Path(config.out)

    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy.png", "checkpoint.pt", "comm.png", "metrics.csv", "models", "results.json"]
    assert [p.name for p in (out / "models").iterdir()] == ["cloud.pt"]
    for png in ("accuracy.png", "comm.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert set(saved) == {"method", "status", "completed_rounds", "planned_rounds", "config",
                          "versions", "rounds", "final"}
    assert (saved["status"], saved["completed_rounds"]) == ("finished", len(saved["rounds"]))
    assert saved["method"] == config.method
    assert saved["config"] == to_dict(config)
    assert set(saved["versions"]) == {"flower_eec", "flwr", "torch"}
    for record in saved["rounds"]:
        assert ROUND_FIELDS - {"edges"} <= set(record)
        assert list(record["comm_bytes"]) == list(LINKS)
    if name == "hierfavg":
        assert all(ROUND_FIELDS <= set(record) for record in saved["rounds"])
    accuracies = [r["cloud"]["accuracy"] for r in saved["rounds"]]
    assert saved["final"]["cloud_accuracy"] == accuracies[-1]
    assert saved["final"]["best_cloud_accuracy"] == max(accuracies)

    with (out / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    tiers = ["cloud", "edge", "edge", "devices"] if name == "hierfavg" else ["cloud", "devices"]
    assert [r["tier"] for r in rows] == tiers * 2
    clouds = [r for r in rows if r["tier"] == "cloud"]
    assert [float(r["accuracy"]) for r in clouds] == accuracies


def test_two_edge_rounds_run_and_differ_from_one(runs: dict, tmp_path: Path) -> None:
    config = smoke("hierfavg", tmp_path, train={"rounds": 1, "edge_rounds": 2})

    summary = run(config)

    [record] = summary["rounds"]
    _, one = runs["hierfavg"]
    assert record["cloud"]["loss"] != pytest.approx(one["rounds"][0]["cloud"]["loss"], abs=1e-6)
    # Two edge rounds upload twice from every device, then each edge once to the cloud.
    assert record["comm_bytes"]["edge_to_cloud"] == 2 * model_bytes(config)
    assert record["comm_bytes"]["device_to_edge"] > 8 * model_bytes(config)


def test_devices_attached_to_the_cloud_use_the_cloud_links(tmp_path: Path) -> None:
    # Every edge is offline and orphans attach to the cloud: no byte crosses an edge.
    config = smoke("hierfavg", tmp_path, train={"rounds": 1},
                   topology={"edge_dropout": 1.0, "orphans": "cloud"})

    [record] = run(config)["rounds"]

    assert record["devices"]["participants"] == 4
    assert record["comm_bytes"]["edge_to_cloud"] == record["comm_bytes"]["cloud_to_edge"] == 0
    assert record["comm_bytes"]["device_to_edge"] == record["comm_bytes"]["edge_to_device"] == 0
    assert record["comm_bytes"]["device_to_cloud"] > 4 * model_bytes(config)
    assert record["comm_bytes"]["cloud_to_device"] > 8 * model_bytes(config)


@pytest.mark.parametrize("model", [{"cloud": "resnet18"}, {"edge": "resnet10"},
                                   {"large_device": "resnet10", "large_fraction": 0.5}])
@pytest.mark.parametrize("method", ["hierfavg", "fedavg"])
def test_weight_averaging_needs_one_model_on_every_tier(method: str, model: dict,
                                                        tmp_path: Path) -> None:
    config = smoke(method, tmp_path / "out", model=model)

    with pytest.raises(ConfigError, match="every tier carries one model"):
        run(config)
    assert not (tmp_path / "out").exists()


def test_results_dir_is_out_or_a_stamped_folder(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert experiment.results_dir(smoke("hierfavg", tmp_path / "x")) == tmp_path / "x"
    monkeypatch.chdir(tmp_path)

    stamped = experiment.results_dir(resolve(None, {"method": "fedavg"}))

    assert stamped.parent == tmp_path / "results"
    assert stamped.name.startswith("fedavg-smoke-")


def test_fedavg_is_deterministic_with_many_devices(tmp_path: Path) -> None:
    # Flower's FedAvg samples (and so orders) nodes with Python's random, seeded per run
    configs = [smoke("fedavg", tmp_path / name, topology={"num_devices": 7, "num_edges": 1})
               for name in "ab"]
    first, second = (run(config) for config in configs)
    assert [r["cloud"] for r in first["rounds"]] == [r["cloud"] for r in second["rounds"]]


def test_flat_fedavg_counts_a_crashed_device(tmp_path: Path) -> None:
    """Flat rows come from the same recorder as hierarchical ones: a device that raises on its
    round-2 train message is one failure of that round, and the round still completes."""
    config = smoke("fedavg", tmp_path)

    def crashing(message, context):  # type: ignore[no-untyped-def]
        if (message.metadata.message_type == "train" and context.node_config["partition-id"] == 1
                and message.content.config_records["config"]["server-round"] == 2):
            raise RuntimeError("device crashed")
        return app(message, context)

    grid = LocalGrid(crashing, config.topology.num_devices, {"config-json": to_json(config)})
    summary = experiment.run(grid, config)

    counts = [(r["devices"]["participants"], r["devices"]["failures"]) for r in summary["rounds"]]
    assert counts == [(4, 0), (4, 1)]
    assert [r["devices"]["failed"] for r in summary["rounds"]] == [
        {}, {"1": "error reply: RuntimeError: device crashed"}]
    assert all(r["comm_bytes"]["device_to_cloud"] > 0 for r in summary["rounds"])
    assert summary["rounds"][1]["cloud"]["accuracy"] >= 0.0


def test_a_run_that_raises_is_recorded_as_failed_with_its_rounds(tmp_path: Path) -> None:
    config = smoke("hierfavg", tmp_path / "out", train={"rounds": 3})

    class BreakingGrid(LocalGrid):
        """The grid goes away at the train exchange of round 2."""

        trains = 0

        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            messages = list(messages)
            if messages and messages[0].metadata.message_type == "train":
                self.trains += 1
                if self.trains == 2:
                    raise ConnectionError("the SuperLink went away")
            return super().send_and_receive(messages, timeout=timeout)

    grid = BreakingGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    with pytest.raises(ConnectionError):
        experiment.run(grid, config)

    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (saved["status"], saved["reason"]) == ("failed",
                                                  "ConnectionError: the SuperLink went away")
    assert (saved["completed_rounds"], saved["planned_rounds"]) == (1, 3)
    assert [r["round"] for r in saved["rounds"]] == [1] and "final" not in saved
    with pytest.raises(ConfigError, match="already holds a run"):
        experiment.run(grid, config)

"""Whole FedIN / HeteroAvg runs on the smoke profile through the in-process grid.

A small learning rate keeps the tiny models out of the chaotic regime, so runs that compute the
same averages in a different order (flat vs. hierarchical; HeteroAvg on one depth vs. Flower's
FedAvg) agree to float precision round after round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Context, Message

from flower_eec.app.client_app import app
from flower_eec.errors import ConfigError
from flower_eec.grid.local import LocalGrid
from flower_eec.protocol import names
from flower_eec.protocol.names import FEATURES
from flower_eec.run import experiment
from flower_eec.run.config import Config, resolve, to_json
from flower_eec.run.federated import federated_data
from flower_eec.run.methods.fedin import feature_spec, train_settings

DEPTHS = ["resnet10", "resnet18", "resnet26"]


def smoke(method: str, out: Path, hierarchical: bool = False, **overrides: Any) -> Config:
    fedin = {"hierarchical": hierarchical, **overrides.pop("fedin", {})}
    return resolve(None, {"method": method, "profile": "smoke", "out": str(out),
                          "train": {"lr": 0.001}, "fedin": fedin, **overrides})


def run(config: Config, client: Any = app) -> dict[str, Any]:
    grid = LocalGrid(client, config.topology.num_devices, {"config-json": to_json(config)})
    return experiment.run(grid, config)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Config, dict[str, Any]]]:
    done = {}
    for method in ("fedin", "heteroavg"):
        for hierarchical in (False, True):
            name = f"{method}-{'hier' if hierarchical else 'flat'}"
            config = smoke(method, tmp_path_factory.mktemp(name), hierarchical)
            done[name] = (config, run(config))
    return done


@pytest.mark.parametrize("name", ["fedin-flat", "fedin-hier", "heteroavg-flat", "heteroavg-hier"])
def test_every_variant_runs_and_reports_each_depth(runs: dict, name: str) -> None:
    config, summary = runs[name]

    assert summary["method"] == config.method
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for record in summary["rounds"]:
        assert (record["devices"]["participants"], record["devices"]["failures"]) == (4, 0)
        cloud = record["cloud"]
        assert cloud["accuracy"] == cloud["accuracy_resnet26"]  # the global model is the deepest
        assert all(0 <= cloud[f"accuracy_{d}"] <= 1 for d in DEPTHS)
        assert 0 <= record["devices"]["mean_local_accuracy"] <= 1
    assert (Path(config.out) / "results.json").exists()


def test_fedin_exchanges_one_feature_batch_per_device(runs: dict) -> None:
    config, summary = runs["fedin-flat"]
    spec = feature_spec(config, federated_data(config))
    first, second = (r["fedin"] for r in summary["rounds"])

    # Smoke images are 32x32, ImageNet stem, width 1/8: s_in (8, 8, 8), s_out (64, 1, 1).
    assert (spec.in_shape, spec.out_shape, spec.batch) == ((8, 8, 8), (64, 1, 1), 32)
    assert spec.batch_bytes == 32 * (512 + 64) * 2
    one_batch = first["feature_bytes_up"] / 4
    assert spec.batch_bytes < one_batch < spec.batch_bytes + 512
    # Nothing to forward in round 1; in round 2 every device receives another's batch and aligns.
    assert first["feature_bytes_down"] == 0 and first["qp_steps"] == 0
    assert second["feature_bytes_down"] == second["feature_bytes_up"] == 4 * one_batch
    assert second["qp_steps"] > 0
    assert 0 <= second["qp_loc_binds"] <= second["qp_steps"]
    assert 0 <= second["qp_in_binds"] <= second["qp_steps"]


def test_heteroavg_sends_no_features_and_hierarchical_keeps_them_on_the_edge(runs: dict) -> None:
    _, hetero = runs["heteroavg-flat"]
    _, fedin_flat = runs["fedin-flat"]
    _, fedin_hier = runs["fedin-hier"]

    assert all(r["fedin"]["feature_bytes_up"] == 0 for r in hetero["rounds"])
    # The same weights travel; FedIN adds the feature batches on the device link only.
    extra = fedin_flat["rounds"][1]["fedin"]["feature_bytes_up"]
    up = fedin_flat["rounds"][1]["comm_bytes"]["device_to_cloud"]
    assert up - hetero["rounds"][1]["comm_bytes"]["device_to_cloud"] == pytest.approx(
        extra, abs=200)
    hier = fedin_hier["rounds"][1]["comm_bytes"]
    assert hier["device_to_cloud"] == 0 and hier["device_to_edge"] > 0
    assert 0 < hier["edge_to_cloud"] and 0 < hier["cloud_to_edge"]


def test_hierarchical_with_one_edge_round_equals_flat(runs: dict) -> None:
    _, flat = runs["heteroavg-flat"]
    _, hier = runs["heteroavg-hier"]

    for f, h in zip(flat["rounds"], hier["rounds"], strict=True):
        for depth in DEPTHS:
            assert h["cloud"][f"loss_{depth}"] == pytest.approx(f["cloud"][f"loss_{depth}"],
                                                                abs=1e-5)


def test_heteroavg_on_one_depth_is_fedavg(tmp_path: Path) -> None:
    config = smoke("heteroavg", tmp_path / "h", fedin={"depths": ["resnet10"]})
    hetero = run(config)
    fedavg = run(smoke("fedavg", tmp_path / "f", model={
        "device": "resnet10", "edge": "resnet10", "cloud": "resnet10", "stem": "imagenet",
        "width": 0.125}))
    # The same weights and training knobs travel; HeteroAvg's train messages also say that no
    # features are sent, and its evaluate messages carry the batch size (FedAvg's nothing).
    train = train_settings(config).to_config()
    knob_bytes = (ConfigRecord({**train, names.SEND_FEATURES: False,
                                "server-round": 1}).count_bytes()
                  - ConfigRecord({**train, "server-round": 1}).count_bytes()
                  + ConfigRecord({names.EVAL_BATCH_SIZE: config.eval.batch_size,
                                  "server-round": 1}).count_bytes()
                  - ConfigRecord({"server-round": 1}).count_bytes())

    for h, f in zip(hetero["rounds"], fedavg["rounds"], strict=True):
        assert h["cloud"]["loss"] == pytest.approx(f["cloud"]["loss"], abs=1e-5)
        assert (h["comm_bytes"]["cloud_to_device"]
                == f["comm_bytes"]["cloud_to_device"] + 4 * knob_bytes)


def test_a_bad_feature_batch_fails_its_device_only(tmp_path: Path) -> None:
    def corrupt(msg: Message, context: Context) -> Message:
        reply = app(msg, context)
        if context.node_config["partition-id"] == 1 and FEATURES in reply.content.array_records:
            record = reply.content.array_records[FEATURES]
            record["s-in"] = Array(np.full(record["s-in"].shape, np.nan, dtype=np.float16))
        return reply

    summary = run(smoke("fedin", tmp_path, train={"rounds": 2, "lr": 0.001}), corrupt)

    assert [r["devices"]["failures"] for r in summary["rounds"]] == [1, 1]
    assert all(r["devices"]["participants"] == 4 for r in summary["rounds"])
    # Three valid batches are kept, and all four devices (the failed one too) get one in round 2.
    first, second = (r["fedin"] for r in summary["rounds"])
    one_batch = first["feature_bytes_up"] / 3
    assert second["feature_bytes_down"] == pytest.approx(4 * one_batch)


def test_feature_batch_over_the_byte_limit_is_a_config_error(tmp_path: Path) -> None:
    config = smoke("fedin", tmp_path, fedin={"feature_batch": 200, "max_feature_bytes": 100_000})
    with pytest.raises(ConfigError, match="fedin.feature_batch.*at most 86"):
        feature_spec(config, federated_data(config))
    with pytest.raises(ConfigError, match="fedin.depths"):
        smoke("fedin", tmp_path, fedin={"depths": []})
    with pytest.raises(ConfigError, match="fedin.mu"):
        smoke("fedin", tmp_path, fedin={"mu": -1.0})

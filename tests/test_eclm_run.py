"""ECLM end to end in process: the real ClientApp on LocalGrid, bad payloads, config errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message

from flower_eec.app.client_app import app
from flower_eec.run.devices import build_device_model
from flower_eec.clients.eclm import USAGE
from flower_eec.errors import ConfigError
from flower_eec.grid.local import LocalGrid
from flower_eec.models.modular import ModularNet, module_sizes
from flower_eec.run import experiment
from flower_eec.run.config import Config, resolve, to_json
from flower_eec.run.federated import federated_data
from flower_eec.strategies.eclm import ECLM, EclmRoundReport
from flower_eec.topology import Topology


def smoke(out: Path | None = None, **overrides: Any) -> Config:
    extra = {"out": str(out)} if out else {}
    return resolve(None, {"method": "eclm", "profile": "smoke", **extra, **overrides})


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, dict[str, Any]]:
    # Labels shift after round 2; budgets stay fixed.
    config = smoke(tmp_path_factory.mktemp("eclm"), train={"rounds": 3},
                   eclm={"shift_every": 2, "budget_every": 0})
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    return config, experiment.run(grid, config)


def test_a_multi_round_run_records_every_round(three_rounds: tuple) -> None:
    config, summary = three_rounds

    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    for record in summary["rounds"]:
        assert (record["devices"]["participants"], record["devices"]["failures"]) == (4, 0)
        assert 0 <= record["devices"]["mean_local_accuracy"] <= 1
        assert 0 <= record["devices"]["mean_local_accuracy_before"] <= 1
        assert 0 <= record["cloud"]["accuracy"] <= 1
    saved = json.loads((Path(config.out) / "results.json").read_text())
    assert saved["rounds"] == json.loads(json.dumps(summary["rounds"]))


def test_sub_models_are_re_derived_only_when_the_data_shifts(three_rounds: tuple) -> None:
    _, summary = three_rounds

    assert [r["eclm"]["rederived"] for r in summary["rounds"]] == [4, 0, 4]


def test_sub_models_are_smaller_than_the_full_model_and_so_is_the_traffic(
        three_rounds: tuple) -> None:
    _, summary = three_rounds

    for record in summary["rounds"][1:]:  # round 1 also carries discovery
        e = record["eclm"]
        assert e["mean_submodel_params"] < e["full_model_params"]
        # Sending the full model down to every device, and back, moves 2 * 4 full models.
        full_round = 2 * 4 * e["full_model_bytes"]
        sent = record["comm_bytes"]["cloud_to_device"] + record["comm_bytes"]["device_to_cloud"]
        assert 0 < sent < full_round
        assert record["comm_bytes"]["edge_to_device"] == record["comm_bytes"]["edge_to_cloud"] == 0


def test_the_offline_stage_is_reported(three_rounds: tuple) -> None:
    config, summary = three_rounds
    offline = summary["eclm_offline"]

    assert offline["examples"] == len(federated_data(config).public) > 0
    assert offline["epochs"] == config.eclm.offline_epochs
    usage = np.array(offline["module_use"])
    assert usage.shape == (config.eclm.layers, config.eclm.modules)
    assert np.allclose(usage.sum(axis=1), 1.0, atol=1e-3)
    assert set(offline["use_statistics"]) == {"min_share", "max_share",
                                              "min_normalised_entropy", "modules_unused"}
    assert 0 <= offline["cloud"]["accuracy"] <= 1


def _corrupting(config: Config) -> Any:
    """The real ClientApp, but device 1 returns NaN, device 2 a module it was not sent and
    device 3 a module-use histogram of the wrong shape."""

    def client(msg: Message, context: Context) -> Message:
        reply = app(msg, context)
        device = int(context.node_config["partition-id"])  # type: ignore[arg-type]
        if reply.has_error() or msg.metadata.message_type == "query.describe":
            return reply
        kind = msg.metadata.message_type
        if kind == "train" and device in (1, 2):
            arrays = dict(reply.content["arrays"].items())
            if device == 1:
                key = next(iter(arrays))
                bad = arrays[key].numpy().astype(np.float32).copy()
                bad.flat[0] = np.nan
                arrays[key] = Array(bad)
            else:
                arrays["layers.9.9.conv1.weight"] = Array(np.zeros(3, dtype=np.float32))
            reply.content["arrays"] = ArrayRecord(arrays)
        if kind == "query.route" and device == 3:
            reply.content[USAGE] = ArrayRecord({USAGE: Array(np.ones((2, 2), np.float32))})
        return reply

    return client


def test_bad_payloads_fail_their_device_only_and_the_run_goes_on() -> None:
    config = smoke(train={"rounds": 2})
    data = federated_data(config)
    model = build_device_model(config, data, "modular")
    assert isinstance(model, ModularNet)
    sizes, shared = module_sizes(model)
    reports: list[EclmRoundReport] = []
    strategy = ECLM(Topology(num_devices=4, num_edges=1), np.array(sizes), shared,
                    on_round=reports.append, node_wait=5)
    grid = LocalGrid(_corrupting(config), 4, {"config-json": to_json(config)})
    initial = ArrayRecord(model.state_dict())

    result = strategy.start(grid, initial, num_rounds=2, timeout=60)

    assert [r.round for r in reports] == [1, 2]
    for report in reports:
        assert report.failures == 3
        assert set(report.failure_reasons) == {1, 2, 3}
        assert "NaN" in report.failure_reasons[1]
        assert "keys differ" in report.failure_reasons[2]
        assert "module use has shape" in report.failure_reasons[3]
        assert 0 <= report.device_metrics["accuracy"] <= 1  # device 0 went through
    # Device 0's update moved the cloud model.
    assert any(not np.array_equal(a.numpy(), initial[k].numpy())
               for k, a in result.arrays.items() if a.numpy().dtype.kind == "f")


@pytest.mark.parametrize(("overrides", "key"), [
    ({"model": {"device": "cnn3"}}, "model.device"),
    ({"data": {"holdout": 0.0}}, "data.holdout"),
    ({"eclm": {"top_k": 3}}, "eclm.top_k"),
    ({"eclm": {"cloud_weight": 1.0}}, "eclm.cloud_weight"),
    ({"eclm": {"budget_low": 0.5, "budget_high": 0.4}}, "eclm.budget_high"),
    ({"eclm": {"shift_every": -1}}, "eclm.shift_every"),
    ({"eclm": {"modules": 0}}, "eclm.modules"),
    ({"eclm": {"gate_noise": -0.1}}, "eclm.gate_noise"),
])
def test_bad_eclm_settings_are_config_errors_naming_the_key(overrides: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        smoke(**overrides)


def test_the_three_profiles_resolve() -> None:
    for profile in ("smoke", "cpu", "paper"):
        config = resolve(None, {"method": "eclm", "profile": profile})
        assert config.model.device == config.model.cloud == "modular"
        assert config.data.holdout > 0

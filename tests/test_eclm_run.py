"""ECLM end to end in process: the real ClientApp on LocalGrid, bad payloads, config errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flower_eec.app.client_app import app
from flower_eec.clients import TrainSettings, WeightsDevice
from flower_eec.clients import eclm as eclm_device
from flower_eec.clients.device import round_generator
from flower_eec.errors import ConfigError, ProtocolError
from flower_eec.grid.local import LocalGrid
from flower_eec.models.modular import ModularNet, SelectorNorm
from flower_eec.protocol import names
from flower_eec.run import devices, experiment
from flower_eec.run.config import Config, resolve, to_json
from flower_eec.run.federated import federated_data
from flower_eec.run.methods.eclm import app_budget, strategy_of
from flower_eec.run.registry import method as registry_method
from flower_eec.run.shift import data_at_round
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
        if reply.has_error() or msg.metadata.message_type == names.DESCRIBE:
            return reply
        kind = msg.metadata.message_type
        if kind == names.ADAPT and device in (1, 2):
            arrays = dict(reply.content.array_records[names.ARRAYS].items())
            if device == 1:
                key = next(iter(arrays))
                bad = arrays[key].numpy().astype(np.float32).copy()
                bad.flat[0] = np.nan
                arrays[key] = Array(bad)
            else:
                arrays["layers.9.9.conv1.weight"] = Array(np.zeros(3, dtype=np.float32))
            reply.content[names.ARRAYS] = ArrayRecord(arrays)
        if kind == names.ROUTE and device == 3:
            reply.content[names.USAGE] = ArrayRecord(
                {names.USAGE: Array(np.ones((2, 2), np.float32))})
        return reply

    return client


def test_bad_payloads_fail_their_device_only_and_the_run_goes_on() -> None:
    config = smoke(train={"rounds": 2})
    reports: list[EclmRoundReport] = []
    strategy = strategy_of(config, reports.append)
    grid = LocalGrid(_corrupting(config), 4, {"config-json": to_json(config)})
    initial = ArrayRecord(strategy.cloud_model().state_dict())

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


def test_the_devices_use_exactly_the_strategys_knobs_not_the_run_configs(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = smoke(train={"rounds": 2})  # top_k 1, channels 8, lr 0.05, batch 32, eval 200, ...
    data = federated_data(config)
    trained: list[tuple[ModularNet, dict[str, Any]]] = []
    batches: list[tuple[str, int]] = []
    real_train, real_use = eclm_device.train_modular, eclm_device.module_use
    real_evaluate = eclm_device.evaluate

    def train_spy(model: ModularNet, images: Any, **kwargs: Any) -> dict[str, float]:
        trained.append((model, kwargs))
        return real_train(model, images, **kwargs)

    def use_spy(model: ModularNet, images: Any, batch_size: int = 500) -> np.ndarray:
        batches.append(("module_use", batch_size))
        return real_use(model, images, batch_size)

    def evaluate_spy(model: Any, images: Any, batch_size: int = 500) -> dict[str, float]:
        batches.append(("evaluate", batch_size))
        return real_evaluate(model, images, batch_size)

    monkeypatch.setattr(eclm_device, "train_modular", train_spy)
    monkeypatch.setattr(eclm_device, "module_use", use_spy)
    monkeypatch.setattr(eclm_device, "evaluate", evaluate_spy)
    reports: list[EclmRoundReport] = []
    strategy = ECLM(Topology(num_devices=4, num_edges=1), num_classes=data.dataset.num_classes,
                    in_channels=data.dataset.in_channels, layers=2, modules=3, top_k=2,
                    channels=4, selector_norm=False, eval_batch_size=13,
                    train=TrainSettings(lr=0.123, momentum=0.5, weight_decay=1e-3, batch_size=7,
                                        epochs=2, augment=False, cutout=3, seed=11),
                    on_round=reports.append, node_wait=5)
    client = ClientApp()
    registry_method("eclm").device().register(client)  # our app's device, run config and all
    grid = LocalGrid(client, 4, {"config-json": to_json(config)})

    strategy.start(grid, ArrayRecord(strategy.cloud_model().state_dict()), num_rounds=2,
                   timeout=60)

    assert [(r.participants, r.failures) for r in reports] == [(4, 0), (4, 0)]
    assert len(trained) == 8  # 4 devices x 2 rounds
    for model, kwargs in trained:
        assert (model.num_layers, model.num_modules, model.top_k) == (2, 3, 2)
        assert model.stem[0].out_channels == 4
        assert not any(isinstance(m, SelectorNorm) for m in model.selector)
        assert {k: v for k, v in kwargs.items() if k != "generator"} == {
            "epochs": 2, "batch_size": 7, "lr": 0.123, "momentum": 0.5, "weight_decay": 1e-3,
            "augmented": False, "cutout": 3, "lb_weight": 0.0}
    assert ({kwargs["generator"].initial_seed() for _, kwargs in trained}
            == {round_generator(11, r, d).initial_seed() for r in (1, 2) for d in range(4)})
    # Routing (8), the adapted sub-model's use (8), accuracy before and after (16).
    assert sorted(set(batches)) == [("evaluate", 13), ("module_use", 13)]
    assert [kind for kind, _ in batches].count("module_use") == 16
    assert [kind for kind, _ in batches].count("evaluate") == 16


def test_a_client_app_without_eclms_handlers_fails_fast_naming_them() -> None:
    config = smoke()
    client = ClientApp()
    # A FedAvg app: it answers train and evaluate, not ECLM's messages.
    WeightsDevice(devices.device_model, devices.train_data, devices.test_data).register(client)
    strategy = strategy_of(config)
    grid = LocalGrid(client, 4, {"config-json": to_json(config)})

    with pytest.raises(ProtocolError) as caught:
        strategy.start(grid, ArrayRecord(strategy.cloud_model().state_dict()), num_rounds=2,
                       timeout=60)

    assert names.ROUTE in str(caught.value)
    assert "ECLMDevice(...).register(app)" in str(caught.value)
    assert "In your own Flower project" in str(caught.value)


def test_our_apps_device_shifts_its_data_and_redraws_its_budget_every_round() -> None:
    # smoke: eclm.shift_every = eclm.budget_every = 1, budgets in [0.3, 0.6] of the full model
    config = smoke()
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 2, "num-partitions": 4},
                      state=RecordDict(), run_config={"config-json": to_json(config)})
    full = sum(p.numel() for p in strategy_of(config).cloud_model().parameters())

    first, second = data_at_round(context, 1), data_at_round(context, 2)
    budgets = [app_budget(context, r) for r in (1, 2)]

    assert torch.equal(first[0].y, devices.train_data(context).y)  # round 1: the run's shard
    assert torch.equal(first[1].y, devices.test_data(context).y)
    assert not torch.equal(second[0].y, first[0].y)  # round 2: a new Dirichlet draw
    assert all(0.3 * full <= b <= 0.6 * full for b in budgets)
    assert budgets[0] != budgets[1]


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

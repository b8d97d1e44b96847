"""FedIN's public device: its knobs come from the strategy's constructor, never from the run config;
a ClientApp without its handlers fails fast; a wrong model or payload is refused with a reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from flower_eec.clients import fedin as fedin_device
from flower_eec.clients.device import TrainSettings, round_generator
from flower_eec.clients.fedin import FedINDevice
from flower_eec.core.learning import Images
from flower_eec.errors import PayloadError, ProtocolError
from flower_eec.grid.local import LocalGrid
from flower_eec.models.fedin import build_fedin_model, deepest
from flower_eec.protocol import names
from flower_eec.protocol.payloads import FeaturePayload, FeatureSpec, features_to_record
from flower_eec.run.config import Config, resolve, to_json
from flower_eec.run.experiment import build_topology
from flower_eec.run.federated import federated_data
from flower_eec.run.methods.fedin import (
    app_device,
    device_depth,
    feature_spec,
    fedin_model,
)
from flower_eec.strategies.fedin import FedIN, HierFedIN, sub_record, tensor_spec

NUM_DEVICES = 4
SETTINGS = TrainSettings(lr=0.003, momentum=0.5, weight_decay=1e-4, batch_size=16, epochs=2,
                         augment=False, cutout=0, seed=7)


def smoke(out: Path) -> Config:
    return resolve(None, {"method": "fedin", "profile": "smoke", "out": str(out),
                          "train": {"lr": 0.001}})


def server_side(config: Config) -> tuple[ArrayRecord, dict[int, Any], FeatureSpec]:
    """The global model, each device's tensors and the feature spec, as the runner builds them."""
    data = federated_data(config)
    initial = ArrayRecord(fedin_model(config, data, deepest(config.fedin.depths)).state_dict())
    model_of = {k: tensor_spec(sub_record(initial, fedin_model(
        config, data, device_depth(config, k)).state_dict())) for k in range(NUM_DEVICES)}
    return initial, model_of, feature_spec(config, data)


def our_app() -> ClientApp:
    """A ClientApp with our app's FedIN device only (model and data from the run config)."""
    client = ClientApp()
    app_device().register(client)
    return client


def strategy(hierarchical: bool, config: Config, model_of: dict[int, Any],
             features: FeatureSpec | None, **knobs: Any) -> FedIN | HierFedIN:
    if hierarchical:
        return HierFedIN(model_of, build_topology(config), features, **knobs)
    return FedIN(model_of, features, **knobs)


@pytest.mark.parametrize("hierarchical", [False, True])
def test_the_strategy_s_knobs_reach_the_devices_not_the_run_config(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hierarchical: bool) -> None:
    config = smoke(tmp_path)
    initial, model_of, run_spec = server_side(config)
    # What the run config says, and what the strategy is built with instead.
    assert (config.fedin.mu, run_spec.batch, run_spec.fp16) == (1.0, 32, True)
    assert (config.train.lr, config.train.batch_size, config.data.augment) == (0.001, 32, True)
    spec = FeatureSpec(run_spec.in_shape, run_spec.out_shape, batch=5, fp16=False,
                       max_bytes=run_spec.max_bytes)
    calls: dict[str, list[dict[str, Any]]] = {"plain": [], "aligned": [], "features": []}

    def spy(name: str, real: Any) -> Any:
        def call(model: nn.Module, data: Images, *args: Any, **options: Any) -> Any:
            seen = dict(options)
            if name == "aligned":
                seen["samples"] = args[0].num_samples
            if name == "features":
                seen["batch"], seen["generator"] = args
            seen["seed"] = seen["generator"].initial_seed()
            calls[name].append(seen)
            return real(model, data, *args, **options)
        return call

    monkeypatch.setattr(fedin_device, "train_epochs", spy("plain", fedin_device.train_epochs))
    monkeypatch.setattr(fedin_device, "train_aligned",
                        spy("aligned", fedin_device.train_aligned))
    monkeypatch.setattr(fedin_device, "own_features",
                        spy("features", fedin_device.own_features))
    grid = LocalGrid(our_app(), NUM_DEVICES, {"config-json": to_json(config)})

    tier = strategy(hierarchical, config, model_of, spec, train=SETTINGS, mu=0.25, seed=3)
    tier.start(grid, initial, num_rounds=2, timeout=60)

    expected = {"epochs": 2, "batch_size": 16, "lr": 0.003, "momentum": 0.5,
                "weight_decay": 1e-4, "augmented": False, "cutout": 0}
    # Round 1: plain training (no batch to forward yet); round 2: every device aligns.
    assert len(calls["plain"]) == len(calls["aligned"]) == NUM_DEVICES
    for call in calls["plain"] + calls["aligned"]:
        assert {key: call[key] for key in expected} == expected
    assert [(c["mu"], c["samples"]) for c in calls["aligned"]] == [(0.25, 5)] * NUM_DEVICES
    assert [c["batch"] for c in calls["features"]] == [5] * 2 * NUM_DEVICES
    # The training seed is the strategy's too: one stream per (seed 7, round, partition).
    assert sorted(c["seed"] for c in calls["plain"] + calls["aligned"]) == sorted(
        round_generator(7, r, p).initial_seed() for r in (1, 2) for p in range(NUM_DEVICES))
    edges = tier.edges.values() if isinstance(tier, HierFedIN) else [tier]
    stored = [record for edge in edges for record in edge.store.values()]
    assert len(stored) == NUM_DEVICES  # fp32 on the wire, as the strategy asked
    assert {record[key].dtype for record in stored for key in record} == {"float32"}


def plain_app() -> tuple[ClientApp, list[str]]:
    """A standard Flower ClientApp: one ``@app.train()`` and nothing else."""
    client, called = ClientApp(), []

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        called.append(msg.metadata.message_type)
        return Message(RecordDict(), reply_to=msg)

    return client, called


@pytest.mark.parametrize("hierarchical", [False, True])
def test_a_client_app_without_fedin_handlers_fails_fast(tmp_path: Path,
                                                         hierarchical: bool) -> None:
    config = smoke(tmp_path)
    initial, model_of, spec = server_side(config)
    client, called = plain_app()
    tier = strategy(hierarchical, config, model_of, spec, train=SETTINGS)

    with pytest.raises(ProtocolError) as raised:
        tier.start(LocalGrid(client, NUM_DEVICES), initial, num_rounds=3, timeout=60)

    message = str(raised.value)
    assert f"'{names.FEDIN_TRAIN}'" in message
    assert "FedINDevice(model_fn, train_data_fn, test_data_fn).register(app)" in message
    assert "In your own Flower project" in message
    assert called == []  # train.fedin never reached the plain train handler


class TrainOnlyDevice(FedINDevice):
    """A device registered without its evaluate handler."""

    handlers: ClassVar[dict[str, str]] = {names.FEDIN_TRAIN: "train"}


@pytest.mark.parametrize("hierarchical", [False, True])
def test_a_missing_evaluate_handler_fails_fast_too(tmp_path: Path, hierarchical: bool) -> None:
    config = smoke(tmp_path)
    initial, model_of, _ = server_side(config)
    client, ours = ClientApp(), app_device()
    TrainOnlyDevice(ours.model_fn, ours.train_data_fn, ours.test_data_fn).register(client)
    grid = LocalGrid(client, NUM_DEVICES, {"config-json": to_json(config)})
    tier = strategy(hierarchical, config, model_of, None, train=SETTINGS)

    with pytest.raises(ProtocolError, match=f"'{names.FEDIN_EVALUATE}'"):
        tier.start(grid, initial, num_rounds=1, timeout=60)


def test_start_refuses_configs_that_override_the_constructor(tmp_path: Path) -> None:
    config = smoke(tmp_path)
    initial, model_of, spec = server_side(config)
    client, _ = plain_app()
    grid = LocalGrid(client, NUM_DEVICES)

    with pytest.raises(ValueError, match=r"train_config sets \['lr', 'mu'\]"):
        FedIN(model_of, spec, train=SETTINGS).start(
            grid, initial, train_config=ConfigRecord({"lr": 0.1, "mu": 2.0}))
    with pytest.raises(ValueError, match=r"evaluate_config sets \['eval-batch-size'\]"):
        HierFedIN(model_of, build_topology(config), spec, train=SETTINGS).start(
            grid, initial, evaluate_config=ConfigRecord({"eval-batch-size": 3}))


# --- the device on its own, without a grid -------------------------------------------------

def images(n: int = 12) -> Images:
    generator = torch.Generator().manual_seed(0)
    return Images(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator),
                  torch.arange(n) % 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def resnet(depth: str = "resnet10", width: float = 0.125) -> nn.Module:
    return build_fedin_model(depth, 10, 3, stem="imagenet", width=width)


def context() -> Context:
    return Context(run_id=1, node_id=1, node_config={names.PARTITION_ID: 2}, state=RecordDict(),
                   run_config={})


def train_message(model: nn.Module, spec: FeatureSpec | None, received: bool = False,
                  **knobs: Any) -> Message:
    config = {**SETTINGS.to_config(), names.SERVER_ROUND: 1,
              names.SEND_FEATURES: spec is not None, **knobs}
    content = RecordDict({names.ARRAYS: ArrayRecord(model.state_dict())})
    if spec is not None:
        config.update({names.MU: 0.5, **spec.to_config()})
    if received and spec is not None:
        rng = np.random.default_rng(0)
        content[names.FEATURES] = features_to_record(FeaturePayload(
            rng.normal(size=(3, *spec.in_shape)).astype(np.float32),
            rng.normal(size=(3, *spec.out_shape)).astype(np.float32)), fp16=spec.fp16)
    content[names.CONFIG] = ConfigRecord(config)
    return Message(content, dst_node_id=1, message_type=names.FEDIN_TRAIN)


def spec_of(width: float = 0.125, batch: int = 4) -> FeatureSpec:
    # ImageNet stem on 32x32 images: E gives (64w, 8, 8), IN gives (512w, 1, 1).
    return FeatureSpec((int(64 * width), 8, 8), (int(512 * width), 1, 1), batch=batch)


def test_the_device_trains_aligns_and_answers_with_its_features() -> None:
    model, spec = resnet("resnet18"), spec_of()
    device = FedINDevice(lambda c: resnet("resnet18"), lambda c: images())

    answer = device.train(train_message(model, spec, received=True), context())

    metrics = answer.content.metric_records[names.METRICS]
    # 12 images, batch 16, 2 epochs: two aligned steps.
    assert (metrics[names.NUM_EXAMPLES], metrics["qp_steps"]) == (12, 2)
    assert set(answer.content.array_records[names.ARRAYS]) == set(model.state_dict())
    sent = spec.read(answer.content.array_records[names.FEATURES])
    assert (sent.s_in.shape, sent.s_out.shape) == ((4, 8, 8, 8), (4, 64, 1, 1))
    assert answer.content.array_records[names.FEATURES]["s-in"].dtype == "float16"

    plain = device.train(train_message(model, None), context())
    assert names.FEATURES not in plain.content.array_records  # HeteroAvg: no upload
    assert plain.content.metric_records[names.METRICS]["qp_steps"] == 0


def test_a_model_without_fedin_s_parts_is_refused_by_name() -> None:
    device = FedINDevice(lambda c: nn.Sequential(nn.Flatten(), nn.Linear(3072, 10)),
                         lambda c: images())

    with pytest.raises(TypeError, match=r"lacks \['extractor', 'intermediate', 'classifier'\]"):
        device.train(train_message(resnet(), None), context())


def test_received_tensors_of_another_depth_are_refused() -> None:
    device = FedINDevice(lambda c: resnet("resnet10"), lambda c: images())

    with pytest.raises(PayloadError, match=r"unexpected \['intermediate\.0\.1\."):
        device.train(train_message(resnet("resnet18"), None), context())


def test_features_of_other_shapes_than_the_spec_are_not_sent() -> None:
    device = FedINDevice(lambda c: resnet(width=0.25), lambda c: images())

    with pytest.raises(PayloadError, match=r"s_in \(16, 8, 8\).*expects \(8, 8, 8\)"):
        device.train(train_message(resnet(width=0.25), spec_of(0.125)), context())


def test_a_missing_knob_is_named() -> None:
    device = FedINDevice(lambda c: resnet(), lambda c: images())
    message = train_message(resnet(), None)
    del message.content.config_records[names.CONFIG][names.SEND_FEATURES]

    with pytest.raises(PayloadError, match="lacks 'send-features'"):
        device.train(message, context())


def test_evaluate_uses_the_sent_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    model = resnet()
    device = FedINDevice(lambda c: resnet(), lambda c: images(), lambda c: images(7))
    seen = []
    real = fedin_device.evaluate

    def spy(m: nn.Module, data: Images, batch: int) -> dict[str, float]:
        seen.append(batch)
        return real(m, data, batch)

    monkeypatch.setattr(fedin_device, "evaluate", spy)
    message = Message(RecordDict({
        names.ARRAYS: ArrayRecord(model.state_dict()),
        names.CONFIG: ConfigRecord({names.EVAL_BATCH_SIZE: 3, names.SERVER_ROUND: 1})}),
        dst_node_id=1, message_type=names.FEDIN_EVALUATE)

    metrics = device.evaluate(message, context()).content.metric_records[names.METRICS]

    assert seen == [3] and metrics[names.NUM_EXAMPLES] == 7
    assert 0 <= float(metrics["accuracy"]) <= 1  # type: ignore[arg-type]


def test_register_adds_fedin_s_handlers() -> None:
    client = ClientApp()
    FedINDevice(lambda c: resnet(), lambda c: images()).register(client)

    answer = client(Message(RecordDict(), dst_node_id=1, message_type=names.DESCRIBE), context())

    described = answer.content.config_records[names.DESCRIPTION]
    assert described[names.HANDLERS] == [names.DESCRIBE, names.FEDIN_TRAIN,
                                               names.FEDIN_EVALUATE]
    assert (described[names.PARTITION_ID], described[names.MODEL]) == (2, "ResNet")

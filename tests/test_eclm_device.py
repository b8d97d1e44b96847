"""ECLMDevice with a user's own data and budget: no run config, every knob from the messages."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flower_eec.clients import TrainSettings
from flower_eec.clients.eclm import ECLMDevice, data_version
from flower_eec.core.learning import Images
from flower_eec.errors import PayloadError
from flower_eec.grid.local import LocalGrid
from flower_eec.models.modular import SELECTOR_PREFIX, block_of, module_sizes
from flower_eec.protocol import names
from flower_eec.strategies.eclm import ECLM, EclmRoundReport
from flower_eec.topology import Topology

SHAPE: dict[str, Any] = {"num_classes": 4, "in_channels": 3, "layers": 2, "modules": 3,
                         "channels": 4}
KNOBS: dict[str, Any] = {names.NUM_CLASSES: 4, names.IN_CHANNELS: 3, names.LAYERS: 2,
                         names.MODULES: 3, names.TOP_K: 1, names.CHANNELS: 4,
                         names.SELECTOR_NORM: True, names.EVAL_BATCH_SIZE: 16,
                         names.SERVER_ROUND: 3}


def images(seed: int, n: int = 24) -> Images:
    g = torch.Generator().manual_seed(seed)
    return Images(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                  torch.randint(0, 4, (n,), generator=g), (0.5,) * 3, (0.25,) * 3)


def own_data(context: Context) -> Images:
    return images(int(context.node_config["partition-id"]))  # type: ignore[arg-type]


def own_test(context: Context) -> Images:
    return images(100 + int(context.node_config["partition-id"]), n=10)  # type: ignore[arg-type]


def strategy(reports: list[EclmRoundReport]) -> ECLM:
    return ECLM(Topology(num_devices=3, num_edges=1), **SHAPE, eval_batch_size=16,
                train=TrainSettings(lr=0.05, batch_size=8), on_round=reports.append, node_wait=5)


def run(device: ECLMDevice, rounds: int) -> list[EclmRoundReport]:
    app = ClientApp()
    device.register(app)
    reports: list[EclmRoundReport] = []
    cloud = strategy(reports)
    torch.manual_seed(0)
    cloud.start(LocalGrid(app, 3), ArrayRecord(cloud.cloud_model().state_dict()),
                num_rounds=rounds, timeout=60)
    return reports


def smallest_submodel() -> int:
    """A budget below everything keeps one module per layer; modules of a layer are equal."""
    sizes, shared = module_sizes(strategy([]).cloud_model())
    return shared + sum(layer[0] for layer in sizes)


def full_model() -> int:
    sizes, shared = module_sizes(strategy([]).cloud_model())
    return shared + sum(map(sum, sizes))


def test_a_users_own_device_takes_part_without_a_run_config() -> None:
    reports = run(ECLMDevice(own_data, own_test, budget_fn=lambda context, r: 10**9), rounds=2)

    assert [(r.participants, r.failures) for r in reports] == [(3, 0), (3, 0)]
    # Fixed data and budget: sub-models are derived once; this budget buys the whole model.
    assert [r.rederived for r in reports] == [3, 0]
    assert all(size == full_model() for r in reports for size in r.submodel_params.values())
    assert 0 <= reports[-1].device_metrics["accuracy_before"] <= 1
    assert reports[-1].device_metrics["num-examples"] == 3 * 24  # all the round's examples
    assert reports[-1].link_bytes["cloud_to_device"] > 0


def test_a_new_budget_or_new_data_re_derives_the_sub_model() -> None:
    def budget(context: Context, server_round: int) -> int:
        return 10**9 if server_round == 1 else 1  # a shrinking budget from round 2

    def shifting(context: Context, server_round: int) -> tuple[Images, Images | None]:
        pid = int(context.node_config["partition-id"])  # type: ignore[arg-type]
        return images(pid + 10 * (server_round >= 3)), None  # new data from round 3

    reports = run(ECLMDevice(own_data, budget_fn=budget, data_at_round_fn=shifting), rounds=4)

    assert [r.failures for r in reports] == [0, 0, 0, 0]
    assert [r.rederived for r in reports] == [3, 3, 3, 0]
    assert [set(r.submodel_params.values()) for r in reports] == [
        {full_model()}, {smallest_submodel()}, {smallest_submodel()}, {smallest_submodel()}]
    # Without test data the devices report no local accuracy.
    assert "accuracy" not in reports[-1].device_metrics


def test_flowers_own_loop_drives_a_round_through_configure_and_aggregate_train() -> None:
    app = ClientApp()
    ECLMDevice(own_data, budget_fn=lambda context, r: 1).register(app)
    grid = LocalGrid(app, 3)
    cloud = strategy([])
    torch.manual_seed(0)
    initial = ArrayRecord(cloud.cloud_model().state_dict())

    messages = list(cloud.configure_train(1, initial, ConfigRecord(), grid))
    arrays, metrics = cloud.aggregate_train(1, grid.send_and_receive(messages))

    assert [m.metadata.message_type for m in messages] == [names.ADAPT] * 3
    assert all(len(m.content[names.ARRAYS]) < len(initial) for m in messages)  # sub-models
    assert arrays is not None and metrics is not None
    assert set(arrays) == set(initial)
    assert metrics[names.NUM_EXAMPLES] == 3 * 24
    moved = [k for k in initial if not np.array_equal(arrays[k].numpy(), initial[k].numpy())]
    assert moved and not any(k.startswith(SELECTOR_PREFIX) for k in moved)


def context(pid: int = 0) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": pid, "num-partitions": 1},
                   state=RecordDict(), run_config={})


def message(kind: str, arrays: dict[str, torch.Tensor], knobs: dict[str, Any]) -> Message:
    return Message(RecordDict({names.ARRAYS: ArrayRecord(arrays),
                               names.CONFIG: ConfigRecord(knobs)}),
                   dst_node_id=1, message_type=kind)


def test_route_reports_module_use_the_budget_of_the_round_and_a_data_checksum() -> None:
    asked: list[int] = []

    def budget(context: Context, server_round: int) -> int:
        asked.append(server_round)
        return 12_345

    device = ECLMDevice(own_data, budget_fn=budget)
    state = strategy([]).cloud_model().state_dict()
    routing = {k: v for k, v in state.items() if block_of(k) is None and not k.startswith("head")}

    reply = device.route(message(names.ROUTE, routing, KNOBS), context())

    usage = reply.content.array_records[names.USAGE][names.USAGE].numpy()
    assert usage.shape == (2, 3)
    assert np.allclose(usage.sum(axis=1), 1.0, atol=1e-5)
    metrics = reply.content.metric_records[names.METRICS]
    assert asked == [3]
    assert metrics[names.BUDGET] == 12_345
    assert metrics[names.NUM_EXAMPLES] == 24
    assert metrics[names.DATA_VERSION] == data_version(images(0))


def test_the_data_checksum_changes_with_one_label_and_not_otherwise() -> None:
    data = images(0)
    same = Images(data.x.clone(), data.y.clone(), data.mean, data.std)
    y = data.y.clone()
    y[5] = (y[5] + 1) % 4

    assert data_version(data) == data_version(same)
    assert data_version(data) != data_version(Images(data.x, y, data.mean, data.std))


def test_adapt_returns_the_sub_model_without_the_selector() -> None:
    device = ECLMDevice(own_data, own_test, budget_fn=lambda context, r: 1)
    torch.manual_seed(0)
    state = strategy([]).cloud_model().state_dict()
    kept = [[2], [0, 1]]
    sent = {k: v for k, v in state.items()
            if (b := block_of(k)) is None or b[1] in kept[b[0]]}
    knobs = {**KNOBS, **TrainSettings(lr=0.05, batch_size=8).to_config(),
             names.layer_key(0): kept[0], names.layer_key(1): kept[1]}

    reply = device.adapt(message(names.ADAPT, sent, knobs), context())

    returned = reply.content.array_records[names.ARRAYS]
    assert set(returned) == {k for k in sent if not k.startswith(SELECTOR_PREFIX)}
    metrics = reply.content.metric_records[names.METRICS]
    usage = np.array(metrics[names.USAGE]).reshape(2, 3)
    assert np.allclose(usage.sum(axis=1), 1.0, atol=1e-5)
    assert usage[0, 0] == usage[0, 1] == usage[1, 2] == 0.0  # modules it does not hold
    assert {"accuracy", "accuracy_before", "loss"} <= set(metrics)


@pytest.mark.parametrize(("drop", "handler"), [
    (names.TOP_K, "route"), (names.layer_key(1), "adapt"), ("local-epochs", "adapt")])
def test_a_missing_knob_is_a_payload_error_naming_it(drop: str, handler: str) -> None:
    device = ECLMDevice(own_data, budget_fn=lambda context, r: 1)
    knobs = {**KNOBS, **TrainSettings(lr=0.05).to_config(), names.layer_key(0): [0],
             names.layer_key(1): [0]}
    del knobs[drop]

    with pytest.raises(PayloadError, match=drop):
        getattr(device, handler)(message(names.ADAPT, {}, knobs), context())


def test_the_strategy_refuses_initial_arrays_of_another_shape() -> None:
    cloud = strategy([])
    other = ECLM(Topology(num_devices=3, num_edges=1), **{**SHAPE, "channels": 8},
                 train=TrainSettings(lr=0.05)).cloud_model()
    app = ClientApp()
    ECLMDevice(own_data, budget_fn=lambda context, r: 1).register(app)

    with pytest.raises(ValueError, match="cloud_model"):
        cloud.start(LocalGrid(app, 3), ArrayRecord(other.state_dict()), num_rounds=1)


def test_start_refuses_a_train_config_that_overrides_the_constructor() -> None:
    cloud = strategy([])
    with pytest.raises(ValueError, match=r"train_config sets \['lr', 'top-k'\]"):
        cloud.start(LocalGrid(ClientApp(), 3), ArrayRecord(cloud.cloud_model().state_dict()),
                    train_config=ConfigRecord({"lr": 0.5, names.TOP_K: 2, "extra": 1}))


def test_a_cloud_weight_of_one_is_refused() -> None:
    with pytest.raises(ValueError, match="cloud_weight"):
        ECLM(Topology(num_devices=3, num_edges=1), **SHAPE, train=TrainSettings(lr=0.05),
             cloud_weight=1.0)

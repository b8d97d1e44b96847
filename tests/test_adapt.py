"""FedAvg as ECLM's fair baseline: devices that adapt a copy of the received model before testing
(``adapt-epochs``), on ECLM's shifting data (``data.shift_every``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from torch import nn

from flower_eec.app.client_app import app
from flower_eec.clients import TrainSettings, WeightsDevice
from flower_eec.clients.device import round_generator
from flower_eec.core.learning import Images, evaluate, train_epochs
from flower_eec.errors import ConfigError, PayloadError
from flower_eec.grid.local import LocalGrid
from flower_eec.protocol import names
from flower_eec.run import experiment
from flower_eec.run.config import Config, resolve, to_json
from flower_eec.run.experiment import train_settings
from flower_eec.run.federated import federated_data
from flower_eec.run.registry import method as registry_method
from flower_eec.run.shift import current_data, data_at_round, shift_every

SETTINGS = TrainSettings(lr=0.1, momentum=0.5, weight_decay=1e-3, batch_size=6, epochs=1,
                         augment=True, cutout=2, seed=7)
ROUND = 3


def images(seed: int, n: int) -> Images:
    g = torch.Generator().manual_seed(seed)
    return Images(torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g),
                  torch.randint(0, 4, (n,), generator=g), (0.5,) * 3, (0.25,) * 3)


def own_train(context: Context) -> Images:
    return images(int(context.node_config["partition-id"]), 30)  # type: ignore[arg-type]


def own_test(context: Context) -> Images:
    return images(100 + int(context.node_config["partition-id"]), 20)  # type: ignore[arg-type]


def tiny_model(context: Context | None = None) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))


class Keeping(WeightsDevice):
    """A WeightsDevice that keeps the models it builds (the received model is one of them)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.built: list[nn.Module] = []

    def model(self, context: Context) -> nn.Module:
        built = super().model(context)
        self.built.append(built)
        return built


def context(pid: int = 1) -> Context:
    return Context(run_id=1, node_id=1, node_config={"partition-id": pid, "num-partitions": 2},
                   state=RecordDict(), run_config={})


def received() -> dict[str, torch.Tensor]:
    model = tiny_model()
    with torch.no_grad():  # weights unlike a fresh model's, BatchNorm statistics included
        for p in model.parameters():
            p.add_(0.1)
        model[1].running_mean.fill_(0.2)  # type: ignore[index]
    return {k: v.clone() for k, v in model.state_dict().items()}


def evaluate_message(state: dict[str, torch.Tensor], knobs: dict[str, Any]) -> Message:
    return Message(RecordDict({names.ARRAYS: ArrayRecord(state),
                               names.CONFIG: ConfigRecord(knobs)}),
                   dst_node_id=1, message_type=names.EVALUATE)


def metrics_of(reply: Message) -> dict[str, Any]:
    assert not reply.has_error()
    return dict(reply.content[names.METRICS])


def adapt_knobs(epochs: int = 1) -> dict[str, Any]:
    return {**SETTINGS.to_config(), names.ADAPT_EPOCHS: epochs, names.SERVER_ROUND: ROUND,
            names.EVAL_BATCH_SIZE: 8}


def test_an_adapted_evaluation_is_that_of_a_copy_trained_by_train_epochs() -> None:
    state = received()
    device = Keeping(tiny_model, own_train, own_test)

    got = metrics_of(device.evaluate(evaluate_message(state, adapt_knobs()), context()))

    # The known answer: the same weights, trained by the same loop with the same settings and
    # the train handler's random stream of the round, then tested on the local test split.
    expected = tiny_model()
    expected.load_state_dict(state)
    before = evaluate(expected, own_test(context()), 8)
    trained = train_epochs(expected, own_train(context()), epochs=1, batch_size=6, lr=0.1,
                           momentum=0.5, weight_decay=1e-3, augmented=True, cutout=2,
                           generator=round_generator(7, ROUND, 1))
    after = evaluate(expected, own_test(context()), 8)
    assert got["accuracy"] == after["accuracy"]
    assert got["loss"] == pytest.approx(after["loss"], rel=1e-6)
    assert got["accuracy_before"] == before["accuracy"]
    assert got["loss_before"] == pytest.approx(before["loss"], rel=1e-6)
    assert got["loss"] != pytest.approx(got["loss_before"])  # adapting changed something
    assert got["train_loss"] == pytest.approx(trained["train_loss"], rel=1e-6)
    assert (got[names.NUM_EXAMPLES], got[names.NUM_TRAIN]) == (20, 30)
    assert got["compute_s"] > 0
    # The received model is untouched: the device trained a copy.
    (model,) = device.built
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_two_epochs_differ_from_one() -> None:
    device = WeightsDevice(tiny_model, own_train, own_test)
    one, two = (metrics_of(device.evaluate(evaluate_message(received(), adapt_knobs(n)),
                                           context()))
                for n in (1, 2))

    assert one["loss_before"] == two["loss_before"]
    assert one["loss"] != two["loss"]


def test_adapt_epochs_zero_or_absent_is_the_plain_evaluation() -> None:
    state = received()
    device = WeightsDevice(tiny_model, own_train, own_test)
    plain = metrics_of(device.evaluate(evaluate_message(state, {}), context()))
    zero = metrics_of(device.evaluate(evaluate_message(state, adapt_knobs(0)), context()))

    model = tiny_model()
    model.load_state_dict(state)
    expected = {**evaluate(model, own_test(context()), 500), names.NUM_EXAMPLES: 20}
    assert plain == pytest.approx(expected)
    assert zero == pytest.approx(expected)


def test_adapting_needs_the_learning_rate_and_refuses_negative_epochs() -> None:
    device = WeightsDevice(tiny_model, own_train, own_test)
    knobs = {k: v for k, v in adapt_knobs().items() if k != "lr"}

    with pytest.raises(PayloadError, match="'lr'"):
        device.evaluate(evaluate_message(received(), knobs), context())
    with pytest.raises(PayloadError, match=names.ADAPT_EPOCHS):
        device.evaluate(evaluate_message(received(), adapt_knobs(-1)), context())


def test_data_of_the_round_is_used_for_training_adapting_and_testing() -> None:
    asked: list[int] = []

    def at_round(context: Context, server_round: int) -> tuple[Images, Images]:
        asked.append(server_round)
        return images(server_round, 30), images(50 + server_round, 20)

    device = WeightsDevice(tiny_model, own_train, own_test, data_at_round_fn=at_round)
    got = metrics_of(device.evaluate(evaluate_message(received(), adapt_knobs()), context()))
    train = Message(RecordDict({names.ARRAYS: ArrayRecord(received()),
                                names.CONFIG: ConfigRecord({"lr": 0.1, names.SERVER_ROUND: 5})}),
                    dst_node_id=1, message_type=names.TRAIN)
    trained = metrics_of(device.train(train, context()))

    assert set(asked) == {ROUND, 5}
    model = tiny_model()
    model.load_state_dict(received())
    assert got["accuracy_before"] == evaluate(model, images(50 + ROUND, 20))["accuracy"]
    assert trained[names.NUM_EXAMPLES] == 30


# --- our app's FedAvg as ECLM's fair baseline -------------------------------------------------


def fedavg(out: Path | None = None, **overrides: Any) -> Config:
    extra = {"out": str(out)} if out else {}
    return resolve(None, {"method": "fedavg", "profile": "smoke", **extra, **overrides})


def test_fedavg_on_the_cpu_profile_adapts_and_shifts_as_eclm_does() -> None:
    # What the suite's fedavg-adapted entry sets (benchmarks/suites/cpu.yaml), against eclm.
    baseline = resolve(None, {"method": "fedavg", "profile": "cpu",
                              "data": {"shift_every": 5}, "eval": {"adapt_epochs": 1}})
    eclm = resolve(None, {"method": "eclm", "profile": "cpu"})

    assert shift_every(baseline) == shift_every(eclm) == 5
    assert baseline.eval.adapt_epochs == eclm.train.local_epochs
    assert train_settings(baseline) == train_settings(eclm)
    data = {k: v for k, v in vars(baseline.data).items() if k != "shift_every"}
    assert data == {k: v for k, v in vars(eclm.data).items() if k != "shift_every"}
    assert (baseline.seed, baseline.topology.num_devices) == (eclm.seed, eclm.topology.num_devices)


def test_fedavgs_devices_hold_eclms_shards_and_test_splits_at_every_round() -> None:
    eclm = resolve(None, {"method": "eclm", "profile": "smoke",
                          "eclm": {"shift_every": 2}})  # smoke: data.holdout=0.2
    baseline = fedavg(data={"shift_every": 2, "holdout": 0.2})
    data = federated_data(baseline)
    assert federated_data(eclm) is data

    for server_round in (1, 2, 3):
        ours, theirs = current_data(baseline, data, server_round), current_data(eclm, data,
                                                                                server_round)
        assert ours is theirs
    assert current_data(baseline, data, 3) is not data  # round 3: a new draw
    node = Context(run_id=1, node_id=1, node_config={"partition-id": 1, "num-partitions": 4},
                   state=RecordDict(), run_config={"config-json": to_json(baseline)})
    train, test = data_at_round(node, 3)
    assert torch.equal(train.y, current_data(baseline, data, 3).device_train(1).y)
    assert torch.equal(test.y, current_data(baseline, data, 3).device_test(1).y)


@pytest.mark.parametrize(("overrides", "key"), [
    ({"method": "eclm", "eval": {"adapt_epochs": 1}}, "eval.adapt_epochs"),
    ({"method": "hierfavg", "data": {"shift_every": 2}}, "data.shift_every"),
    ({"method": "fedavg", "eval": {"adapt_epochs": -1}}, "eval.adapt_epochs"),
    ({"method": "fedavg", "data": {"shift_every": -1}}, "data.shift_every"),
])
def test_the_baselines_keys_are_fedavgs_and_not_negative(overrides: dict[str, Any],
                                                         key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        resolve(None, {"profile": "smoke", **overrides})


def test_our_apps_fedavg_device_follows_the_shift_schedule() -> None:
    device = registry_method("fedavg").device()

    assert isinstance(device, WeightsDevice) and device.data_at_round_fn is data_at_round


@pytest.fixture(scope="module")
def adapted_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    config = fedavg(tmp_path_factory.mktemp("adapted"), train={"rounds": 2},
                    data={"shift_every": 1}, eval={"adapt_epochs": 1})
    grid = LocalGrid(app, config.topology.num_devices, {"config-json": to_json(config)})
    return experiment.run(grid, config)


def test_a_fedavg_run_records_the_adapted_local_accuracy(adapted_run: dict[str, Any]) -> None:
    rounds = adapted_run["rounds"]

    assert [r["round"] for r in rounds] == [1, 2]
    for record in rounds:
        devices = record["devices"]
        assert (devices["participants"], devices["failures"]) == (4, 0)
        assert 0 <= devices["mean_local_accuracy"] <= 1  # after adapting: ECLM's field
        assert 0 <= devices["mean_local_accuracy_before"] <= 1  # the global model as received
        assert devices["mean_local_loss"] != devices["mean_local_loss_before"]
        # weighted by training examples, as ECLM's: their total is every device's shard
        assert devices["mean_local_num-train"] == sum(
            len(current_data(fedavg(data={"shift_every": 1}),
                             federated_data(fedavg()), record["round"]).device_train(d))
            for d in range(4))
        assert 0 <= record["cloud"]["accuracy"] <= 1

"""FedAggDevice, the public device of FedAgg/FedEEC: knobs from the strategy only, a user's own
model and data, checks on both sides, and a fast failure against a ClientApp without handlers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from flower_eec.clients import device as device_module
from flower_eec.clients import fedagg as device_side
from flower_eec.clients.device import Knobs, TrainSettings
from flower_eec.clients.fedagg import FedAggDevice
from flower_eec.core.learning import Images
from flower_eec.errors import PayloadError, ProtocolError
from flower_eec.grid.local import LocalGrid
from flower_eec.models import build_model
from flower_eec.models.bridge import load_bridge
from flower_eec.protocol import names
from flower_eec.protocol.payloads import LogitsPayload, to_record
from flower_eec.protocol.replies import missing_handler, require_handler
from flower_eec.run.config import resolve, to_json
from flower_eec.run.federated import federated_data
from flower_eec.run.methods import fedagg as fedagg_methods
from flower_eec.strategies import fedagg as server_side
from flower_eec.strategies.fedagg import FedAgg
from flower_eec.strategies.hierarchical import RoundReport
from flower_eec.topology import Topology

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.15)


def pid(context: Context) -> int:
    return int(context.node_config["partition-id"])


def my_images(seed: int, n: int) -> Images:
    """A user's own data: random 3x32x32 images, labels 0-9, the user's normalisation."""
    generator = torch.Generator().manual_seed(seed)
    return Images(torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8),
                  torch.randint(0, 10, (n,), generator=generator), MEAN, STD)


def my_model(context: Context) -> nn.Module:
    torch.manual_seed(pid(context))
    return build_model("cnn3")


def my_device(**options: Any) -> FedAggDevice:
    return FedAggDevice(model_fn=my_model,
                        train_data_fn=lambda context: my_images(pid(context), 24),
                        test_data_fn=lambda context: my_images(100 + pid(context), 10), **options)


def my_app(device: FedAggDevice | None = None) -> ClientApp:
    app = ClientApp()
    (device or my_device()).register(app)
    return app


def my_strategy(**knobs: Any) -> FedAgg:
    torch.manual_seed(0)
    options: dict[str, Any] = {"topology": Topology(4, 2), "cloud_model": build_model("cnn3"),
                               "edge_model": build_model("cnn3"), "bridge": load_bridge(),
                               "mean": MEAN, "std": STD, "num_classes": 10, "node_wait": 5.0,
                               **knobs}
    return FedAgg(**options)


def start(strategy: FedAgg, app: Any, rounds: int = 1,
          run_config: dict[str, Any] | None = None, train_config: ConfigRecord | None = None,
          evaluate_config: ConfigRecord | None = None) -> list[RoundReport]:
    reports: list[RoundReport] = []
    strategy.on_round = reports.append
    grid = LocalGrid(app, 4, run_config)
    strategy.start(grid, server_side.state_record(strategy.cloud_model), num_rounds=rounds,
                   timeout=60, train_config=train_config, evaluate_config=evaluate_config)
    return reports


# --- the knobs come from the strategy ---------------------------------------------------------


def test_devices_use_the_strategys_knobs_while_the_run_config_says_otherwise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, float, float, float, float]] = []
    for side, module in (("server", server_side), ("device", device_side)):
        def spy(*args: Any, _side: str = side, _pass: Any = module.distil_pass,
                **kwargs: Any) -> Any:
            settings = args[4]
            seen.append((_side, settings.T, settings.beta, settings.clip, kwargs.get("gamma", 0)))
            return _pass(*args, **kwargs)
        monkeypatch.setattr(module, "distil_pass", spy)
    # our app's device reads its data and model from this run config, which says T=3,
    # beta_leaf=1, gamma=1, clip=0
    config = resolve(None, {"method": "fedagg", "profile": "smoke", "out": str(tmp_path),
                            "model": {"edge": "cnn3", "cloud": "cnn3"},
                            "fedagg": {"T": 3.0, "beta_leaf": 1.0, "gamma": 1.0, "clip": 0.0}})
    dataset = federated_data(config).dataset
    strategy = my_strategy(T=5.0, beta_leaf=0.5, gamma=0.25, clip=3.0, mean=dataset.mean,
                           std=dataset.std)
    app = ClientApp()
    fedagg_methods.app_device().register(app)
    reports = start(strategy, app, run_config={"config-json": to_json(config)})
    assert reports[0].failures == 0
    assert sorted(s for s in seen if s[0] == "device") == [("device", 5.0, 0.5, 3.0, 0.25)] * 4
    # server passes: 4 edge-from-device, 2 edge-from-cloud, 2 cloud-from-edge, beta 1 (default)
    assert sorted(s for s in seen if s[0] == "server") == [("server", 5.0, 1.0, 3.0, 0)] * 8


def test_fidelity_takes_the_papers_beta_unless_one_is_given() -> None:
    assert my_strategy().settings.beta == 1.0
    assert my_strategy(fidelity=True).settings.beta == 10.0
    assert my_strategy(fidelity=True, beta=2.0).settings.beta == 2.0


def test_start_refuses_configs_that_override_the_constructor() -> None:
    strategy = my_strategy(T=5.0)
    with pytest.raises(ValueError, match=r"train_config sets \['T'\].*FedAgg\(\.\.\.\)"):
        start(strategy, my_app(), train_config=ConfigRecord({"T": 3.0, "my-knob": 1}))
    with pytest.raises(ValueError, match=r"evaluate_config sets \['fidelity'\]"):
        start(strategy, my_app(), evaluate_config=ConfigRecord({names.FIDELITY: True}))
    # an entry of the constructor's value, or one it does not set, is no clash
    reports = start(strategy, my_app(), train_config=ConfigRecord({"T": 5.0, "my-knob": 1}))
    assert reports[0].failures == 0


class BigDevice(FedAggDevice):
    """Device 0 holds ``size`` images (and says so, consistently); the others 6."""

    size = 6

    def __init__(self) -> None:
        super().__init__(my_model, lambda c: my_images(pid(c), self.size if pid(c) == 0 else 6),
                         lambda c: my_images(100 + pid(c), 4))


@pytest.mark.parametrize(("size", "max_codes", "refused"), [
    (6 * 11, None, True),    # over 10 x the median (6): refused
    (6 * 9, None, False),    # under it: taken
    (6 * 11, 70, False),     # a larger absolute cap takes it
    (6 * 2, 10, True),       # a smaller absolute cap refuses it
])
def test_the_store_takes_no_more_codes_from_a_device_than_the_cap(
        size: int, max_codes: int | None, refused: bool) -> None:
    device = BigDevice()
    device.size = size
    strategy = my_strategy(max_codes=max_codes)
    [report] = start(strategy, my_app(device))

    assert (0 in strategy.store) is not refused
    if refused:
        assert report.failures >= 1
        assert f"declares {size} codes, over the cap of {max_codes or 60}" in (
            report.failure_reasons[0])
    assert all(d in strategy.store for d in (1, 2, 3))


def test_train_metrics_are_the_devices_with_the_tiers_passes_beside_them() -> None:
    strategy = my_strategy()
    result = strategy.start(LocalGrid(my_app(), 4), server_side.state_record(strategy.cloud_model),
                            num_rounds=1, timeout=60)
    metrics = dict(result.train_metrics_clientapp[1])
    assert {"distil_loss", "bridge_accuracy", "compute_s", "num-examples", "edge_distil_loss",
            "edge_bridge_accuracy"} <= set(metrics)  # compute_s: only devices report it
    assert metrics["num-examples"] == sum(len(my_images(d, 24)) for d in range(4))
    assert metrics["distil_loss"] != metrics["edge_distil_loss"]


def test_every_device_knob_is_in_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    settings_seen: list[Any] = []
    distil_pass = device_side.distil_pass

    def spy(*args: Any, **kwargs: Any) -> Any:
        settings_seen.append((args[4], kwargs["shuffle"]))
        return distil_pass(*args, **kwargs)

    monkeypatch.setattr(device_side, "distil_pass", spy)
    strategy = my_strategy(lr=0.02, momentum=0.5, weight_decay=1e-4, batch_size=6,
                           skr="both", fidelity=True, seed=3)
    assert start(strategy, my_app())[0].failures == 0
    settings, shuffle = settings_seen[0]
    assert (settings.lr, settings.momentum, settings.weight_decay, settings.batch_size) == (
        0.02, 0.5, 1e-4, 6)
    assert settings.skr is not None and shuffle is False  # skr="both" rectifies devices too
    knobs = Knobs(ConfigRecord(strategy.distil_config))
    assert TrainSettings.from_knobs(knobs) == TrainSettings(
        lr=0.02, momentum=0.5, weight_decay=1e-4, batch_size=6, epochs=1, augment=True,
        cutout=0, seed=3)
    assert strategy.evaluate_config == {names.EVAL_BATCH_SIZE: 6, names.FIDELITY: True}


def test_a_message_without_a_knob_is_refused_naming_it() -> None:
    strategy = my_strategy()
    knobs = {k: v for k, v in strategy.distil_config.items() if k != names.TEMPERATURE}
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={})
    teacher = LogitsPayload(torch.zeros(24, 10).numpy())
    msg = Message(RecordDict({names.TEACHER: to_record(teacher),
                              names.CONFIG: ConfigRecord({**knobs, names.SERVER_ROUND: 1})}),
                  dst_node_id=1, message_type=names.DISTIL)
    with pytest.raises(PayloadError, match="lacks 'T'"):
        my_device().distil(msg, context)
    msg.content[names.CONFIG] = ConfigRecord({**strategy.distil_config, names.SERVER_ROUND: 1,
                                              names.NUM_CLASSES: 5})
    with pytest.raises(PayloadError, match="5 classes"):
        my_device().distil(msg, context)


# --- a user's own model and data ------------------------------------------------------------


def test_a_users_device_takes_part_without_any_run_config() -> None:
    strategy = my_strategy(fp16=True)
    grid_app = my_app()
    reports = start(strategy, grid_app, rounds=2, run_config={})
    assert [(r.participants, r.failures) for r in reports] == [(4, 0), (4, 0)]
    assert strategy.store.devices() == [0, 1, 2, 3]
    assert all(strategy.store.num_samples(d) == 24 for d in range(4))
    assert all(0 <= r.device_metrics["accuracy"] <= 1 for r in reports)
    # the server's bridge samples are the device's own codes, decoded with the same bridge
    device = my_device()
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 2}, state=RecordDict(),
                      run_config={})
    samples = device.samples(context, my_images(2, 24), fp16=True, raw=False)
    assert torch.equal(strategy.store.samples([2])[0], samples)


def test_codes_are_encoded_once_per_node_and_data(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    encode = device_side.encode

    def counting(bridge: Any, images: torch.Tensor, *args: Any) -> torch.Tensor:
        calls.append(len(images))
        return encode(bridge, images, *args)

    monkeypatch.setattr(device_side, "encode", counting)
    device = my_device()
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(),
                      run_config={})
    first = device.codes(context, my_images(0, 24), fp16=False)
    assert torch.equal(device.codes(context, my_images(0, 24), fp16=False), first)
    assert calls == [24]
    device.codes(context, my_images(7, 12), fp16=False)  # new data on the same node
    half = device.codes(context, my_images(0, 24), fp16=True)
    assert calls == [24, 12, 24] and torch.equal(half, first.half().float())


def test_a_device_whose_normalisation_differs_is_refused() -> None:
    strategy = my_strategy(mean=(0.49, 0.48, 0.45), std=STD)
    report = start(strategy, my_app())[0]
    assert report.failures == 4 and strategy.store.devices() == []
    assert all("mean" in reason and "give FedAgg the devices' mean and std" in reason
               for reason in report.failure_reasons.values())


def test_a_device_with_another_bridge_refuses_to_send_codes() -> None:
    other = load_bridge()
    state = other.state_dict()
    state["decoder.0.bias"] += 0.5  # the state dict's tensors are the bridge's own
    strategy = my_strategy(bridge=other)
    report = start(strategy, my_app())[0]
    assert report.failures == 4
    assert all("is not the server's" in reason for reason in report.failure_reasons.values())


def test_the_bridge_may_be_chosen_per_node() -> None:
    bridges = []

    def per_node(context: Context) -> Any:
        bridges.append(pid(context))
        return load_bridge()

    assert start(my_strategy(), my_app(my_device(bridge=per_node)))[0].failures == 0
    assert set(bridges) == {0, 1, 2, 3}


# --- fail fast ------------------------------------------------------------------------------


def test_a_clientapp_with_only_plain_train_stops_the_run_at_once() -> None:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:  # a standard FedAvg-style device
        return Message(RecordDict({"arrays": ArrayRecord()}), reply_to=msg)

    with pytest.raises(ProtocolError) as caught:
        start(my_strategy(), app, rounds=3)
    text = str(caught.value)
    assert "'query.embed'" in text and "FedAggDevice(" in text
    assert "In your own Flower project" in text


class EmbedOnly(FedAggDevice):
    """A device that sends its codes but cannot learn (a half-done port)."""

    handlers = {names.EMBED: "embed", names.EVALUATE_KEPT: "evaluate"}


class NoEvaluate(FedAggDevice):
    handlers = {names.EMBED: "embed", names.DISTIL: "distil"}


@pytest.mark.parametrize(("device_class", "missing"), [(EmbedOnly, "'train.distil'"),
                                                       (NoEvaluate, "'evaluate.kept'")])
@pytest.mark.parametrize("schedule", ["parallel", "sequential"])
def test_a_missing_handler_of_a_later_message_stops_the_run(
        device_class: type[FedAggDevice], missing: str, schedule: str) -> None:
    device = device_class(my_model, lambda context: my_images(pid(context), 24),
                          lambda context: my_images(100 + pid(context), 10))
    with pytest.raises(ProtocolError, match=missing):
        start(my_strategy(schedule=schedule), my_app(device), rounds=2)


def test_evaluate_devices_off_needs_no_evaluate_handler() -> None:
    device = NoEvaluate(my_model, lambda context: my_images(pid(context), 24))
    reports = start(my_strategy(evaluate_devices=False), my_app(device), rounds=2)
    assert [r.failures for r in reports] == [0, 0] and reports[1].device_metrics == {}


def error_reply(reason: str) -> Message:
    msg = Message(RecordDict(), dst_node_id=1, message_type=names.EMBED)
    return Message(Error(code=2, reason=reason), reply_to=msg)


@pytest.mark.parametrize(("reason", "message_type"), [
    ("ValueError: No query function registered with name 'embed'", "query.embed"),  # LocalGrid
    ("<class 'ValueError'>:<'No train function registered with name 'default''>", "train"),
    ("\nException ClientAppException occurred. Message: No evaluate function registered "
     "with name 'kept'", "evaluate.kept"),
    ("RuntimeError: device crashed", None),
])
def test_missing_handler_reads_flowers_reasons(reason: str, message_type: str | None) -> None:
    assert missing_handler(error_reply(reason)) == message_type


def test_require_handler_raises_only_when_no_device_answers() -> None:
    missing = error_reply("ValueError: No query function registered with name 'embed'")
    crashed = error_reply("RuntimeError: device crashed")
    ok = Message(RecordDict(), reply_to=Message(RecordDict(), dst_node_id=1,
                                                message_type=names.EMBED))
    assert missing_handler(ok) is None
    require_handler([], "D().register(app)")
    require_handler([missing, ok], "D().register(app)")
    require_handler([missing, crashed], "D().register(app)")
    with pytest.raises(ProtocolError, match=r"'query.embed'.*D\(\).register\(app\)"):
        require_handler([missing, missing], "D().register(app)")


def test_kept_model_survives_between_messages() -> None:
    strategy = my_strategy()
    grid = LocalGrid(my_app(), 4, {})
    strategy.start(grid, server_side.state_record(strategy.cloud_model), num_rounds=1,
                   timeout=60)
    kept = [context.state.array_records[device_module.KEPT_MODEL] for context in
            grid.contexts.values()]
    fresh = my_model(grid.contexts[1000]).state_dict()
    assert len(kept) == 4 and any(
        not torch.equal(fresh[k], kept[0].to_torch_state_dict()[k]) for k in fresh)


@pytest.mark.parametrize("with_checkpoints", [False, True])
def test_a_device_state_rolled_back_is_caught_or_restored_from_disk(
        with_checkpoints: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a late reply of a timed-out round does under Ray: device 2's state goes back to
    round 1 after round 2. With a checkpoint folder it loads its round-2 model from disk;
    without, it goes on from round 1 and the server says so."""
    if with_checkpoints:
        monkeypatch.setenv("FLOWER_EEC_CHECKPOINT_DIR", str(tmp_path))
    strategy = my_strategy()
    grid = LocalGrid(my_app(), 4)
    node = sorted(grid.get_node_ids())[2]
    saved: dict[str, Any] = {}
    reports: list[RoundReport] = []

    def roll_back(report: RoundReport) -> None:
        reports.append(report)
        state = grid.contexts[node].state
        if report.round == 1:
            saved.update(model=state.array_records["model"], kept=state.config_records["kept"])
        if report.round == 2:
            state["model"], state["kept"] = saved["model"], saved["kept"]

    strategy.on_round = roll_back
    strategy.start(grid, server_side.state_record(strategy.cloud_model), num_rounds=3,
                   timeout=60)

    assert [r.failures for r in reports] == [0, 0, 0]
    assert reports[2].stale == ({} if with_checkpoints else {2: (1, 2)})
    assert reports[2].restored == ({2: (1, 2)} if with_checkpoints else {})
    assert strategy.kept.expected == {0: 3, 1: 3, 2: 3, 3: 3}


def test_a_pass_draws_its_augmentation_and_its_batch_order_from_different_streams() -> None:
    from flower_eec.clients.device import round_generator

    def draw(stream: int) -> torch.Tensor:
        return torch.randperm(100, generator=round_generator(3, 2, 1, stream=stream))

    assert torch.equal(draw(0), draw(0)) and torch.equal(draw(1), draw(1))  # reruns reproduce
    assert not torch.equal(draw(0), draw(1))

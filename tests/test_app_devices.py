"""Our app's devices compute on the run config's ``simulation.torch_device``, as the server does.

"meta" stands for an accelerator here: a torch device that every machine has and that is not the
device classes' CPU default, so a device that ignores the config shows up on the CPU.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from torch import nn

from flower_eec.clients import eclm as eclm_client
from flower_eec.clients import weights as weights_client
from flower_eec.clients.device import Device
from flower_eec.protocol import names
from flower_eec.run.config import Config, resolve, to_json
from flower_eec.run.devices import device_model
from flower_eec.run.methods import eclm as eclm_method
from flower_eec.run.registry import method, methods

pytestmark = pytest.mark.filterwarnings("ignore:.*meta parameter:UserWarning")


class Seen(Exception):
    """Raised by a stand-in for a device's compute, once it has seen the model."""


def config_of(name: str, torch_device: str) -> Config:
    return resolve(None, {"method": name, "profile": "smoke",
                          "simulation": {"torch_device": torch_device}})


def context_of(config: Config, partition: int = 0) -> Context:
    return Context(run_id=1, node_id=1000 + partition,
                   node_config={"partition-id": partition,
                                "num-partitions": config.topology.num_devices},
                   state=RecordDict(), run_config={"config-json": to_json(config)})


def where(model: nn.Module) -> str:
    return next(model.parameters()).device.type


def recording(seen: list[str]) -> Any:
    """A stand-in for the compute a handler calls with the model first: note where it is."""
    def compute(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        seen.append(where(model))
        raise Seen
    return compute


@pytest.mark.parametrize("name", sorted(methods()))
@pytest.mark.parametrize("torch_device", ["cpu", "meta"])
def test_every_method_device_builds_its_models_on_the_configured_torch_device(
        name: str, torch_device: str) -> None:
    config = config_of(name, torch_device)
    device: Device = method(name).device()
    context = context_of(config)

    assert device.torch_device_for(context) == torch.device(torch_device)
    assert where(device.model(context)) == torch_device
    assert where(device.kept_model(context, 0)[0]) == torch_device


def test_auto_takes_cuda_only_where_the_process_sees_a_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    device, context = method("fedavg").device(), context_of(config_of("fedavg", "auto"))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device.torch_device_for(context) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device.torch_device_for(context) == torch.device("cuda")


def test_a_weights_device_trains_on_the_configured_torch_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_of("fedavg", "meta")
    context, seen = context_of(config), list[str]()
    monkeypatch.setattr(weights_client, "train_epochs", recording(seen))
    weights = ArrayRecord(device_model(context_of(config_of("fedavg", "cpu"))).state_dict())
    msg = Message(RecordDict({names.ARRAYS: weights, names.CONFIG: ConfigRecord({"lr": 0.1})}),
                  dst_node_id=context.node_id, message_type=names.TRAIN)

    with pytest.raises(Seen):
        cast(Any, method("fedavg").device()).train(msg, context)
    assert seen == ["meta"]


def test_an_eclm_device_routes_on_the_configured_torch_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = config_of("eclm", "meta")
    context, seen = context_of(config), list[str]()
    monkeypatch.setattr(eclm_client, "module_use", recording(seen))
    e, data = config.eclm, eclm_method.federated_data(config)
    cloud = eclm_method.build_device_model(config, data, "modular")
    knobs = ConfigRecord({
        names.NUM_CLASSES: data.dataset.num_classes, names.IN_CHANNELS: data.dataset.in_channels,
        names.LAYERS: e.layers, names.MODULES: e.modules, names.TOP_K: e.top_k,
        names.CHANNELS: e.channels, names.SELECTOR_NORM: e.selector_norm,
        names.EVAL_BATCH_SIZE: 8, names.SERVER_ROUND: 1})
    msg = Message(RecordDict({names.ARRAYS: ArrayRecord(cloud.state_dict()), names.CONFIG: knobs}),
                  dst_node_id=context.node_id, message_type=names.ROUTE)

    with pytest.raises(Seen):
        cast(Any, method("eclm").device()).route(msg, context)
    assert seen == ["meta"]


def test_eclm_s_offline_stage_runs_on_the_server_s_torch_device(
        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = list[str]()
    monkeypatch.setattr(eclm_method, "offline_stage", recording(seen))

    with pytest.raises(Seen):
        eclm_method.run_eclm(config_of("eclm", "meta"), cast(Any, None), cast(Any, None))
    assert seen == ["meta"]

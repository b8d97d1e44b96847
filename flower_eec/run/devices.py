"""Our app's devices: model and data of a node from the run config's data and model sections.

Only the *local settings* (dataset, partition, model name, seed, torch device) come from the run
config; what a device does, and with which knobs, comes from each message (see
``flower_eec.clients``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
from flwr.app import Context, Message

from flower_eec.clients.device import Device, partition_id
from flower_eec.core.learning import Images, torch_device
from flower_eec.errors import ConfigError
from flower_eec.models import build_model, seeded
from flower_eec.run.config import Config, from_run_config
from flower_eec.run.federated import FederatedData, federated_data
from flower_eec.topology import device_models


@lru_cache(maxsize=4)
def _config(key: tuple[tuple[str, object], ...]) -> Config:
    return from_run_config(dict(key))


def torch_threads(msg: Message, context: Context,
                  call_next: Callable[[Message, Context], Message]) -> Message:
    """A ClientApp mod: each call computes with ``simulation.torch_threads`` threads, and the
    process's own count is put back after it (an in-process grid shares the server's process,
    whose compute must not be throttled)."""
    if not context.run_config:
        return call_next(msg, context)
    before = torch.get_num_threads()
    torch.set_num_threads(_config(tuple(sorted(context.run_config.items())))
                          .simulation.torch_threads)
    try:
        return call_next(msg, context)
    finally:
        torch.set_num_threads(before)


def device_setup(context: Context) -> tuple[Config, FederatedData, int]:
    """The run's config, its federated data and this device's index (its ``partition-id``)."""
    if not context.run_config:
        raise ConfigError("this ClientApp received an empty run_config; run it with `flwr run .` "
                          "from the project root, `flower-eec run`, or give LocalGrid a run_config")
    config = _config(tuple(sorted(context.run_config.items())))
    device = partition_id(context)
    if not 0 <= device < config.topology.num_devices:
        raise ConfigError(f"this node's partition-id is {device} but topology.num_devices is "
                          f"{config.topology.num_devices}: run with as many SuperNodes as devices")
    return config, federated_data(config), device


def app_torch_device(context: Context) -> torch.device:
    """Where our app's devices compute: the run config's ``simulation.torch_device``.

    ``auto`` is CUDA when this process sees a GPU. Ray hides the GPUs from device actors that
    reserve no GPU share (``simulation.client_gpus=0``), so those compute on the CPU.
    """
    config, _, _ = device_setup(context)
    return torch_device(config.simulation.torch_device)


class AppDevice(Device):
    """What our app's devices add to a device class: they compute where the run config says
    (``app_torch_device``). Put it first among the bases: ``class D(AppDevice, WeightsDevice)``."""

    def torch_device_for(self, context: Context) -> torch.device:
        return app_torch_device(context)


def train_data(context: Context) -> Images:
    """This node's training shard."""
    _, data, device = device_setup(context)
    return data.device_train(device)


def test_data(context: Context) -> Images:
    """This node's local test split."""
    _, data, device = device_setup(context)
    return data.device_test(device)


def device_model_name(config: Config, device: int) -> str:
    """The zoo model this device carries."""
    m = config.model
    return _device_models(config.topology.num_devices, m.device, m.large_device,
                          m.large_fraction, config.seed)[device]


@lru_cache(maxsize=4)
def _device_models(num_devices: int, model: str, large_model: str, large_fraction: float,
                   seed: int) -> list[str]:
    return device_models(num_devices, model, large_model=large_model or None,
                         large_fraction=large_fraction, seed=seed)


def build_device_model(config: Config, data: FederatedData, name: str) -> torch.nn.Module:
    """A zoo model shaped for the run's dataset."""
    options = {} if name == "cnn3" else {"stem": config.model.stem, "width": config.model.width}
    if name == "modular":
        e = config.eclm
        options = {"layers": e.layers, "modules": e.modules, "top_k": e.top_k,
                   "channels": e.channels, "selector_norm": e.selector_norm}
    return build_model(name, data.dataset.num_classes, data.dataset.in_channels, **options)


def device_model(context: Context) -> torch.nn.Module:
    """This node's model as our app builds it: the zoo model named for it, seeded by the device."""
    config, data, device = device_setup(context)
    with seeded(config.seed * 1_000_003 + device):
        return build_device_model(config, data, device_model_name(config, device))

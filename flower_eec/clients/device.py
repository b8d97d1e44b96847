"""What a device does for each message: describe itself, train locally, evaluate locally.

Functions of (message, context); the device's data comes from the per-process cache.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from flower_eec.core.learning import evaluate, train_epochs
from flower_eec.errors import ConfigError
from flower_eec.models import build_model
from flower_eec.run.config import Config, demo_fidelity, from_run_config
from flower_eec.run.federated import FederatedData, federated_data
from flower_eec.topology import device_models

MODEL_STATE = "model"  # context.state key of the model a device keeps between rounds


@lru_cache(maxsize=4)
def _config(key: tuple[tuple[str, object], ...]) -> Config:
    return from_run_config(dict(key))


def device_setup(context: Context) -> tuple[Config, FederatedData, int]:
    """The run's config, its federated data and this device's index (its ``partition-id``)."""
    if not context.run_config:
        raise ConfigError("this ClientApp received an empty run_config; run it with `flwr run .` "
                          "from the project root, `flower-eec run`, or give LocalGrid a run_config")
    config = _config(tuple(sorted(context.run_config.items())))
    torch.set_num_threads(config.simulation.torch_threads)
    device = int(context.node_config["partition-id"])  # type: ignore[arg-type]
    if not 0 <= device < config.topology.num_devices:
        raise ConfigError(f"this node's partition-id is {device} but topology.num_devices is "
                          f"{config.topology.num_devices}: run with as many SuperNodes as devices")
    return config, federated_data(config), device


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


def round_generator(config: Config, server_round: int, device: int) -> torch.Generator:
    """One random stream per (seed, round, device): reruns reproduce, devices and rounds differ."""
    return torch.Generator().manual_seed((config.seed * 1_000_003 + server_round) * 100_003
                                         + device)


def own_model(config: Config, data: FederatedData, device: int,
              context: Context) -> torch.nn.Module:
    """The model this device keeps in ``context.state``; the first time, a seeded fresh one."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed * 1_000_003 + device)
        model = build_device_model(config, data, device_model_name(config, device))
    if MODEL_STATE in context.state.array_records:
        model.load_state_dict(context.state.array_records[MODEL_STATE].to_torch_state_dict())
    return model


def keep_model(context: Context, model: torch.nn.Module) -> None:
    """Store the device's model for its next message."""
    context.state[MODEL_STATE] = ArrayRecord(model.state_dict())


def describe(msg: Message, context: Context) -> Message:
    """Reply with the device's index, data sizes and model name."""
    config, data, device = device_setup(context)
    info = ConfigRecord({
        "partition-id": device,
        "num-train": len(data.train_indices[device]),
        "num-test": len(data.test_indices[device]),
        "model": device_model_name(config, device),
    })
    return Message(RecordDict({"describe": info}), reply_to=msg)


def _load(msg: Message, context: Context) -> tuple[Config, FederatedData, int, torch.nn.Module]:
    """The received weights in the device's model, or the model it keeps when none are sent."""
    config, data, device = device_setup(context)
    if not msg.content.array_records:
        return config, data, device, own_model(config, data, device, context)
    model = build_device_model(config, data, device_model_name(config, device))
    arrays = next(iter(msg.content.array_records.values()))
    model.load_state_dict(arrays.to_torch_state_dict())
    return config, data, device, model


def _number(config: ConfigRecord, key: str, default: float) -> float:
    value = config.get(key, default)
    return float(value) if isinstance(value, (int, float)) else default


def train(msg: Message, context: Context) -> Message:
    """Local cross-entropy training from the received weights (kappa1 local epochs)."""
    started = time.perf_counter()
    config, data, device, model = _load(msg, context)
    sent = msg.content.config_records.get("config", ConfigRecord())
    server_round = int(_number(sent, "server-round", 0))
    generator = round_generator(config, server_round, device)
    t = config.train
    shard = data.device_train(device)
    metrics: dict[str, Any] = train_epochs(
        model, shard, epochs=t.local_epochs, batch_size=t.batch_size,
        lr=_number(sent, "lr", t.lr), momentum=t.momentum, weight_decay=t.weight_decay,
        augmented=config.data.augment, cutout=config.data.cutout, generator=generator)
    metrics["num-examples"] = len(shard)
    metrics["compute_s"] = time.perf_counter() - started
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                               "metrics": MetricRecord(metrics)}), reply_to=msg)


def evaluate_local(msg: Message, context: Context) -> Message:
    """Accuracy and loss on the device's local test split of the received weights, or, when none
    are sent, of the model the device keeps (FedAgg)."""
    config, data, device, model = _load(msg, context)
    local = data.device_test(device)
    fidelity = demo_fidelity(config)
    metrics: dict[str, Any] = evaluate(
        model, local, config.train.batch_size if fidelity else config.eval.batch_size,
        bn_train=fidelity)
    metrics["num-examples"] = len(local)
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

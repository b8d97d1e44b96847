"""FedAgg and FedEEC from the run config: the cloud tier with a BridgeEdge per edge, and our
app's device."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, Context

from flower_eec.clients.fedagg import FedAggDevice
from flower_eec.core.learning import torch_device
from flower_eec.grid.metered import MeteredGrid
from flower_eec.models.bridge import BridgeAutoencoder, code_shape, load_bridge
from flower_eec.run.config import Config, rectification, skr_mode
from flower_eec.run.devices import (
    build_device_model,
    device_model,
    device_setup,
    test_data,
    train_data,
)
from flower_eec.run.experiment import hierarchical_options, start_point
from flower_eec.run.federated import federated_data
from flower_eec.run.registry import Method
from flower_eec.run.results import Recorder
from flower_eec.strategies.fedagg import FedAgg
from flower_eec.strategies.fedeec import FedEEC


@lru_cache(maxsize=2)
def bridge(path: str) -> BridgeAutoencoder:
    """The frozen bridge of ``fedagg.bridge_weights`` (``""``: the shipped CIFAR-10 one),
    loaded once per process."""
    return load_bridge(path or None)


def arguments(config: Config, initial: ArrayRecord) -> dict[str, Any]:
    """Every constructor argument of ``FedAgg``/``FedEEC`` from ``config`` (the cloud model
    loaded from ``initial``): the strategy sends the devices their knobs from these."""
    data = federated_data(config)
    device = torch_device(config.simulation.torch_device)
    f, t, m, d = config.fedagg, config.train, config.model, data.dataset
    cloud_model = build_device_model(config, data, m.cloud).to(device)
    cloud_model.load_state_dict(initial.to_torch_state_dict())

    def edge_model(edge: int) -> torch.nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed * 1_000 + edge + 1)
            return build_device_model(config, data, m.edge).to(device)

    return dict(
        cloud_model=cloud_model, edge_model=edge_model, bridge=bridge(f.bridge_weights),
        mean=d.mean, std=d.std, T=f.T, beta=f.beta, beta_leaf=f.beta_leaf, gamma=f.gamma,
        lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay, batch_size=t.batch_size,
        clip=f.clip, augment=config.data.augment, cutout=config.data.cutout,
        schedule=f.schedule, fidelity=f.fidelity, fp16=f.fp16, skr=skr_mode(config),
        rectification=rectification(config), num_classes=d.num_classes,
        embedding_shape=code_shape(d.x_train.shape), logits_batch=config.eval.batch_size,
        evaluate_devices=config.eval.devices, seed=config.seed, torch_device=device)


def fedagg_strategy(config: Config, initial: ArrayRecord, **options: Any) -> FedAgg:
    """FedAgg's cloud tier of ``config``; ``options`` go to ``Hierarchical`` (``topology``,
    ``on_round``, ...)."""
    return FedAgg(**arguments(config, initial), **options)


def fedeec_strategy(config: Config, initial: ArrayRecord, **options: Any) -> FedEEC:
    """FedEEC's cloud tier of ``config`` (``fedeec.skr`` and its parts); ``options`` as
    ``fedagg_strategy``'s."""
    return FedEEC(**arguments(config, initial), **options)


def _run(build: Callable[..., FedAgg], config: Config, grid: MeteredGrid,
         recorder: Recorder) -> None:
    evaluate_fn, initial = start_point(config)
    strategy = build(config, initial, **hierarchical_options(config, grid, recorder))
    strategy.start(grid, initial, num_rounds=config.train.rounds,
                   timeout=config.simulation.timeout, evaluate_fn=evaluate_fn)


def run_fedagg(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """FedAgg: a ``BridgeEdge`` (its own model) per edge under the cloud's tier."""
    _run(fedagg_strategy, config, grid, recorder)


def run_fedeec(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """FedEEC: FedAgg's tiers with self-knowledge rectification."""
    _run(fedeec_strategy, config, grid, recorder)


def app_bridge(context: Context) -> BridgeAutoencoder:
    """Our app's device bridge: the run's ``fedagg.bridge_weights``, as the server's."""
    config, _, _ = device_setup(context)
    return bridge(config.fedagg.bridge_weights)


def app_device() -> FedAggDevice:
    """Our ClientApp's FedAgg/FedEEC device."""
    return FedAggDevice(device_model, train_data, test_data, bridge=app_bridge)


FEDAGG = Method(name="fedagg", run=run_fedagg, device=app_device, section="fedagg", bridge=True)
FEDEEC = Method(name="fedeec", run=run_fedeec, device=app_device, section="fedeec", bridge=True)

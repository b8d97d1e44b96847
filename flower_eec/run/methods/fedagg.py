"""FedAgg and FedEEC from the run config: the cloud tier with a BridgeEdge per edge."""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord

from flower_eec.clients.fedagg import FedAggDevice, bridge_of
from flower_eec.core.learning import torch_device
from flower_eec.grid.metered import MeteredGrid
from flower_eec.run.config import Config, rectification, skr_mode
from flower_eec.run.devices import build_device_model, device_model, test_data, train_data
from flower_eec.run.experiment import (
    hierarchical_options,
    start_point,
)
from flower_eec.run.federated import federated_data
from flower_eec.run.registry import Method
from flower_eec.run.results import Recorder
from flower_eec.strategies.fedagg import FedAgg
from flower_eec.strategies.fedeec import FedEEC


def fedagg_strategy(config: Config, initial: ArrayRecord, **options: Any) -> FedAgg:
    """The FedAgg (``method=fedeec``: FedEEC) cloud tier of ``config``, its cloud model loaded
    from ``initial``; ``options`` go to ``Hierarchical`` (``topology``, ``on_round``, ...)."""
    data = federated_data(config)
    device = torch_device(config.simulation.torch_device)
    f, t, m = config.fedagg, config.train, config.model
    cloud_model = build_device_model(config, data, m.cloud).to(device)
    cloud_model.load_state_dict(initial.to_torch_state_dict())

    def edge_model(edge: int) -> torch.nn.Module:
        with torch.random.fork_rng():
            torch.manual_seed(config.seed * 1_000 + edge + 1)
            return build_device_model(config, data, m.edge).to(device)

    d = data.dataset
    return (FedEEC if config.method == "fedeec" else FedAgg)(
        cloud_model=cloud_model, edge_model=edge_model, bridge=bridge_of(f.bridge_weights),
        mean=d.mean, std=d.std, T=f.T, beta=f.beta, lr=t.lr, momentum=t.momentum,
        weight_decay=t.weight_decay, batch_size=t.batch_size, clip=f.clip, schedule=f.schedule,
        fidelity=f.fidelity, fp16=f.fp16, skr=skr_mode(config),
        rectification=rectification(config), num_classes=d.num_classes,
        embedding_shape=(4, d.x_train.shape[2] // 4, d.x_train.shape[3] // 4),
        logits_batch=config.eval.batch_size, seed=config.seed, torch_device=device, **options)


def run_fedagg(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """FedAgg and FedEEC: a ``BridgeEdge`` (its own model) per edge under the cloud's tier."""
    evaluate_fn, initial = start_point(config)
    strategy = fedagg_strategy(config, initial, **hierarchical_options(config, grid, recorder))
    t = config.train
    strategy.start(grid, initial, num_rounds=t.rounds, timeout=config.simulation.timeout,
                   train_config=ConfigRecord({"lr": t.lr}), evaluate_fn=evaluate_fn)


def app_device() -> FedAggDevice:
    """Our ClientApp's FedAgg/FedEEC device."""
    return FedAggDevice(device_model, train_data, test_data)


FEDAGG = Method(name="fedagg", run=run_fedagg, device=app_device, section="fedagg", bridge=True)
FEDEEC = Method(name="fedeec", run=run_fedagg, device=app_device, section="fedeec", bridge=True)

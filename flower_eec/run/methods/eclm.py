"""ECLM from the run config: the cloud's offline stage, then online rounds with sub-models."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord

from flower_eec.clients.eclm import ECLMDevice
from flower_eec.core.eclm_training import offline_stage
from flower_eec.grid.metered import MeteredGrid
from flower_eec.models import count_parameters
from flower_eec.models.modular import ModularNet, module_sizes
from flower_eec.run.config import Config
from flower_eec.run.devices import build_device_model, device_model, test_data, train_data
from flower_eec.run.experiment import (
    build_topology,
    start_point,
    timing,
)
from flower_eec.run.federated import federated_data
from flower_eec.run.registry import Method
from flower_eec.run.results import Recorder
from flower_eec.strategies.eclm import ECLM, EclmRoundReport


def run_eclm(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """ECLM: the cloud's offline stage on its own data, then online rounds with sub-models."""
    evaluate_fn, initial = start_point(config)
    e, t = config.eclm, config.train
    data = federated_data(config)
    model = build_device_model(config, data, "modular")
    assert isinstance(model, ModularNet)
    model.load_state_dict(initial.to_torch_state_dict())
    offline = offline_stage(model, data.public_train(), epochs=e.offline_epochs,
                            batch_size=t.batch_size, lr=t.lr, lb_weight=e.lb_weight,
                            momentum=t.momentum, weight_decay=t.weight_decay,
                            augmented=config.data.augment, cutout=config.data.cutout,
                            gate_noise=e.gate_noise, seed=config.seed)
    cloud = ArrayRecord(model.state_dict())
    offline["cloud"] = dict(evaluate_fn(0, cloud) or {})
    recorder.note("eclm_offline", offline)
    sizes, shared = module_sizes(model)
    full = {"full_model_params": count_parameters(model), "full_model_bytes": cloud.count_bytes()}

    def on_round(report: EclmRoundReport) -> None:
        traffic, exchange_s = grid.drain()
        metrics = report.device_metrics
        params = list(report.submodel_params.values())
        recorder.add_round({
            "round": report.round, "cloud": report.cloud_metrics,
            "devices": {"participants": report.participants, "failures": report.failures,
                        "mean_local_accuracy": metrics.get("accuracy"),
                        "mean_local_loss": metrics.get("loss"),
                        "mean_local_accuracy_before": metrics.get("accuracy_before")},
            "comm_bytes": report.link_bytes,
            "timing": timing(traffic, exchange_s, report.server_s),
            "eclm": {"rederived": report.rederived,
                     "mean_submodel_params": float(np.mean(params)) if params else None,
                     **full},
        })

    strategy = ECLM(topology=build_topology(config), module_params=np.array(sizes),
                    shared_params=shared, cloud_weight=e.cloud_weight,
                    evaluate_every=config.eval.every, on_round=on_round,
                    node_wait=config.simulation.node_wait)
    strategy.start(grid, cloud, num_rounds=t.rounds, timeout=config.simulation.timeout,
                   train_config=ConfigRecord({"lr": t.lr}), evaluate_fn=evaluate_fn)


def app_device() -> ECLMDevice:
    """Our ClientApp's ECLM device."""
    return ECLMDevice(device_model, train_data, test_data)


ECLM_METHOD = Method(name="eclm", run=run_eclm, device=app_device, section="eclm")

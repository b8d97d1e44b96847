"""ECLM from the run config: the cloud's offline stage, then online rounds with sub-models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord

from flower_eec.clients.eclm import ECLMDevice
from flower_eec.core.eclm_math import device_budget
from flower_eec.core.eclm_training import offline_stage
from flower_eec.core.learning import torch_device
from flower_eec.grid.metered import MeteredGrid
from flower_eec.models import count_parameters
from flower_eec.models.modular import ModularNet
from flower_eec.run.config import Config, check
from flower_eec.run.devices import AppDevice, build_device_model, device_setup, train_data
from flower_eec.run.experiment import build_topology, round_recorder, start_point, train_settings
from flower_eec.run.federated import FederatedData, federated_data
from flower_eec.run.registry import Method
from flower_eec.run.results import Recorder
from flower_eec.run.resumable import start_hierarchical
from flower_eec.run.shift import data_at_round
from flower_eec.strategies.eclm import ECLM, EclmRoundReport
from flower_eec.strategies.hierarchical import RoundReport


@dataclass
class EclmConfig:
    """ECLM (``method=eclm``): the modular model, the offline stage, budgets, the shift schedule.

    ``layers`` x ``modules`` BasicBlock modules of ``channels * 2**layer`` channels, ``top_k``
    (1 or 2) run per sample and layer; ``lb_weight`` weighs the load-balancing loss (in the
    cloud's offline stage; devices keep the selector frozen); against module collapse (our
    addition), ``gate_noise`` is the standard deviation of Gaussian noise on the selector's
    logits in the offline stage and ``selector_norm`` standardises the selector's input; the
    cloud trains ``offline_epochs`` on ``data.holdout`` before round 1; ``cloud_weight`` is the
    cloud copy's share when modules are merged; a device's budget is a fraction of the full
    model's parameters drawn in [``budget_low``, ``budget_high``] every ``budget_every`` rounds
    (0: fixed); labels shift every ``shift_every`` rounds (0: never), by a new
    Dirichlet(``data.alpha``) draw.
    """

    layers: int = 3
    modules: int = 4
    top_k: int = 1
    channels: int = 16
    lb_weight: float = 0.5
    gate_noise: float = 0.3
    selector_norm: bool = True
    offline_epochs: int = 5
    cloud_weight: float = 0.2
    budget_low: float = 0.3
    budget_high: float = 0.6
    budget_every: int = 5
    shift_every: int = 5


def check_eclm(config: Config) -> None:
    """The ``eclm`` section, and the tiers' models and hold-out it needs."""
    e = config.eclm
    for key in ("layers", "modules", "channels"):
        check(getattr(e, key) >= 1, f"eclm.{key}", getattr(e, key), ">= 1")
    check(e.top_k in (1, 2) and e.top_k <= e.modules, "eclm.top_k", e.top_k,
          f"1 or 2, at most eclm.modules ({e.modules})")
    check(e.lb_weight >= 0, "eclm.lb_weight", e.lb_weight, ">= 0")
    check(e.gate_noise >= 0, "eclm.gate_noise", e.gate_noise, ">= 0 (0: no noise)")
    check(e.offline_epochs >= 0, "eclm.offline_epochs", e.offline_epochs, ">= 0")
    check(0 <= e.cloud_weight < 1, "eclm.cloud_weight", e.cloud_weight, "a weight in [0, 1)")
    check(0 < e.budget_low <= 1, "eclm.budget_low", e.budget_low, "a fraction in (0, 1]")
    check(e.budget_low <= e.budget_high <= 1, "eclm.budget_high", e.budget_high,
          f"a fraction in [eclm.budget_low ({e.budget_low}), 1]")
    for key in ("budget_every", "shift_every"):
        check(getattr(e, key) >= 0, f"eclm.{key}", getattr(e, key), ">= 0 (0: never)")
    for key in ("device", "edge", "cloud"):
        check(getattr(config.model, key) == "modular", f"model.{key}",
              getattr(config.model, key), "'modular' (ECLM's cloud and sub-models are modular)")
    check(config.data.holdout > 0 or e.offline_epochs == 0, "data.holdout", config.data.holdout,
          "a fraction in (0, 1) for ECLM's offline stage on the cloud's own data "
          "(or eclm.offline_epochs=0)")


def strategy_of(config: Config,
                on_round: Callable[[EclmRoundReport], None] | None = None) -> ECLM:
    """The ECLM strategy with every knob the devices use taken from ``config``."""
    e = config.eclm
    data = federated_data(config)
    return ECLM(
        build_topology(config), num_classes=data.dataset.num_classes,
        in_channels=data.dataset.in_channels, layers=e.layers, modules=e.modules,
        top_k=e.top_k, channels=e.channels, selector_norm=e.selector_norm,
        eval_batch_size=config.eval.batch_size,
        train=train_settings(config),
        cloud_weight=e.cloud_weight, evaluate_every=config.eval.every,
        on_round=on_round,
        node_wait=config.simulation.node_wait)


def run_eclm(config: Config, grid: MeteredGrid, recorder: Recorder) -> None:
    """ECLM: the cloud's offline stage on its own data, then online rounds with sub-models
    (a resumed run goes on with the online rounds)."""
    evaluate_fn, initial = start_point(config)
    e, t = config.eclm, config.train
    data = federated_data(config)
    model = build_device_model(config, data, "modular")
    model.load_state_dict(initial.to_torch_state_dict())
    model.to(torch_device(config.simulation.torch_device))  # the offline stage is the server's
    assert isinstance(model, ModularNet)
    offline: dict[str, Any] = {}
    if not config.resume:
        offline = offline_stage(model, data.public_train(), epochs=e.offline_epochs,
                                batch_size=t.batch_size, lr=t.lr, lb_weight=e.lb_weight,
                                momentum=t.momentum, weight_decay=t.weight_decay,
                                augmented=config.data.augment, cutout=config.data.cutout,
                                gate_noise=e.gate_noise, seed=config.seed)
        recorder.note("eclm_offline", offline)
    cloud = ArrayRecord(model.state_dict())
    full = {"full_model_params": count_parameters(model), "full_model_bytes": cloud.count_bytes()}

    def eclm_fields(report: RoundReport) -> dict[str, Any]:
        assert isinstance(report, EclmRoundReport)
        params = list(report.submodel_params.values())
        return {"eclm": {"rederived": report.rederived,
                         "mean_submodel_params": float(np.mean(params)) if params else None,
                         **full}}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics = evaluate_fn(server_round, arrays)
        if server_round == 0:  # the offline-trained cloud model, before round 1
            offline["cloud"] = dict(metrics or {})
            recorder.note("eclm_offline", offline)
        return metrics

    strategy = strategy_of(config, round_recorder(grid, recorder, eclm_fields))
    start_hierarchical(strategy, grid, config, recorder, cloud, evaluate)


def budget_of(config: Config, data: FederatedData, device: int, server_round: int) -> int:
    """The device's budget (max sub-model parameters) at ``server_round``: a fraction of the full
    model drawn in [``eclm.budget_low``, ``eclm.budget_high``] every ``eclm.budget_every``."""
    full = count_parameters(build_device_model(config, data, "modular"))
    e = config.eclm
    return device_budget(full, device, server_round, seed=config.seed, low=e.budget_low,
                         high=e.budget_high, every=e.budget_every)


def app_budget(context: Context, server_round: int) -> int:
    """Our app's device budget: ``budget_of`` for this node (a local setting of the run)."""
    config, data, device = device_setup(context)
    return budget_of(config, data, device, server_round)


class AppECLMDevice(AppDevice, ECLMDevice):
    """Our ClientApp's ECLM device: its sub-models on ``simulation.torch_device``."""


def app_device() -> ECLMDevice:
    """Our ClientApp's ECLM device: its shard under the shift schedule, its fluctuating budget."""
    return AppECLMDevice(train_data, budget_fn=app_budget, data_at_round_fn=data_at_round)


def eclm_shift(config: Config) -> int:
    """ECLM's rounds between label shifts: ``eclm.shift_every``."""
    return config.eclm.shift_every


ECLM_METHOD = Method(name="eclm", run=run_eclm, device=app_device, sections={"eclm": EclmConfig},
                     check=check_eclm, shift=eclm_shift)

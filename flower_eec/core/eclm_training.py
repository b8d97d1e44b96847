"""Training and routing statistics of ECLM's modular model (the cloud's offline stage, devices).

ECLM's "module ability-enhancing training": cross-entropy plus a load-balancing loss on the
selector, so that modules specialise without collapsing onto a few (docs/methods.md, section ECLM).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from flower_eec.core.eclm_math import load_balancing_loss, routing_mass
from flower_eec.core.learning import SKIPPED_STEPS, Images, Step, minibatches, sgd
from flower_eec.data.augment import normalise
from flower_eec.models.modular import ModularNet


def train_modular(model: ModularNet, data: Images, *, epochs: int, batch_size: int, lr: float,
                  lb_weight: float, momentum: float = 0.9, weight_decay: float = 0.0,
                  augmented: bool = True, cutout: int = 0, gate_noise: float = 0.0,
                  generator: torch.Generator | None = None) -> dict[str, float]:
    """SGD on ``cross-entropy + lb_weight * load-balancing loss`` for ``epochs`` passes.

    ``gate_noise`` > 0 adds Gaussian noise of that standard deviation to the selector's logits
    while training (noisy gating, our addition against module collapse), drawn from
    ``generator``; routing without noise is what the model uses afterwards.

    Returns the mean training loss (cross-entropy only), accuracy and load-balancing loss.
    """
    device = next(model.parameters()).device

    def routed(batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
        x, y = batch
        logits, routing = model.forward_routed(x, gate_noise, generator)
        ce = F.cross_entropy(logits, y)
        lb = load_balancing_loss(routing.gates, routing.chosen, model.available)
        return Step(ce + lb_weight * lb, logits, y, {"lb": float(lb.detach()) * len(y)},
                    reported_loss=ce)

    stats = sgd(model, minibatches(data, epochs=epochs, batch_size=batch_size,
                                   augmented=augmented, cutout=cutout, generator=generator,
                                   device=device),
                routed, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return {"train_loss": stats.loss, "train_accuracy": stats.accuracy,
            "train_lb_loss": stats.extras.get("lb", 0.0) / max(stats.examples, 1),
            SKIPPED_STEPS: stats.skipped}


@torch.no_grad()
def module_use(model: ModularNet, data: Images, batch_size: int = 500) -> np.ndarray:
    """``(L, M)`` module-use histogram on ``data``: each row is the mean routing weight per module.

    Only the stem and the selector run (the modules are not needed to route), in eval mode.
    """
    device = next(model.parameters()).device
    model.eval()
    mass = torch.zeros(model.num_layers, model.num_modules, dtype=torch.float64)
    for start in range(0, len(data), batch_size):
        x = normalise(data.x[start:start + batch_size], data.mean, data.std).to(device)
        gates = model.route(model.stem(x))
        top, chosen = gates.topk(model.top_k, dim=2)
        weights = top / top.sum(dim=2, keepdim=True)
        mass += routing_mass(chosen, weights, model.num_modules).double().cpu()
    return (mass / max(len(data), 1)).numpy()


def use_statistics(usage: np.ndarray) -> dict[str, float]:
    """How evenly modules are used: the least and most used module's share, and the normalised
    entropy (1 = uniform, 0 = collapsed onto one module), worst layer of each."""
    usage = np.asarray(usage, dtype=np.float64)
    modules = usage.shape[1]
    p = np.clip(usage, 1e-12, 1.0)
    entropy = -(p * np.log(p)).sum(axis=1) / np.log(modules) if modules > 1 else np.ones(1)
    return {"min_share": float(usage.min()), "max_share": float(usage.max()),
            "min_normalised_entropy": float(entropy.min()),
            "modules_unused": int((usage < 1e-3).sum())}


def offline_stage(model: ModularNet, own: Images, *, epochs: int, batch_size: int, lr: float,
                  lb_weight: float, momentum: float = 0.9, weight_decay: float = 0.0,
                  augmented: bool = True, cutout: int = 0, gate_noise: float = 0.0,
                  seed: int = 0) -> dict[str, Any]:
    """ECLM's offline stage: the cloud trains the modular model on its own data, in place.

    Returns a report: examples, epochs, the last training metrics, the module-use histogram on
    that data afterwards and its statistics (``use_statistics``), and the wall time.
    """
    started = time.perf_counter()
    metrics: dict[str, float] = {}
    if epochs > 0 and len(own) > 0:
        metrics = train_modular(model, own, epochs=epochs, batch_size=batch_size, lr=lr,
                                lb_weight=lb_weight, momentum=momentum,
                                weight_decay=weight_decay, augmented=augmented, cutout=cutout,
                                gate_noise=gate_noise,
                                generator=torch.Generator().manual_seed(seed))
    usage = module_use(model, own) if len(own) else np.zeros((model.num_layers,
                                                               model.num_modules))
    return {"examples": len(own), "epochs": epochs, "train": metrics,
            "module_use": np.round(usage, 4).tolist(), "use_statistics": use_statistics(usage),
            "wall_s": round(time.perf_counter() - started, 3)}

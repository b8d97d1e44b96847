"""Local training and evaluation loops on uint8 image tensors (shared by devices and servers)."""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import torch
from flwr.common.logger import log
from torch import nn
from torch.nn import functional as F

from flower_eec.data.augment import augment, normalise


@dataclass(frozen=True)
class Images:
    """A labelled image set as tensors, with the normalisation of its dataset."""

    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)
    mean: Sequence[float]
    std: Sequence[float]

    def __len__(self) -> int:
        return int(self.y.shape[0])


def torch_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def minibatches(data: Images, *, epochs: int, batch_size: int, augmented: bool, cutout: int,
                generator: torch.Generator | None, device: torch.device
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled mini-batches ``(x, y)`` of normalised (and augmented) images, on ``device``.

    A last batch of one example is skipped: BatchNorm cannot train on it.
    """
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch_size):
            index = order[start:start + batch_size]
            if len(index) < 2 and len(data) >= 2:
                continue
            x = normalise(data.x[index], data.mean, data.std).to(device)
            if augmented:
                x = augment(x, generator, cutout=cutout)
            yield x, data.y[index].to(device)


SKIPPED_STEPS = "skipped_steps"  # the metric of training replies: steps the guard skipped
SPIKE = 20.0  # a step whose gradient norm is over this many times the running median is skipped
SPIKE_WINDOW = 50  # the running median's window: the pass's last applied steps
SPIKE_WARMUP = 5  # applied steps before the median is trusted


def step_problem(loss: float, norm: float, recent: Sequence[float], spike: float) -> str | None:
    """Why a step must not be applied, or None: a non-finite loss or gradient norm, or (with
    ``spike`` > 0 and at least ``SPIKE_WARMUP`` ``recent`` norms) a norm over ``spike`` times
    their median."""
    if not math.isfinite(loss):
        return f"non-finite loss ({loss})"
    if not math.isfinite(norm):
        return f"non-finite gradient norm ({norm})"
    if spike > 0 and len(recent) >= SPIKE_WARMUP:
        median = statistics.median(recent)
        if norm > spike * median:
            return (f"gradient norm {norm:.4g} is over {spike:g} times the pass's running "
                    f"median ({median:.4g})")
    return None


def gradient_norm(params: Sequence[torch.Tensor]) -> float:
    """The L2 norm of all of ``params``' gradients together (those that have one)."""
    norms = [torch.linalg.vector_norm(p.grad.detach()) for p in params if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


@dataclass
class Step:
    """What one mini-batch's objective computed for ``sgd``.

    Attributes:
        loss: The loss ``sgd`` back-propagates (unless ``gradients_set``) and reports.
        logits: The predictions whose accuracy on ``labels`` is reported.
        labels: The mini-batch's labels.
        extras: Per-step figures to add up over the pass (e.g. an auxiliary loss).
        reported_loss: The loss to report instead of ``loss`` (e.g. its cross-entropy part).
        gradients_set: The objective already wrote every parameter's ``.grad`` (FedIN's QP).
    """

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    extras: dict[str, float] = field(default_factory=dict)
    reported_loss: torch.Tensor | None = None
    gradients_set: bool = False


@dataclass
class PassStats:
    """What an ``sgd`` pass saw: example-weighted loss and accuracy, per-step sums of extras
    (over the applied steps), and how many steps the guard skipped."""

    examples: int = 0
    steps: int = 0
    skipped: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    extras: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.examples, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.examples, 1)

    def mean(self, extra: str) -> float:
        """An extra's mean over steps."""
        return self.extras.get(extra, 0.0) / max(self.steps, 1)


def sgd(model: nn.Module, batches: Iterable[Any], objective: Callable[[Any], Step], *, lr: float,
        momentum: float = 0.9, weight_decay: float = 0.0, clip: float = 0.0,
        params: Sequence[torch.Tensor] | None = None, spike: float = SPIKE) -> PassStats:
    """The one SGD loop: a fresh optimiser, then per batch ``objective(batch)``, its backward
    pass, a guard, optional clipping and a step. Every training pass of the project runs
    through it.

    The guard skips (does not apply) a step whose loss or gradient norm is not finite, or whose
    gradient norm is over ``spike`` times the median of the pass's last applied steps (see
    ``step_problem``); each skip is logged and counted in ``PassStats.skipped``.

    Args:
        batches: What ``objective`` takes, one item per step.
        clip: Largest L2 norm of a step's gradient (all parameters together); 0: no clipping.
        params: The parameters to train (default: all of ``model``'s).
        spike: The guard's factor; 0: only non-finite steps are skipped.
    """
    params = list(model.parameters()) if params is None else list(params)
    optimiser = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                foreach=True)
    model.train()
    stats = PassStats()
    recent: deque[float] = deque(maxlen=SPIKE_WINDOW)
    for batch in batches:
        optimiser.zero_grad(set_to_none=True)
        step = objective(batch)
        if not step.gradients_set:
            step.loss.backward()
        reported = step.loss if step.reported_loss is None else step.reported_loss
        loss = float(reported.detach())
        norm = gradient_norm(params)
        problem = step_problem(loss, norm, recent, spike)
        if problem:
            stats.skipped += 1
            log(WARNING, "Skipped a training step of %s: %s", type(model).__name__, problem)
            continue
        recent.append(norm)
        if 0 < clip < norm:  # as torch's clip_grad_norm_ scales
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(clip / (norm + 1e-6))
        optimiser.step()
        n = len(step.labels)
        stats.examples += n
        stats.steps += 1
        stats.loss_sum += loss * n
        stats.correct += int((step.logits.detach().argmax(1) == step.labels).sum())
        for key, value in step.extras.items():
            stats.extras[key] = stats.extras.get(key, 0.0) + value
    return stats


def train_epochs(model: nn.Module, data: Images, *, epochs: int, batch_size: int, lr: float,
                 momentum: float = 0.9, weight_decay: float = 0.0, augmented: bool = True,
                 cutout: int = 0, generator: torch.Generator | None = None,
                 spike: float = SPIKE) -> dict[str, float]:
    """SGD with cross-entropy for ``epochs`` passes over shuffled mini-batches.

    Returns the mean training loss and accuracy over all seen examples, and the steps the
    guard skipped (``skipped_steps``; see ``sgd``).
    """
    device = next(model.parameters()).device

    def cross_entropy(batch: tuple[torch.Tensor, torch.Tensor]) -> Step:
        x, y = batch
        logits = model(x)
        return Step(F.cross_entropy(logits, y), logits, y)

    stats = sgd(model, minibatches(data, epochs=epochs, batch_size=batch_size,
                                   augmented=augmented, cutout=cutout, generator=generator,
                                   device=device),
                cross_entropy, lr=lr, momentum=momentum, weight_decay=weight_decay, spike=spike)
    return {"train_loss": stats.loss, "train_accuracy": stats.accuracy,
            SKIPPED_STEPS: stats.skipped}


@torch.no_grad()
def evaluate(model: nn.Module, data: Images, batch_size: int = 500,
             bn_train: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy in eval mode (BatchNorm uses its running statistics).

    ``bn_train`` tests with BatchNorm in training mode instead (batch statistics), as FedAgg's
    official demo does; kept for its fidelity mode only.
    """
    device = next(model.parameters()).device
    model.train(bn_train)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = normalise(data.x[start:start + batch_size], data.mean, data.std).to(device)
        y = data.y[start:start + batch_size].to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    n = max(len(data), 1)
    return {"loss": loss_sum / n, "accuracy": correct / n}

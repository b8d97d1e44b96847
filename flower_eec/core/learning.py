"""Local training and evaluation loops on uint8 image tensors (shared by devices and servers)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
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


def train_epochs(model: nn.Module, data: Images, *, epochs: int, batch_size: int, lr: float,
                 momentum: float = 0.9, weight_decay: float = 0.0, augmented: bool = True,
                 cutout: int = 0, generator: torch.Generator | None = None) -> dict[str, float]:
    """SGD with cross-entropy for ``epochs`` passes over shuffled mini-batches.

    Returns the mean training loss and accuracy over all seen examples.
    """
    device = next(model.parameters()).device
    optimiser = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum,
                                weight_decay=weight_decay)
    model.train()
    seen, loss_sum, correct = 0, 0.0, 0
    for x, y in minibatches(data, epochs=epochs, batch_size=batch_size, augmented=augmented,
                             cutout=cutout, generator=generator, device=device):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        seen += len(y)
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(1) == y).sum())
    return {"train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1)}


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

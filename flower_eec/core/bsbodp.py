"""One direction of FedAgg's BSBODP: teacher logits on bridge samples, a student's pass.

FedAgg: Wu et al., "Agglomerative Federated Learning", IEEE INFOCOM 2024, arXiv 2312.11489.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flower_eec import progress
from flower_eec.core.learning import SKIPPED_STEPS, SPIKE, Step, sgd
from flower_eec.core.losses import SKR, leaf_loss, nonleaf_loss


@dataclass(frozen=True)
class Distillation:
    """The settings of a distillation pass.

    Attributes:
        T: Temperature (paper: 3).
        beta: Weight of the KD term (paper: 10 for edges and cloud; the official code's devices: 1;
            our default for every tier: 1).
        lr: SGD learning rate; a fresh optimiser serves every pass, as in the official code.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: Mini-batch size.
        skr: Distil towards FedEEC's rectified target (with these parts) instead of the
            teacher's softmax; None: plain KD.
        clip: Largest L2 norm of a step's gradient (all parameters together); 0: no clipping
            (the papers). Our stabiliser: rare gradient spikes in batch-8 passes can wreck a
            server model, which then teaches everyone below it.
        spike: The guard of every step (``learning.sgd``): a step whose gradient norm is over
            ``spike`` times the pass's running median is skipped; 0: only non-finite ones.
    """

    T: float = 3.0
    beta: float = 1.0
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 8
    skr: SKR | None = None
    clip: float = 0.0
    spike: float = SPIKE


@torch.no_grad()
def logits_on(model: nn.Module, samples: torch.Tensor, batch_size: int,
              bn_train: bool = False) -> torch.Tensor:
    """A model's logits on ``samples``, computed once without autograd, returned on the CPU.

    ``bn_train`` keeps BatchNorm in training mode (batch statistics, running stats updated), as
    the official demo does; the default uses the running statistics.
    """
    device = next(model.parameters()).device
    model.train(bn_train)
    starts = list(range(0, len(samples), batch_size))
    if bn_train and len(starts) > 1 and len(samples) - starts[-1] == 1:
        starts.pop()  # BatchNorm cannot normalise one example: it joins the batch before
    ends = [*starts[1:], len(samples)]
    parts = [model(samples[start:end].to(device)).float().cpu()
             for start, end in zip(starts, ends, strict=True)]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def distil_pass(student: nn.Module, samples: torch.Tensor, labels: torch.Tensor,
                teacher: torch.Tensor, settings: Distillation, *,
                real: torch.Tensor | None = None, gamma: float = 0.0, shuffle: bool = True,
                generator: torch.Generator | None = None) -> dict[str, float]:
    """One pass of ``student`` over the bridge samples, learning from fixed teacher logits.

    Without ``real`` this is the non-leaf loss (edge, cloud). With ``real`` (the device's own
    normalised, augmented images, row ``i`` the image whose code gave bridge sample ``i``) it is
    the leaf loss: each batch adds ``gamma * CE`` on the same rows of ``real``.

    Returns:
        The mean loss and the accuracy on the bridge samples over the pass, and the steps the
        guard skipped.
    """
    device = next(student.parameters()).device
    n = len(samples)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    # BatchNorm cannot train on a single example: a last batch of one is skipped
    batches = [index for index in order.split(settings.batch_size) if len(index) >= 2 or n < 2]

    def kd(index: torch.Tensor) -> Step:
        x, y = samples[index].to(device), labels[index].to(device)
        z = teacher[index].to(device)
        logits = student(x)
        if real is None:
            loss = nonleaf_loss(logits, y, z, settings.T, settings.beta, skr=settings.skr)
        else:
            logits_real = student(real[index].to(device))
            loss = leaf_loss(logits, y, z, settings.T, settings.beta, gamma, logits_real, y,
                             skr=settings.skr)
        return Step(loss, logits, y)

    stats = sgd(student, progress.track(batches, len(batches), "distillation batches"), kd,
                lr=settings.lr, momentum=settings.momentum,
                weight_decay=settings.weight_decay, clip=settings.clip, spike=settings.spike)
    return {"distil_loss": stats.loss, "bridge_accuracy": stats.accuracy,
            SKIPPED_STEPS: stats.skipped}

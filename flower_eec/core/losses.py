"""Distillation losses of FedAgg (Wu et al., INFOCOM 2024, arXiv 2312.11489) and FedEEC's SKR.

Self-knowledge rectification (FedEEC, arXiv 2501.00693) is our reconstruction: see ``skr_target``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class SKR:
    """The parts of self-knowledge rectification (our reconstruction) that apply.

    Attributes:
        self_knowledge: Where the teacher is wrong and the student right, distil towards the
            student's own distribution (else such samples fall to the next rule).
        swap: Where the teacher is wrong (and self-knowledge does not apply), swap the true
            class's entry with the teacher's top one (else keep the teacher's distribution).
    """

    self_knowledge: bool = True
    swap: bool = True


def _check_logits(name: str, logits: torch.Tensor, like: torch.Tensor | None = None) -> None:
    if logits.dim() != 2:
        raise ValueError(f"{name} must be (N, C), got shape {tuple(logits.shape)}")
    if like is not None and logits.shape != like.shape:
        raise ValueError(
            f"{name} shape {tuple(logits.shape)} differs from the student's {tuple(like.shape)}"
        )


def _check_labels(labels: torch.Tensor, logits: torch.Tensor) -> None:
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must be ({logits.shape[0]},) to match the logits, got {tuple(labels.shape)}"
        )


def _check_temperature(T: float) -> None:
    if not T > 0:
        raise ValueError(f"temperature T must be > 0, got {T}")


def kd_to_target(
    student_logits: torch.Tensor, target_probs: torch.Tensor, T: float
) -> torch.Tensor:
    """``T^2 * KL(target || softmax(student / T))``, averaged over the batch.

    Args:
        student_logits: ``(N, C)`` logits of the model being trained.
        target_probs: ``(N, C)`` probability rows (each sums to 1); treated as constants.
        T: Distillation temperature, > 0.

    Returns:
        A scalar tensor; gradients reach ``student_logits`` only.
    """
    _check_temperature(T)
    _check_logits("student_logits", student_logits)
    _check_logits("target_probs", target_probs, like=student_logits)
    log_student = F.log_softmax(student_logits / T, dim=1)
    # kl_div treats 0 * log 0 as 0, so one-hot or swapped targets are fine.
    kl = F.kl_div(log_student, target_probs.detach(), reduction="batchmean")
    return kl * (T * T)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """Hinton's KD: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean.

    The ``T^2`` factor keeps the gradient's scale independent of ``T``. The teacher is a constant:
    gradients reach ``student_logits`` only.
    """
    _check_temperature(T)
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits, like=student_logits)
    log_student = F.log_softmax(student_logits / T, dim=1)
    log_teacher = F.log_softmax(teacher_logits.detach() / T, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * (T * T)


@torch.no_grad()
def skr_target(
    teacher_logits: torch.Tensor,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    T: float,
    parts: SKR = SKR(),
) -> torch.Tensor:
    """Self-knowledge rectification (FedEEC; OUR reconstruction): a corrected distillation target.

    Per sample, with ``p_t = softmax(teacher / T)``, ``p_s = softmax(student / T)`` and label ``y``:
    the teacher's ``p_t`` where its top class is ``y``; else the student's own ``p_s`` where its top
    class is ``y``; else ``p_t`` with the entries of ``y`` and of its top class swapped, so the true
    class is on top and the rest of the teacher's shape is kept. Without ``parts.self_knowledge``
    the second rule is skipped; without ``parts.swap`` the third keeps ``p_t``.

    Args:
        teacher_logits: ``(N, C)`` logits received from the teacher.
        student_logits: ``(N, C)`` the student's current logits (its self-knowledge).
        labels: ``(N,)`` integer labels in ``[0, C)``.
        T: Temperature, > 0.
        parts: Which of the two corrections apply (``SKR``; both by default).

    Returns:
        ``(N, C)`` probability rows, without gradient (use with ``kd_to_target``).
    """
    _check_temperature(T)
    _check_logits("teacher_logits", teacher_logits)
    _check_logits("student_logits", student_logits, like=teacher_logits)
    _check_labels(labels, teacher_logits)
    p_teacher = F.softmax(teacher_logits.detach() / T, dim=1)
    p_student = F.softmax(student_logits.detach() / T, dim=1)
    labels = labels.long()
    top_teacher = p_teacher.argmax(dim=1)
    rows = torch.arange(labels.shape[0], device=labels.device)
    swapped = p_teacher.clone()
    swapped[rows, labels] = p_teacher[rows, top_teacher]
    swapped[rows, top_teacher] = p_teacher[rows, labels]
    teacher_wrong = (top_teacher != labels)[:, None]
    student_right = (p_student.argmax(dim=1) == labels)[:, None]
    target = torch.where(teacher_wrong, swapped, p_teacher) if parts.swap else p_teacher
    if parts.self_knowledge:
        target = torch.where(teacher_wrong & student_right, p_student, target)
    return target


def _distillation(
    logits_bridge: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    T: float,
    skr: SKR | None,
) -> torch.Tensor:
    if skr is not None:
        target = skr_target(teacher_logits, logits_bridge, labels, T, skr)
        return kd_to_target(logits_bridge, target, T)
    return kd_loss(logits_bridge, teacher_logits, T)


def nonleaf_loss(
    logits_bridge: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    T: float,
    beta: float,
    *,
    skr: SKR | None = None,
) -> torch.Tensor:
    """Loss of an edge or cloud student: ``CE(f(x~), y) + beta * KD(f(x~), z_teacher)``.

    Args:
        logits_bridge: ``(N, C)`` student logits on the bridge samples ``x~ = dec(eps)``.
        labels: ``(N,)`` labels that travelled with the embeddings.
        teacher_logits: ``(N, C)`` the teacher's logits on the same bridge samples.
        T: Temperature (paper: 3).
        beta: Weight of the distillation term (paper: 10).
        skr: Replace the KD target by ``skr_target`` with these parts (FedEEC, our
            reconstruction); None: plain KD.
    """
    _check_labels(labels, logits_bridge)
    ce = F.cross_entropy(logits_bridge, labels)
    return ce + beta * _distillation(logits_bridge, labels, teacher_logits, T, skr)


def leaf_loss(
    logits_bridge: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor,
    T: float,
    beta_leaf: float,
    gamma: float,
    logits_real: torch.Tensor,
    labels_real: torch.Tensor,
    *,
    skr: SKR | None = None,
) -> torch.Tensor:
    """Loss of a device student: ``CE(f(x~), y) + beta_leaf * KD + gamma * CE(f(x), y_real)``.

    Args:
        logits_bridge: ``(N, C)`` student logits on bridge samples.
        labels: ``(N,)`` labels of the bridge samples.
        teacher_logits: ``(N, C)`` the parent's logits on the same bridge samples.
        T: Temperature (paper: 3).
        beta_leaf: Weight of the distillation term (official code: 1).
        gamma: Weight of the cross-entropy on real images (paper: 1).
        logits_real: ``(M, C)`` student logits on the device's real (augmented) images.
        labels_real: ``(M,)`` their labels.
        skr: Replace the KD target by ``skr_target`` with these parts (FedEEC, our
            reconstruction); None: plain KD.
    """
    _check_labels(labels_real, logits_real)
    real = F.cross_entropy(logits_real, labels_real)
    return nonleaf_loss(logits_bridge, labels, teacher_logits, T, beta_leaf, skr=skr) + gamma * real

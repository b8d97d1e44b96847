"""KD, FedAgg's leaf/non-leaf losses and FedEEC's SKR target on hand-made logits with known answers.

Logits are often written as log-probabilities, so that softmax at T = 1 gives round numbers back.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from flower_eec.core.losses import SKR, kd_loss, kd_to_target, leaf_loss, nonleaf_loss, skr_target

# p_t = [0.75, 0.25] (teacher logits [ln 3, 0]) against p_s = [0.5, 0.5] (student logits [0, 0]):
# KL(p_t || p_s) = 0.75 * ln(0.75 / 0.5) + 0.25 * ln(0.25 / 0.5)
#                = 0.75 * 0.4054651 - 0.25 * 0.6931472 = 0.3040988 - 0.1732868 = 0.1308120
KL_TWO_CLASS = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)


def log_probs(*rows: list[float]) -> torch.Tensor:
    """Logits whose softmax (T = 1) is exactly the given probability rows."""
    return torch.tensor(rows, dtype=torch.float64).log()


def test_two_class_value_is_the_hand_computed_one() -> None:
    assert KL_TWO_CLASS == pytest.approx(0.1308120, abs=1e-7)
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    assert kd_loss(student, teacher, T=1.0).item() == pytest.approx(KL_TWO_CLASS, rel=1e-6)


def test_kd_is_scaled_by_t_squared() -> None:
    # Doubling T and the teacher's logits leaves both distributions as they were, so only the
    # T^2 factor changes the value: 4 * 0.1308120 = 0.5232480.
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])
    assert kd_loss(student, teacher, T=2.0).item() == pytest.approx(4 * KL_TWO_CLASS, rel=1e-6)


def test_kd_is_a_batch_mean() -> None:
    # Row 2 has identical logits (KL 0), so the mean over 2 rows is half the row-1 value.
    student = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0], [1.0, -1.0]])
    assert kd_loss(student, teacher, T=1.0).item() == pytest.approx(KL_TWO_CLASS / 2, rel=1e-6)


def test_kd_of_identical_logits_is_zero() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    assert kd_loss(logits, logits.clone(), T=3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_kd_to_target_equals_kd_on_the_teachers_probabilities() -> None:
    student = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.0, -0.5]])
    teacher = torch.tensor([[2.0, 0.1, -1.0], [-0.2, 1.5, 0.4]])
    target = F.softmax(teacher / 3.0, dim=1)
    assert kd_to_target(student, target, T=3.0).item() == pytest.approx(
        kd_loss(student, teacher, T=3.0).item(), rel=1e-5
    )


def test_kd_to_target_accepts_zeros_in_the_target() -> None:
    # KL(one-hot e_0 || [0.5, 0.5]) = 1 * ln(1 / 0.5) = ln 2; the zero entry adds nothing.
    value = kd_to_target(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), T=1.0)
    assert value.item() == pytest.approx(math.log(2.0), rel=1e-6)


def test_gradient_reaches_the_student_only() -> None:
    student = torch.tensor([[0.5, -0.5, 1.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 2.0, -1.0]], requires_grad=True)
    kd_loss(student, teacher, T=3.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kd_gradient_is_the_known_closed_form() -> None:
    # d/ds of T^2 * KL(p_t || softmax(s / T)) for one row is T * (p_s - p_t).
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])
    kd_loss(student, teacher, T=2.0).backward()
    assert student.grad is not None
    expected = 2.0 * (torch.tensor([[0.5, 0.5]]) - torch.tensor([[0.75, 0.25]]))
    assert torch.allclose(student.grad, expected, atol=1e-6)


def test_bad_temperature_and_shapes_are_refused() -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(logits, logits, T=0.0)
    with pytest.raises(ValueError, match="differs"):
        kd_loss(logits, torch.zeros(2, 4), T=1.0)
    with pytest.raises(ValueError, match="labels"):
        nonleaf_loss(logits, torch.zeros(3, dtype=torch.long), logits, T=1.0, beta=1.0)


STUDENT = torch.tensor([[0.2, -0.4, 1.1], [1.5, 0.3, -0.7]])
TEACHER = torch.tensor([[-0.3, 0.9, 0.4], [0.8, -1.0, 0.2]])
LABELS = torch.tensor([2, 0])


def test_nonleaf_loss_is_ce_plus_beta_kd() -> None:
    manual = F.cross_entropy(STUDENT, LABELS) + 10.0 * kd_loss(STUDENT, TEACHER, T=3.0)
    loss = nonleaf_loss(STUDENT, LABELS, TEACHER, T=3.0, beta=10.0)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_leaf_loss_adds_gamma_times_ce_on_real_images() -> None:
    real = torch.tensor([[0.1, 0.2, 0.3], [2.0, -2.0, 0.0], [0.0, 1.0, 0.0]])
    real_labels = torch.tensor([1, 0, 2])
    manual = (
        F.cross_entropy(STUDENT, LABELS)
        + 1.0 * kd_loss(STUDENT, TEACHER, T=3.0)
        + 0.5 * F.cross_entropy(real, real_labels)
    )
    loss = leaf_loss(
        STUDENT, LABELS, TEACHER, T=3.0, beta_leaf=1.0, gamma=0.5,
        logits_real=real, labels_real=real_labels,
    )
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_skr_switch_swaps_kd_for_the_rectified_target() -> None:
    target = skr_target(TEACHER, STUDENT, LABELS, T=3.0)
    manual = F.cross_entropy(STUDENT, LABELS) + 10.0 * kd_to_target(STUDENT, target, T=3.0)
    loss = nonleaf_loss(STUDENT, LABELS, TEACHER, T=3.0, beta=10.0, skr=SKR())
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)


def test_skr_covers_its_three_cases() -> None:
    teacher = log_probs([0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1])
    student = log_probs([0.2, 0.7, 0.1], [0.2, 0.7, 0.1], [0.2, 0.7, 0.1])
    labels = torch.tensor([0, 1, 2])
    target = skr_target(teacher, student, labels, T=1.0)
    # Row 0: the teacher's top class is the label -> the teacher's probabilities.
    # Row 1: the teacher is wrong (0 != 1) but the student is right -> the student's.
    # Row 2: both wrong -> the teacher's row with entries 2 and 0 swapped.
    expected = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6]], dtype=target.dtype)
    assert torch.allclose(target, expected, atol=1e-6)
    assert target[2].argmax().item() == 2
    assert sorted(target[2].tolist()) == pytest.approx(sorted([0.6, 0.3, 0.1]))


def test_each_part_of_skr_can_be_turned_off() -> None:
    teacher = log_probs([0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1])
    student = log_probs([0.2, 0.7, 0.1], [0.2, 0.7, 0.1], [0.2, 0.7, 0.1])
    labels = torch.tensor([0, 1, 2])
    swap_only = skr_target(teacher, student, labels, T=1.0, parts=SKR(self_knowledge=False))
    # Row 1 now falls to the swap (entries 1 and 0 exchanged) instead of the student's row.
    assert torch.allclose(swap_only, torch.tensor(
        [[0.6, 0.3, 0.1], [0.3, 0.6, 0.1], [0.1, 0.3, 0.6]], dtype=torch.float64), atol=1e-6)
    self_only = skr_target(teacher, student, labels, T=1.0, parts=SKR(swap=False))
    # Row 2 (both wrong) keeps the teacher's row.
    assert torch.allclose(self_only, torch.tensor(
        [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]], dtype=torch.float64), atol=1e-6)
    neither = skr_target(teacher, student, labels, T=1.0, parts=SKR(False, False))
    assert torch.allclose(neither, teacher.softmax(dim=1), atol=1e-6)


def test_skr_target_carries_no_gradient() -> None:
    teacher = torch.tensor([[0.1, 2.0]], requires_grad=True)
    student = torch.tensor([[1.0, 0.0]], requires_grad=True)
    target = skr_target(teacher, student, torch.tensor([0]), T=3.0)
    assert not target.requires_grad
    # Teacher wrong, student right -> the student's probabilities at T = 3.
    assert torch.allclose(target, F.softmax(student.detach() / 3.0, dim=1))

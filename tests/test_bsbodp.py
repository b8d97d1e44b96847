"""One BSBODP direction on tiny models, and the bridge store's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from flower_eec.core.bsbodp import Distillation, distil_pass, logits_on
from flower_eec.core.losses import leaf_loss, nonleaf_loss
from flower_eec.models.bridge import BridgeAutoencoder, decode, load_bridge
from flower_eec.protocol.payloads import EmbeddingPayload
from flower_eec.strategies.bridge_store import BridgeStore

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(12, 3, 8, 8, generator=generator), torch.arange(12) % 3


def test_one_direction_changes_the_student_and_not_the_teacher(batch) -> None:
    samples, labels = batch
    teacher, student = tiny(1), tiny(2)
    before_teacher, before_student = state(teacher), state(student)
    logits = logits_on(teacher, samples, batch_size=5)
    metrics = distil_pass(student, samples, labels, logits, Distillation(lr=0.1, batch_size=4),
                          generator=torch.Generator().manual_seed(0))
    assert same(state(teacher), before_teacher)  # eval mode, no grad: running stats untouched
    assert not same(state(student), before_student)
    assert logits.shape == (12, 3) and not logits.requires_grad
    assert 0 <= metrics["bridge_accuracy"] <= 1


def test_teacher_logits_in_batches_equal_one_pass_and_fidelity_mode_uses_batch_stats(batch):
    samples, _ = batch
    teacher = tiny(1)
    whole = logits_on(teacher, samples, batch_size=12)
    assert torch.allclose(logits_on(teacher, samples, batch_size=5), whole, atol=1e-6)
    before = state(teacher)
    demo = logits_on(teacher, samples, batch_size=4, bn_train=True)
    assert not torch.allclose(demo, whole)  # batch statistics, as the official demo
    assert not same(state(teacher), before)  # and its running statistics move


def test_fidelity_logits_never_leave_one_example_alone_in_a_batch() -> None:
    from flower_eec.models import build_model

    model = build_model("resnet10", 3, stem="imagenet", width=0.25)  # layer4 is 1x1 on 32x32
    samples = torch.randn(9, 3, 32, 32)
    assert logits_on(model, samples, batch_size=8, bn_train=True).shape == (9, 3)
    with pytest.raises(ValueError, match="more than 1 value"):
        model.train()
        model(samples[8:])


def test_a_pass_minimises_the_non_leaf_loss(batch) -> None:
    samples, labels = batch
    teacher, student = tiny(1), tiny(2)
    logits = logits_on(teacher, samples, batch_size=12)
    settings = Distillation(T=3.0, beta=10.0, lr=0.05, batch_size=12)

    def loss() -> float:
        with torch.no_grad():
            student.train()
            return float(nonleaf_loss(student(samples), labels, logits, 3.0, 10.0))

    start = loss()
    for _ in range(5):
        distil_pass(student, samples, labels, logits, settings, shuffle=False)
    assert loss() < start


def test_leaf_pass_adds_gamma_times_ce_on_the_real_images(batch) -> None:
    samples, labels = batch
    real = samples.flip(3) + 1.0
    logits = logits_on(tiny(1), samples, batch_size=12)
    settings = Distillation(T=3.0, beta=1.0, lr=0.1, batch_size=12)  # one batch: one step
    fresh = tiny(2)
    fresh.train()
    with torch.no_grad():
        expected = leaf_loss(fresh(samples), labels, logits, 3.0, 1.0, 0.5, fresh(real), labels)
    leaf, bridge_only = tiny(2), tiny(2)
    metrics = distil_pass(leaf, samples, labels, logits, settings, real=real, gamma=0.5,
                          shuffle=False)
    distil_pass(bridge_only, samples, labels, logits, settings, real=real, gamma=0.0,
                shuffle=False)
    assert metrics["distil_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert not same(state(leaf), state(bridge_only))


def test_clip_caps_the_norm_of_each_step(batch) -> None:
    samples, labels = batch
    logits = logits_on(tiny(1), samples, batch_size=12)
    probe = tiny(2)
    probe.train()
    nonleaf_loss(probe(samples), labels, logits, 3.0, 10.0).backward()
    norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in probe.parameters()
                                                       if p.grad is not None])))

    def step(clip: float) -> float:  # one batch, no momentum: the step is lr * gradient
        student = tiny(2)
        before = [p.detach().clone() for p in student.parameters()]
        distil_pass(student, samples, labels, logits,
                    Distillation(beta=10.0, lr=0.1, momentum=0.0, batch_size=12,
                                 clip=clip), shuffle=False)
        moved = [p.detach() - b for p, b in zip(student.parameters(), before, strict=True)]
        return float(torch.linalg.vector_norm(torch.stack([m.norm() for m in moved])))

    assert step(0.0) == pytest.approx(0.1 * norm, rel=1e-4)
    assert step(norm / 4) == pytest.approx(0.1 * norm / 4, rel=1e-4)
    assert step(norm * 4) == pytest.approx(0.1 * norm, rel=1e-4)  # under the cap: untouched


def test_seeded_order_makes_passes_reproducible(batch) -> None:
    samples, labels = batch
    logits = logits_on(tiny(1), samples, batch_size=12)
    states = []
    for _ in range(2):
        student = tiny(2)
        distil_pass(student, samples, labels, logits, Distillation(lr=0.1, batch_size=4),
                    generator=torch.Generator().manual_seed(7))
        states.append(state(student))
    assert same(*states)


def payload(n: int, first_label: int = 0) -> EmbeddingPayload:
    codes = np.random.default_rng(n).random((n, 4, 8, 8), dtype=np.float32)
    return EmbeddingPayload(codes, (np.arange(n) + first_label) % 10)


def test_store_keeps_each_device_in_upload_order() -> None:
    bridge = load_bridge()
    store = BridgeStore(bridge, MEAN, STD)
    store.add(3, payload(5), wire_bytes=111)
    store.add(1, payload(2, first_label=7), wire_bytes=22)
    assert store.devices() == [1, 3] and 3 in store and 2 not in store
    assert store.num_samples(3) == 5 and store.embedding_bytes(1) == 22
    samples, labels = store.samples([3, 1])
    assert samples.shape == (7, 3, 32, 32)
    assert labels.tolist() == [0, 1, 2, 3, 4, 7, 8]
    expected = decode(bridge, torch.from_numpy(payload(2).embeddings), MEAN, STD, raw=False)
    assert torch.allclose(store.samples([1])[0], expected)
    store.add(3, payload(4), wire_bytes=90)  # a new upload replaces the old one
    assert store.num_samples(3) == 4 and store.embedding_bytes(3) == 90
    with pytest.raises(KeyError):
        store.samples([2])


def test_decode_normalises_unless_raw() -> None:
    bridge = BridgeAutoencoder()
    bridge.eval()
    codes = torch.rand(3, 4, 8, 8)
    raw = decode(bridge, codes, MEAN, STD, raw=True, batch_size=2)
    assert 0 <= float(raw.min()) and float(raw.max()) <= 1
    normalised = decode(bridge, codes, MEAN, STD, raw=False, batch_size=2)
    assert torch.allclose(normalised, (raw - 0.5) / 0.25, atol=1e-6)

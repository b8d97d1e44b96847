"""The one SGD loop (core.learning.sgd) on a one-weight model with hand-computed steps."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flower_eec.core.learning import Step, sgd


def one_weight() -> nn.Linear:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    return model


def squared_error(model: nn.Module):  # type: ignore[no-untyped-def]
    """loss = (w - 1)^2 on x = 1, so dloss/dw = 2 (w - 1); class 1 is right when w > 0."""

    def objective(_: int) -> Step:
        out = model(torch.ones(1, 1))
        loss = ((out - 1) ** 2).mean()
        logits = torch.cat([-out, out], dim=1)
        return Step(loss, logits, torch.ones(1, dtype=torch.long))

    return objective


def test_plain_steps_follow_the_gradient() -> None:
    model = one_weight()
    stats = sgd(model, range(2), squared_error(model), lr=0.25, momentum=0.0)
    # w: 0 -> 0 + 0.25 * 2 = 0.5 -> 0.5 + 0.25 * 1 = 0.75
    assert model.weight.item() == pytest.approx(0.75)
    assert stats.steps == 2 and stats.examples == 2
    assert stats.loss == pytest.approx((1.0 + 0.25) / 2)  # losses before each step
    assert stats.accuracy == pytest.approx(0.5)  # w = 0 ties (class 0), w = 0.5 is right


def test_momentum_and_clipping() -> None:
    model = one_weight()
    sgd(model, range(2), squared_error(model), lr=0.25, momentum=0.9)
    # buffer -2 -> w 0.5; grad -1, buffer 0.9 * -2 - 1 = -2.8 -> w 0.5 + 0.7 = 1.2
    assert model.weight.item() == pytest.approx(1.2)
    clipped = one_weight()
    sgd(clipped, range(1), squared_error(clipped), lr=0.25, momentum=0.0, clip=1.0)
    assert clipped.weight.item() == pytest.approx(0.25)  # gradient -2 clipped to norm 1


def test_reported_loss_extras_and_gradients_set_by_the_objective() -> None:
    model = one_weight()

    def objective(_: int) -> Step:
        out = model(torch.ones(1, 1))
        model.weight.grad = torch.full_like(model.weight, -4.0)  # e.g. a QP's direction
        return Step(out.sum() * 0, torch.cat([-out, out], 1), torch.ones(1, dtype=torch.long),
                    {"aux": 3.0}, reported_loss=torch.tensor(7.0), gradients_set=True)

    stats = sgd(model, range(2), objective, lr=0.1, momentum=0.0)
    assert model.weight.item() == pytest.approx(0.8)  # two steps of 0.1 * 4
    assert stats.loss == pytest.approx(7.0)
    assert stats.mean("aux") == pytest.approx(3.0) and stats.extras["aux"] == pytest.approx(6.0)


def test_only_the_given_parameters_move() -> None:
    first, second = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    model = nn.Sequential(first, second)
    with torch.no_grad():
        first.weight.fill_(1.0)
        second.weight.fill_(1.0)

    def objective(_: int) -> Step:
        out = model(torch.ones(1, 1))
        return Step(((out - 3) ** 2).mean(), torch.cat([-out, out], 1),
                    torch.ones(1, dtype=torch.long))

    sgd(model, range(1), objective, lr=0.1, momentum=0.0, params=[second.weight])
    assert first.weight.item() == 1.0
    assert second.weight.item() == pytest.approx(1.0 + 0.1 * 4)  # dloss/dw1 = 2 (1 - 3) w0

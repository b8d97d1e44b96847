"""ECLM's pure functions on hand-made inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flower_eec.core.eclm_math import (
    SHARED,
    derive_submodel,
    device_budget,
    load_balancing_loss,
    module_wise_average,
    routing_mass,
    shift_epoch,
    submodel_params,
)
from flower_eec.models.modular import block_of

ALL2 = torch.ones(1, 2, dtype=torch.bool)


def test_load_balancing_loss_is_one_when_balanced() -> None:
    gates = torch.tensor([[[0.5, 0.5]], [[0.5, 0.5]]])
    chosen = torch.tensor([[[0]], [[1]]])

    assert float(load_balancing_loss(gates, chosen, ALL2)) == pytest.approx(1.0)


def test_load_balancing_loss_is_m_when_collapsed() -> None:
    gates = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    chosen = torch.tensor([[[0]], [[0]]])

    assert float(load_balancing_loss(gates, chosen, ALL2)) == pytest.approx(2.0)


def test_load_balancing_loss_with_top2_and_a_missing_module() -> None:
    # One sample, top-2 over 3 modules of which 2 are held: f = (1/2, 1/2, 0), P = (.7, .3, 0)
    gates = torch.tensor([[[0.7, 0.3, 0.0]]])
    chosen = torch.tensor([[[0, 1]]])
    available = torch.tensor([[True, True, False]])

    # M_l = 2 held modules: 2 * (0.5 * 0.7 + 0.5 * 0.3) = 1
    assert float(load_balancing_loss(gates, chosen, available)) == pytest.approx(1.0)


def test_load_balancing_loss_averages_layers() -> None:
    gates = torch.tensor([[[0.5, 0.5], [1.0, 0.0]], [[0.5, 0.5], [1.0, 0.0]]])
    chosen = torch.tensor([[[0], [0]], [[1], [0]]])

    value = load_balancing_loss(gates, chosen, torch.ones(2, 2, dtype=torch.bool))

    assert float(value) == pytest.approx((1.0 + 2.0) / 2)


def test_load_balancing_loss_sends_a_gradient_to_the_gates() -> None:
    logits = torch.zeros(2, 1, 2, requires_grad=True)
    gates = logits.softmax(dim=2)

    load_balancing_loss(gates, torch.tensor([[[0]], [[0]]]), ALL2).backward()

    assert logits.grad is not None
    # Everyone went to module 0: the loss pushes module 0's gate down, module 1's up.
    assert float(logits.grad[0, 0, 0]) > 0 > float(logits.grad[0, 0, 1])


def test_routing_mass_sums_gate_weights_per_module() -> None:
    chosen = torch.tensor([[[0, 2]], [[2, 1]]])
    weights = torch.tensor([[[0.6, 0.4]], [[0.7, 0.3]]])

    mass = routing_mass(chosen, weights, 3)

    assert mass.shape == (1, 3)
    assert mass[0].tolist() == pytest.approx([0.6, 0.3, 1.1])


USAGE = np.array([[0.7, 0.3], [0.1, 0.9]])
SIZES = np.array([[10, 10], [100, 100]])


@pytest.mark.parametrize(("budget", "kept"), [
    (0, ((0,), (1,))),           # below the smallest sub-model: one module per layer anyway
    (115, ((0,), (1,))),         # exactly the smallest
    (125, ((0, 1), (1,))),       # room for the 10-parameter module, not the 100 one
    (1000, ((0, 1), (0, 1))),    # everything fits
])
def test_derive_submodel_takes_the_most_used_modules_that_fit(budget: int, kept: tuple) -> None:
    assert derive_submodel(USAGE, budget, SIZES, shared_params=5) == kept


def test_derive_submodel_skips_a_module_too_big_and_takes_a_smaller_less_used_one() -> None:
    usage = np.array([[0.6, 0.4], [0.5, 0.5]])

    kept = derive_submodel(usage, 125, SIZES, shared_params=0)

    # Layer 1's tie goes to module 0; its module 1 (more used than layer 0's module 1) is too big.
    assert kept == ((0, 1), (0,))
    assert submodel_params(kept, SIZES, 0) == 120


def test_derive_submodel_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must be"):
        derive_submodel(np.ones((2, 3)) / 3, 10, SIZES, 0)


def test_module_wise_average_by_hand() -> None:
    cloud = {"layers.0.0.w": np.array([0.0]), "layers.0.1.w": np.array([10.0]),
             "stem.w": np.array([1.0]), "stem.n": np.array(4, dtype=np.int64)}
    updates = [{"layers.0.0.w": np.array([2.0]), "stem.w": np.array([3.0]),
                "stem.n": np.array(6, dtype=np.int64)},
               {"layers.0.0.w": np.array([4.0]), "stem.w": np.array([5.0]),
                "stem.n": np.array(8, dtype=np.int64)},
               {"layers.0.0.w": np.array([100.0]), "stem.w": np.array([100.0])}]
    importance = [{(0, 0): 1.0, SHARED: 1.0}, {(0, 0): 3.0, SHARED: 3.0},
                  {(0, 0): 0.0, SHARED: 0.0}]  # zero importance: not a holder

    merged = module_wise_average(cloud, updates, importance, block_of, cloud_weight=0.5)

    assert merged["layers.0.0.w"].tolist() == pytest.approx([0.5 * 0 + 0.5 * (0.25 * 2 + 0.75 * 4)])
    assert merged["layers.0.1.w"].tolist() == [10.0]  # no device held it
    assert merged["stem.w"].tolist() == pytest.approx([0.5 * 1 + 0.5 * (0.25 * 3 + 0.75 * 5)])
    assert merged["stem.n"].dtype == np.int64 and int(merged["stem.n"]) == 6  # 5.75 rounded
    assert cloud["layers.0.0.w"].tolist() == [0.0] and updates[0]["stem.w"].tolist() == [3.0]


def test_module_wise_average_without_the_cloud_copy_is_the_importance_mean() -> None:
    cloud = {"layers.1.2.w": np.array([7.0, 7.0], dtype=np.float32)}
    updates = [{"layers.1.2.w": np.array([1.0, 2.0], dtype=np.float32)},
               {"layers.1.2.w": np.array([3.0, 6.0], dtype=np.float32)}]

    merged = module_wise_average(cloud, updates, [{(1, 2): 2.0}, {(1, 2): 2.0}], block_of, 0.0)

    assert merged["layers.1.2.w"].dtype == np.float32
    assert merged["layers.1.2.w"].tolist() == [2.0, 4.0]


def test_module_wise_average_refuses_a_cloud_weight_of_one() -> None:
    with pytest.raises(ValueError, match="cloud_weight"):
        module_wise_average({}, [], [], block_of, 1.0)


@pytest.mark.parametrize(("server_round", "every", "epoch"),
                         [(1, 5, 0), (5, 5, 0), (6, 5, 1), (11, 5, 2), (9, 0, 0), (3, 1, 2)])
def test_shift_epoch(server_round: int, every: int, epoch: int) -> None:
    assert shift_epoch(server_round, every) == epoch


def test_device_budget_is_deterministic_bounded_and_fluctuates_by_period() -> None:
    def budget(device: int, server_round: int, every: int = 5) -> int:
        return device_budget(1000, device, server_round, seed=3, low=0.3, high=0.6, every=every)

    values = [budget(d, r) for d in range(5) for r in (1, 6, 11)]
    assert all(300 <= v <= 600 for v in values)
    assert budget(2, 1) == budget(2, 5) == budget(2, 1)  # one period: one budget
    assert len({budget(2, r) for r in (1, 6, 11, 16)}) > 1  # periods differ
    assert len({budget(d, 1) for d in range(5)}) > 1  # devices differ
    assert {budget(1, r, every=0) for r in (1, 50, 500)} == {budget(1, 1, every=0)}

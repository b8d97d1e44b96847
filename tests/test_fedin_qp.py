"""FedIN's gradient-conflict QP: known solutions by hand, and a generic solver on random inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from flower_eec.core.fedin_qp import conflict_direction, dual_multipliers


def solve(g_loc: list[float], g_in: list[float], mu: float = 1.0):
    direction, solution = conflict_direction(torch.tensor(g_loc, dtype=torch.float64),
                                             torch.tensor(g_in, dtype=torch.float64), mu)
    return direction.numpy(), solution


def dykstra(v: np.ndarray, constraints: np.ndarray, iterations: int = 20000) -> np.ndarray:
    """Projection of v onto {d : <d, c_i> >= 0 for all i} by Dykstra's alternating projections."""
    d = v.astype(np.float64).copy()
    corrections = np.zeros((len(constraints), d.size))
    for _, i in zip(range(iterations), itertools.cycle(range(len(constraints))), strict=False):
        c = constraints[i]
        y = d + corrections[i]
        norm = float(c @ c)
        projected = y - min(0.0, float(c @ y)) / norm * c if norm > 0 else y
        corrections[i] = y - projected
        d = projected
    return d


def test_both_constraints_slack_keeps_the_target() -> None:
    # g_loc = (1, 0), g_in = (1, 1), mu = 1: v = (2, 1), <v, g_loc> = 2, <v, g_in> = 3: both hold.
    d, s = solve([1, 0], [1, 1])
    assert d == pytest.approx([2, 1])
    assert (s.lam_loc, s.lam_in) == (0, 0)
    assert not s.loc_binds and not s.in_binds


def test_one_binding_constraint_projects_onto_its_plane() -> None:
    # g_loc = (1, 0), g_in = (-3, 1), mu = 1: v = (-2, 1); <v, g_loc> = -2 < 0 while
    # <v, g_in> = 7. Projection onto d_x >= 0 gives d = (0, 1) (lam_loc = 2), and <d, g_in> = 1.
    d, s = solve([1, 0], [-3, 1])
    assert d == pytest.approx([0, 1])
    assert s.lam_loc == pytest.approx(2.0) and s.lam_in == 0
    assert s.loc_binds and not s.in_binds


def test_both_constraints_bind_only_at_the_apex() -> None:
    # d = v + lam_loc g_loc + lam_in g_in lies in span(g_loc, g_in), so both constraints can hold
    # with equality only at d = 0, i.e. when the gradients are opposite: g_loc = (1, 2),
    # g_in = (-2, -4), mu = 1 gives v = (-1, -2), which violates <d, g_loc> >= 0. The feasible set
    # is the line <d, (1, 2)> = 0 and v's projection on it is the origin.
    g_loc, g_in = np.array([1.0, 2.0]), np.array([-2.0, -4.0])
    d, s = solve(g_loc.tolist(), g_in.tolist())
    assert d == pytest.approx([0, 0], abs=1e-12)
    assert d @ g_loc == pytest.approx(0, abs=1e-12) and d @ g_in == pytest.approx(0, abs=1e-12)
    # The multipliers are not unique here; any returned pair must rebuild d (stationarity).
    assert g_loc + g_in + s.lam_loc * g_loc + s.lam_in * g_in == pytest.approx([0, 0], abs=1e-12)
    assert s.lam_loc >= 0 and s.lam_in >= 0 and (s.loc_binds or s.in_binds)


def test_zero_and_parallel_gradients() -> None:
    d, s = solve([0, 0], [0, 0])
    assert d == pytest.approx([0, 0]) and (s.lam_loc, s.lam_in) == (0, 0)
    # Opposite gradients: the only feasible directions are orthogonal to both.
    d, s = solve([1, 1], [-2, -2], mu=1.0)
    assert d == pytest.approx([0, 0], abs=1e-12)
    d, s = solve([1, 1, 0], [-1, -1, 0], mu=2.0)
    assert d == pytest.approx([0, 0, 0], abs=1e-12)


def test_dual_of_a_hand_made_gram() -> None:
    # Q = I, p = (-1, 2): lam = (1, 0) minimises 1/2 |lam|^2 + p.lam over lam >= 0.
    s = dual_multipliers(np.eye(2), np.array([-1.0, 2.0]))
    assert (s.lam_loc, s.lam_in) == pytest.approx((1.0, 0.0))


@pytest.mark.parametrize("seed", range(40))
def test_matches_a_generic_solver_on_random_inputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dim = int(rng.integers(2, 7))
    g_loc, g_in = rng.normal(size=dim), rng.normal(size=dim)
    if seed % 4 == 0:  # force a conflict so that constraints bind in some draws
        g_in = -g_loc + 0.3 * rng.normal(size=dim)
    mu = float(rng.uniform(0.1, 3.0))
    d, s = solve(g_loc.tolist(), g_in.tolist(), mu)
    reference = dykstra(g_loc + mu * g_in, np.stack([g_loc, g_in]))
    assert d == pytest.approx(reference, abs=1e-6)
    # KKT: feasible, multipliers non-negative, complementary slackness.
    assert d @ g_loc >= -1e-9 and d @ g_in >= -1e-9
    assert s.lam_loc >= 0 and s.lam_in >= 0
    assert s.lam_loc * (d @ g_loc) == pytest.approx(0, abs=1e-8)
    assert s.lam_in * (d @ g_in) == pytest.approx(0, abs=1e-8)

"""FedIN's gradient-conflict QP (Chan et al., arXiv 2304.00759), solved exactly through its dual.

Our reconstruction (docs/methods.md, section FedIN and HeteroAvg): the update direction ``d``
solves ``min_d 1/2 ||d - (g_loc + mu g_in)||^2  s.t.  <d, g_loc> >= 0, <d, g_in> >= 0``.
Since ``d`` stays in span(g_loc, g_in), both constraints hold with equality only at ``d = 0``,
which needs opposite gradients; in practice at most one binds per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_TOL = 1e-12


@dataclass(frozen=True)
class QPSolution:
    """The multipliers of the two constraints; ``lam_loc > 0`` means ``<d, g_loc> >= 0`` binds."""

    lam_loc: float
    lam_in: float

    @property
    def loc_binds(self) -> bool:
        """Whether the local-gradient constraint is active (its multiplier is positive)."""
        return self.lam_loc > 0

    @property
    def in_binds(self) -> bool:
        """Whether the IN-gradient constraint is active."""
        return self.lam_in > 0


def dual_multipliers(gram: np.ndarray, linear: np.ndarray) -> QPSolution:
    """Solve the 2-variable dual ``min_{lam >= 0} 1/2 lam^T Q lam + p^T lam`` exactly.

    With ``G = [g_loc, g_in]`` and target ``v``, ``Q = G^T G`` and ``p = G^T v``; the primal
    solution is ``d = v + G lam``. Every active set (none, either, both constraints) is solved in
    closed form (pseudo-inverse on its face, so parallel or zero gradients are handled); of the
    candidates with ``lam >= 0`` the one with the lowest dual objective is the optimum, because
    the optimum solves the stationarity equations of its own active set.

    Args:
        gram: ``Q``, a symmetric positive semi-definite ``(2, 2)`` array.
        linear: ``p``, shape ``(2,)``.

    Returns:
        The optimal multipliers.
    """
    q = np.asarray(gram, dtype=np.float64)
    p = np.asarray(linear, dtype=np.float64)
    scale = max(float(np.abs(q).max()), float(np.abs(p).max()), _TOL)
    best, best_value = np.zeros(2), 0.0
    for active in ((0,), (1,), (0, 1)):
        index = list(active)
        lam = np.zeros(2)
        lam[index] = -np.linalg.pinv(q[np.ix_(index, index)]) @ p[index]
        if lam.min() < -1e-9 * scale:
            continue
        lam = np.maximum(lam, 0.0)
        value = float(0.5 * lam @ q @ lam + p @ lam)
        if value < best_value - 1e-15 * scale:
            best, best_value = lam, value
    return QPSolution(float(best[0]), float(best[1]))


def conflict_direction(g_loc: torch.Tensor, g_in: torch.Tensor, mu: float
                       ) -> tuple[torch.Tensor, QPSolution]:
    """FedIN's update direction from the flat local gradient and the flat IN-training gradient.

    Args:
        g_loc: Gradient of the local cross-entropy, flattened over all trainable parameters.
        g_in: Gradient of the IN-alignment MSE over the same parameters (zero outside IN).
        mu: Weight of ``g_in`` in the target ``g_loc + mu * g_in``.

    Returns:
        ``d`` (same shape and dtype as ``g_loc``) and the constraints' multipliers.
    """
    target = g_loc + mu * g_in
    stacked = torch.stack([g_loc, g_in]).double()
    gram = (stacked @ stacked.T).cpu().numpy()
    linear = (stacked @ target.double()).cpu().numpy()
    solution = dual_multipliers(gram, linear)
    direction = target + solution.lam_loc * g_loc + solution.lam_in * g_in
    return direction, solution


"""Layer-wise aggregation across models of different depths (FedIN, Chan et al., arXiv 2304.00759).

Each tensor is averaged, weighted, over the models that have it; tensors nobody has keep their
value in the base (global, deepest) model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def layerwise_average(states: Sequence[Mapping[str, np.ndarray]],
                      weights: Sequence[float | Mapping[str, float]],
                      base: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The new global state: each tensor of ``base`` averaged over the states that hold it.

    Args:
        states: Each model's tensors by name; every name must exist in ``base`` with its shape.
        weights: Per state, one weight for all its tensors (e.g. its number of examples) or a
            weight per tensor name (an edge passing on the examples beneath each tensor).
        base: The current global state; a tensor no state holds (or holds with zero total weight)
            keeps this value.

    Returns:
        A new dict with the keys and dtypes of ``base`` (integer buffers rounded).

    Raises:
        ValueError: Lengths differ, a weight is negative, or a state has a name or shape that
            ``base`` does not.
    """
    if len(states) != len(weights):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    sums: dict[str, np.ndarray] = {}
    totals: dict[str, float] = {}
    for state, weight in zip(states, weights, strict=True):
        for key, value in state.items():
            if key not in base:
                raise ValueError(f"tensor '{key}' is not in the global model")
            if tuple(value.shape) != tuple(base[key].shape):
                raise ValueError(f"tensor '{key}' has shape {tuple(value.shape)}, the global "
                                 f"model's is {tuple(base[key].shape)}")
            w = float(weight[key] if isinstance(weight, Mapping) else weight)
            if w < 0:
                raise ValueError(f"negative weight {w} for tensor '{key}'")
            sums[key] = sums.get(key, 0.0) + w * np.asarray(value, dtype=np.float64)
            totals[key] = totals.get(key, 0.0) + w
    averaged: dict[str, np.ndarray] = {}
    for key, old in base.items():
        if totals.get(key, 0.0) <= 0:
            averaged[key] = np.array(old, copy=True)
            continue
        mean = sums[key] / totals[key]
        if np.issubdtype(old.dtype, np.integer):
            mean = np.rint(mean)
        averaged[key] = np.asarray(mean, dtype=old.dtype)
    return averaged


def key_weights(states: Sequence[Mapping[str, np.ndarray]],
                weights: Sequence[float]) -> dict[str, float]:
    """Per tensor name, the total weight of the states that hold it (an edge's report upward)."""
    totals: dict[str, float] = {}
    for state, weight in zip(states, weights, strict=True):
        for key in state:
            totals[key] = totals.get(key, 0.0) + float(weight)
    return totals

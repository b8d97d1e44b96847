"""ECLM's math as small pure functions: load balancing, module use, sub-models, module-wise merging.

ECLM (Zhuang et al., "ECLM: Efficient Edge-Cloud Collaborative Learning with Continuous
Environment Adaptation", arXiv 2311.11083; docs/methods.md, section ECLM). Which modules a budget
buys and how returned modules are weighted are our reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

Block = tuple[int, int]  # (layer, module)
SHARED: Block = (-1, -1)  # the importance key of everything outside the module layers


def load_balancing_loss(gates: torch.Tensor, chosen: torch.Tensor,
                        available: torch.Tensor) -> torch.Tensor:
    """Mean over layers of ``M_l * sum_i f_i * P_i`` (Switch-Transformer style).

    Args:
        gates: ``(N, L, M)`` selector softmax per layer.
        chosen: ``(N, L, k)`` module indices each sample was routed to.
        available: ``(L, M)`` bool, the modules held; ``M_l`` counts layer ``l``'s.

    ``f_i`` is the fraction of routing assignments that went to module ``i`` (not differentiable),
    ``P_i`` the mean gate of module ``i``. It is 1 when routing is uniform over the held modules
    and ``M_l`` when every sample goes to one module with gate 1.
    """
    num_modules = gates.shape[2]
    f = F.one_hot(chosen, num_modules).float().mean(dim=(0, 2))  # (L, M)
    p = gates.mean(dim=0)
    held = available.sum(dim=1).to(gates.dtype)
    return (held * (f * p).sum(dim=1)).mean()


def routing_mass(chosen: torch.Tensor, weights: torch.Tensor, num_modules: int) -> torch.Tensor:
    """``(L, M)``: per layer, the summed gate weight each module received over the batch."""
    one_hot = F.one_hot(chosen, num_modules).to(weights.dtype)  # (N, L, k, M)
    return (one_hot * weights.unsqueeze(-1)).sum(dim=(0, 2))


def derive_submodel(usage: np.ndarray, budget: int, module_params: np.ndarray,
                    shared_params: int) -> tuple[tuple[int, ...], ...]:
    """The most used modules per layer that fit ``budget`` parameters.

    Every layer keeps its most used module (a sub-model needs one per layer), even when that
    alone exceeds the budget. Then modules join in order of decreasing use, over all layers (each
    layer's use sums to 1, so uses compare across layers), each when it still fits; a module that
    does not fit is skipped and smaller ones may still join. Ties go to the lower layer, then the
    lower module index.

    Args:
        usage: ``(L, M)`` the device's module-use histogram (each row sums to 1).
        budget: The device's largest sub-model, in parameters.
        module_params: ``(L, M)`` parameters of each module.
        shared_params: Parameters outside the module layers (stem, selector, head).

    Returns:
        The held module indices of each layer, ascending.
    """
    usage = np.asarray(usage, dtype=np.float64)
    sizes = np.asarray(module_params, dtype=np.int64)
    if usage.ndim != 2 or usage.shape != sizes.shape:
        raise ValueError(f"usage {usage.shape} and module_params {sizes.shape} must be (L, M)")
    layers, modules = usage.shape
    order = sorted(((layer, i) for layer in range(layers) for i in range(modules)),
                   key=lambda b: (-usage[b], b[0], b[1]))
    kept: list[set[int]] = [set() for _ in range(layers)]
    for layer in range(layers):
        kept[layer].add(next(i for lay, i in order if lay == layer))
    total = shared_params + sum(int(sizes[layer, i]) for layer in range(layers)
                                for i in kept[layer])
    for layer, i in order:
        if i not in kept[layer] and total + sizes[layer, i] <= budget:
            kept[layer].add(i)
            total += int(sizes[layer, i])
    return tuple(tuple(sorted(held)) for held in kept)


def submodel_params(kept: Sequence[Sequence[int]], module_params: np.ndarray,
                    shared_params: int) -> int:
    """Parameters of the sub-model holding ``kept``."""
    sizes = np.asarray(module_params)
    return shared_params + sum(int(sizes[layer, i]) for layer, held in enumerate(kept)
                               for i in held)


def module_wise_average(cloud: Mapping[str, np.ndarray],
                        updates: Sequence[Mapping[str, np.ndarray]],
                        importance: Sequence[Mapping[Block, float]],
                        block_of: Callable[[str], Block | None],
                        cloud_weight: float) -> dict[str, np.ndarray]:
    """Merge devices' returned tensors into the cloud's, block by block.

    For each block ``b`` (a module, or ``SHARED`` for everything outside the module layers),
    ``U_b`` is the devices whose update holds ``b`` with positive importance::

        w'_b = cloud_weight * w_b
               + (1 - cloud_weight) * sum_{k in U_b} I_kb / sum_{j in U_b} I_jb * w_kb

    A block no device returned keeps the cloud's tensor. Integer tensors (BatchNorm's counters)
    are rounded back. Nothing given is modified.

    Args:
        cloud: The cloud's full state, name -> array.
        updates: Per device, the tensors it returned (a subset of ``cloud``'s names).
        importance: Per device, block -> importance (e.g. routing mass x data size).
        block_of: Tensor name -> its block (``(layer, module)`` or None for shared tensors).
        cloud_weight: Weight of the cloud's own copy of a block that devices returned, in [0, 1).
    """
    if len(updates) != len(importance):
        raise ValueError("module_wise_average needs one importance map per update")
    if not 0 <= cloud_weight < 1:
        raise ValueError(f"cloud_weight must be in [0, 1), got {cloud_weight}")
    merged: dict[str, np.ndarray] = {}
    for name, value in cloud.items():
        block = block_of(name) or SHARED
        holders = [(u[name], float(w.get(block, 0.0))) for u, w in zip(updates, importance,
                                                                          strict=True)
                   if name in u and w.get(block, 0.0) > 0]
        if not holders:
            merged[name] = value.copy()
            continue
        total = sum(w for _, w in holders)
        devices = sum((w / total) * np.asarray(a, dtype=np.float64) for a, w in holders)
        mean = cloud_weight * value.astype(np.float64) + (1 - cloud_weight) * devices
        if np.issubdtype(value.dtype, np.integer):
            mean = np.rint(mean)
        merged[name] = np.asarray(mean, dtype=value.dtype)
    return merged


def shift_epoch(server_round: int, every: int) -> int:
    """Which label distribution a device holds at ``server_round``: a new one every ``every``.

    Rounds 1..every hold distribution 0; ``every == 0`` never shifts.
    """
    return 0 if every <= 0 else (max(server_round, 1) - 1) // every


def device_budget(full_params: int, device: int, server_round: int, *, seed: int,
                  low: float, high: float, every: int) -> int:
    """A device's resource budget (max sub-model parameters) at ``server_round``.

    A fraction of the full model drawn uniformly in ``[low, high]``, redrawn every ``every``
    rounds (``every == 0``: fixed for the run); deterministic in (seed, device, period).
    """
    period = shift_epoch(server_round, every)
    fraction = np.random.default_rng([seed, device, period, 0xEC1]).uniform(low, high)
    return int(fraction * full_params)

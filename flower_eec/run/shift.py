"""Label-distribution shift over rounds: every ``R`` rounds a fresh Dirichlet draw over the devices.

Used by ECLM's continuous adaptation (ALGORITHMS.md, section 5; the schedule is our
reconstruction). Epoch 0 is the run's own partition; epoch ``e > 0`` re-deals the same training
pool, deterministic in (seed, e).
"""

from __future__ import annotations

import numpy as np

from flower_eec.data.partition import dirichlet, local_test_split
from flower_eec.run.federated import FederatedData

_SHIFT_STREAM = 104_729
_cache: dict[tuple[int, int, float, int, int, int], tuple[FederatedData, FederatedData]] = {}


def shifted(data: FederatedData, epoch: int, *, alpha: float, seed: int, min_size: int,
            local_test_size: int) -> FederatedData:
    """``data`` with its training pool re-dealt by a Dirichlet(alpha) draw for ``epoch``.

    The pool (every device's examples together), the dataset, the public slice and the global test
    set stay the same; each device gets new training indices and a new local test split following
    its new label mix. Epoch 0 returns ``data`` itself. Cached per process.
    """
    if epoch == 0:
        return data
    key = (id(data), epoch, alpha, seed, min_size, local_test_size)
    if key not in _cache:
        if len(_cache) > 16:
            _cache.clear()
        pool = np.sort(np.concatenate(data.train_indices))
        labels = data.dataset.y_train[pool]
        num_devices = len(data.train_indices)
        parts = dirichlet(labels, num_devices, alpha, seed * _SHIFT_STREAM + epoch,
                          min_size=min_size)
        train = tuple(pool[part] for part in parts)
        test = tuple(local_test_split(data.dataset.y_train[idx], data.dataset.y_test,
                                      local_test_size, seed + 7919 * (k + 1) + 31 * epoch)
                     for k, idx in enumerate(train))
        # The entry keeps ``data`` alive, so its id cannot be reused while the entry exists.
        _cache[key] = (data, FederatedData(data.dataset, train, test, data.public))
    return _cache[key][1]

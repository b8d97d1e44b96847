"""Label-distribution shift over rounds: every ``R`` rounds a fresh Dirichlet draw over the devices.

Used by ECLM's continuous adaptation (docs/methods.md, section ECLM; the schedule is our
reconstruction). Epoch 0 is the run's own partition; epoch ``e > 0`` re-deals the same training
pool, deterministic in (seed, e). A new epoch starts every ``eclm.shift_every`` rounds (ECLM) or
``data.shift_every`` rounds (FedAvg, for the fair baseline of ECLM): a local setting of our app's
devices (``data_at_round`` is the data function of their ``ECLMDevice`` and ``WeightsDevice``).
With the same ``seed`` and ``data`` section, both methods' devices hold the same shard and the
same local test split at every round.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context

from flower_eec.core.eclm_math import shift_epoch
from flower_eec.core.learning import Images
from flower_eec.data.partition import dirichlet, local_test_split
from flower_eec.run.config import Config
from flower_eec.run.devices import device_setup
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


def shift_every(config: Config) -> int:
    """Rounds between label shifts (0: never), as the run's method reads them (``Method.shift``:
    ECLM's ``eclm.shift_every``, FedAvg's ``data.shift_every``; the others' data never shifts)."""
    from flower_eec.run.registry import method  # the registry imports the methods, which use us

    entry = method(config.method)
    return entry.shift(config) if entry.shift is not None else 0


def current_data(config: Config, data: FederatedData, server_round: int) -> FederatedData:
    """The devices' data at ``server_round`` under the run's shift schedule."""
    epoch = shift_epoch(server_round, shift_every(config))
    d = config.data
    return shifted(data, epoch, alpha=d.alpha, seed=config.seed, min_size=d.min_size,
                   local_test_size=d.local_test_size)


def data_at_round(context: Context, server_round: int) -> tuple[Images, Images]:
    """This node's training shard and local test split at ``server_round`` (our app's)."""
    config, data, device = device_setup(context)
    now = current_data(config, data, server_round)
    return now.device_train(device), now.device_test(device)

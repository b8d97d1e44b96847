"""The data of one run: the dataset, each device's training shard and local test split.

Built once per process and cached, keyed by the settings that determine it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from flower_eec.core.learning import Images
from flower_eec.data import load_dataset
from flower_eec.data.dataset import Dataset
from flower_eec.data.partition import (
    holdout_split,
    local_test_split,
    partition,
    stratified_subset,
)
from flower_eec.run.config import Config


@dataclass(frozen=True)
class FederatedData:
    """A dataset split over ``num_devices`` devices; the global test set stays whole.

    ``public`` indexes the held-out public slice of the training set (``data.holdout``) that no
    device receives: the data a server may own (the bridge's training set, ECLM's cloud data).
    """

    dataset: Dataset
    train_indices: tuple[np.ndarray, ...]
    test_indices: tuple[np.ndarray, ...]
    public: np.ndarray

    def device_train(self, device: int) -> Images:
        """Device ``device``'s private training examples."""
        return self._images(
            self.dataset.x_train, self.dataset.y_train, self.train_indices[device]
        )

    def device_test(self, device: int) -> Images:
        """Device ``device``'s local test split (drawn from its own label distribution)."""
        return self._images(
            self.dataset.x_test, self.dataset.y_test, self.test_indices[device]
        )

    def public_train(self) -> Images:
        """The held-out public slice of the training set (empty when ``data.holdout`` is 0)."""
        return self._images(self.dataset.x_train, self.dataset.y_train, self.public)

    def global_test(self) -> Images:
        """The whole test set."""
        d = self.dataset
        return Images(
            torch.from_numpy(d.x_test), torch.from_numpy(d.y_test), d.mean, d.std
        )

    def _images(self, x: np.ndarray, y: np.ndarray, index: np.ndarray) -> Images:
        return Images(
            torch.from_numpy(x[index]),
            torch.from_numpy(y[index]),
            self.dataset.mean,
            self.dataset.std,
        )


def federated_data(config: Config) -> FederatedData:
    """The run's federated data (cached per process)."""
    d = config.data
    return _build(
        d.dataset,
        d.root,
        d.verify,
        d.subset,
        d.holdout,
        d.partition,
        json.dumps(d.partitioner_args, sort_keys=True),  # hashable, for the cache
        d.alpha,
        d.classes_per_device,
        d.min_size,
        d.local_test_size,
        d.synthetic_train,
        d.synthetic_test,
        d.cifar100_labels,
        config.topology.num_devices,
        config.seed,
    )


@lru_cache(maxsize=2)
def _build(
    name: str,
    root: str,
    verify: bool,
    subset: float,
    holdout: float,
    scheme: str,
    partitioner_args: str,
    alpha: float,
    classes_per_device: int,
    min_size: int,
    local_test_size: int,
    synthetic_train: int,
    synthetic_test: int,
    cifar100_labels: str,
    num_devices: int,
    seed: int,
) -> FederatedData:
    options: dict[str, object] = {}
    if name == "synthetic":
        options = {"num_train": synthetic_train, "num_test": synthetic_test}
    elif name == "cifar100":
        options = {"labels": cifar100_labels}
    dataset = load_dataset(name, root or None, verify=verify, seed=seed, **options)
    public, pool = holdout_split(dataset.y_train, holdout)
    if subset < 1.0:
        pool = pool[stratified_subset(dataset.y_train[pool], subset, seed)]
    shards = partition(
        dataset.y_train[pool],
        num_devices,
        scheme,
        seed=seed,
        alpha=alpha,
        classes_per_device=classes_per_device,
        min_size=min_size,
        partitioner_args=json.loads(partitioner_args),
    )
    train = tuple(pool[shard] for shard in shards)
    test = tuple(
        local_test_split(
            dataset.y_train[idx], dataset.y_test, local_test_size, seed + 7919 * (k + 1)
        )
        for k, idx in enumerate(train)
    )
    return FederatedData(dataset, train, test, public)

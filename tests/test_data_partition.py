"""Device partitions and subsets: determinism, completeness, and each scheme's label mix.

Labels mimic CIFAR-10 (10 classes, equal counts) so expected counts are known exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from flower_eec.data import (
    dirichlet,
    iid,
    local_test_split,
    partition,
    pathological,
    stratified_subset,
)
from flower_eec.errors import ConfigError, DataError

SCHEME_ARGS: dict[str, dict[str, Any]] = {
    "iid": {},
    "dirichlet": {"alpha": 0.5},
    "pathological": {"classes_per_device": 2},
}


def cifar_like_labels(per_class: int = 500, num_classes: int = 10) -> np.ndarray:
    """Shuffled int64 labels with exactly `per_class` examples of each class."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return np.random.default_rng(123).permutation(labels)


@pytest.mark.parametrize("scheme", sorted(SCHEME_ARGS))
def test_partition_is_deterministic_in_seed(scheme: str) -> None:
    labels = cifar_like_labels()
    first = partition(labels, 20, scheme, seed=1, **SCHEME_ARGS[scheme])
    again = partition(labels, 20, scheme, seed=1, **SCHEME_ARGS[scheme])
    other = partition(labels, 20, scheme, seed=2, **SCHEME_ARGS[scheme])
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("scheme", sorted(SCHEME_ARGS))
@pytest.mark.parametrize("num_devices", [5, 7, 100])
def test_every_example_lands_on_exactly_one_device(scheme: str, num_devices: int) -> None:
    labels = cifar_like_labels()
    parts = partition(labels, num_devices, scheme, seed=0, **SCHEME_ARGS[scheme])
    assert len(parts) == num_devices
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(labels)))


def test_iid_sizes_differ_by_at_most_one() -> None:
    sizes = [len(p) for p in iid(cifar_like_labels(), 7, seed=0)]
    assert sum(sizes) == 5000 and max(sizes) - min(sizes) <= 1


def test_pathological_gives_each_device_exactly_its_classes() -> None:
    labels = cifar_like_labels()
    parts = pathological(labels, 20, classes_per_device=2, seed=0)
    classes = [np.unique(labels[p]) for p in parts]
    assert all(len(c) == 2 for c in classes)
    # 20 devices x 2 slots over 10 classes: each class on 4 devices, 125 examples each.
    holders = np.bincount(np.concatenate(classes), minlength=10)
    assert holders.tolist() == [4] * 10
    assert sorted({len(p) for p in parts}) == [250]


def test_pathological_refuses_impossible_settings() -> None:
    labels = cifar_like_labels()
    with pytest.raises(ConfigError, match="classes_per_device"):
        pathological(labels, 10, classes_per_device=11, seed=0)
    with pytest.raises(ConfigError, match="no device"):
        pathological(labels, 4, classes_per_device=2, seed=0)
    with pytest.raises(ConfigError, match="class 0 has 2 examples"):
        pathological(np.array([0, 0, 1, 1, 1, 1]), 3, classes_per_device=2, seed=0)


def test_dirichlet_respects_min_size_and_alpha_controls_skew() -> None:
    labels = cifar_like_labels()
    skewed = dirichlet(labels, 20, alpha=0.1, seed=0, min_size=50)
    uniform = dirichlet(labels, 20, alpha=1000.0, seed=0, min_size=50)
    assert min(len(p) for p in skewed) >= 50

    def top_class_share(parts: list[np.ndarray]) -> float:
        return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))

    # Huge alpha ~ IID (top class ~10-15%); tiny alpha concentrates each device on few classes.
    assert top_class_share(uniform) < 0.2
    assert top_class_share(skewed) > 0.5


def test_dirichlet_refuses_impossible_settings() -> None:
    labels = cifar_like_labels(per_class=10)
    with pytest.raises(ConfigError, match="min_size=10"):
        dirichlet(labels, 11, alpha=1.0, seed=0, min_size=10)
    with pytest.raises(ConfigError, match="alpha"):
        dirichlet(labels, 2, alpha=0.0, seed=0)
    with pytest.raises(ConfigError, match="no draw"):
        # 100 examples, 10 devices needing all 10 each: a random draw almost never fits exactly.
        dirichlet(labels, 10, alpha=0.01, seed=0, min_size=10)


def test_partition_dispatch_and_errors() -> None:
    labels = cifar_like_labels()
    direct = dirichlet(labels, 5, alpha=0.3, seed=4, min_size=10)
    via = partition(labels, 5, "dirichlet", seed=4, alpha=0.3)
    assert all(np.array_equal(a, b) for a, b in zip(direct, via, strict=True))
    with pytest.raises(ConfigError, match="iid, dirichlet, pathological"):
        partition(labels, 5, "shards", seed=0)
    with pytest.raises(ConfigError, match="num_devices"):
        iid(labels, 0, seed=0)
    with pytest.raises(ConfigError, match="exceeds"):
        iid(labels[:3], 4, seed=0)
    with pytest.raises(DataError, match="1-D integer"):
        iid(labels.astype(np.float32), 2, seed=0)


def test_stratified_subset_keeps_fraction_of_each_class() -> None:
    labels = cifar_like_labels(per_class=5000)
    subset = stratified_subset(labels, 0.1, seed=0)
    assert np.bincount(labels[subset]).tolist() == [500] * 10
    assert np.all(np.diff(subset) > 0)
    np.testing.assert_array_equal(subset, stratified_subset(labels, 0.1, seed=0))
    assert not np.array_equal(subset, stratified_subset(labels, 0.1, seed=1))
    assert len(stratified_subset(labels, 1.0, seed=0)) == len(labels)
    with pytest.raises(ConfigError, match="fraction"):
        stratified_subset(labels, 0.0, seed=0)


def test_local_test_split_follows_the_device_label_mix() -> None:
    test_labels = np.repeat(np.arange(10, dtype=np.int64), 1000)
    snapshot = test_labels.copy()
    device = np.array([0] * 300 + [1] * 100)
    picked = local_test_split(device, test_labels, size=200, seed=0)
    assert np.bincount(test_labels[picked], minlength=10).tolist() == [150, 50] + [0] * 8
    assert np.all(np.diff(picked) > 0)
    np.testing.assert_array_equal(test_labels, snapshot)
    np.testing.assert_array_equal(picked, local_test_split(device, test_labels, 200, seed=0))


def test_local_test_split_for_dirichlet_devices() -> None:
    train = cifar_like_labels()
    test_labels = np.repeat(np.arange(10, dtype=np.int64), 1000)
    for part in dirichlet(train, 10, alpha=0.3, seed=0):
        picked = local_test_split(train[part], test_labels, size=500, seed=0)
        expected = np.bincount(train[part], minlength=10) / len(part) * 500
        got = np.bincount(test_labels[picked], minlength=10)
        assert len(picked) == 500 and np.all(np.abs(got - expected) < 1)


def test_local_test_split_errors() -> None:
    test_labels = np.arange(10)
    with pytest.raises(ConfigError, match="size"):
        local_test_split(np.array([1, 2]), test_labels, size=11, seed=0)
    with pytest.raises(DataError, match="no training labels"):
        local_test_split(np.array([], dtype=np.int64), test_labels, size=2, seed=0)

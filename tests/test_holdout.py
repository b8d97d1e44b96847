"""The held-out public split behind FedAgg's bridge: disjoint, complete, stratified, deterministic.

Labels mimic CIFAR-10 in miniature (10 classes of 50), so per-class counts are known exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from flower_eec.data.partition import HOLDOUT_SEED, holdout_split
from flower_eec.errors import ConfigError, DataError


def labels_of(per_class: int = 50, num_classes: int = 10) -> np.ndarray:
    """Shuffled int64 labels, `per_class` of each class."""
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    return np.random.default_rng(7).permutation(labels)


def test_public_and_private_are_disjoint_and_complete() -> None:
    labels = labels_of()
    public, private = holdout_split(labels, 0.1)
    assert np.intersect1d(public, private).size == 0
    assert np.array_equal(np.sort(np.concatenate([public, private])), np.arange(len(labels)))
    assert public.dtype == private.dtype == np.int64
    assert np.all(np.diff(public) > 0) and np.all(np.diff(private) > 0)


def test_every_class_gives_the_same_share() -> None:
    labels = labels_of()
    public, private = holdout_split(labels, 0.1)
    assert np.array_equal(np.bincount(labels[public], minlength=10), np.full(10, 5))
    assert np.array_equal(np.bincount(labels[private], minlength=10), np.full(10, 45))


def test_uneven_classes_round_half_up_per_class() -> None:
    # Sizes 10, 15, 4 at 0.1 keep floor(1.0 + .5) = 1, floor(1.5 + .5) = 2, floor(.4 + .5) = 0.
    labels = np.array([0] * 10 + [1] * 15 + [2] * 4, dtype=np.int64)
    public, _ = holdout_split(labels, 0.1)
    assert np.array_equal(np.bincount(labels[public], minlength=3), [1, 2, 0])


def test_same_seed_same_split_and_the_default_seed_is_fixed() -> None:
    labels = labels_of()
    first = holdout_split(labels, 0.2)
    again = holdout_split(labels, 0.2, seed=HOLDOUT_SEED)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = holdout_split(labels, 0.2, seed=HOLDOUT_SEED + 1)
    assert not np.array_equal(first[0], other[0])


def test_a_larger_fraction_contains_a_smaller_ones_public_slice() -> None:
    labels = labels_of()
    small, _ = holdout_split(labels, 0.1)
    large, large_private = holdout_split(labels, 0.3)
    assert np.isin(small, large).all()
    assert not np.isin(small, large_private).any()


def test_fraction_zero_keeps_everything_private() -> None:
    labels = labels_of()
    public, private = holdout_split(labels, 0.0)
    assert public.size == 0 and np.array_equal(private, np.arange(len(labels)))


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_fraction_outside_zero_one_is_refused(fraction: float) -> None:
    with pytest.raises(ConfigError, match="holdout fraction"):
        holdout_split(labels_of(), fraction)


def test_non_integer_labels_are_refused() -> None:
    with pytest.raises(DataError, match="integer"):
        holdout_split(np.array([0.0, 1.0]), 0.5)


def test_no_device_receives_a_held_out_image() -> None:
    from flower_eec.run.config import resolve
    from flower_eec.run.federated import federated_data

    config = resolve(None, {"data": {"holdout": 0.2, "subset": 0.5}, "topology": {
        "num_devices": 5, "num_edges": 1}})
    data = federated_data(config)
    devices = np.concatenate(data.train_indices)
    public, _ = holdout_split(data.dataset.y_train, 0.2)
    assert np.array_equal(data.public, public)
    assert np.intersect1d(devices, data.public).size == 0
    # the subset is taken from the private rest: half of the 80% that remains
    assert len(devices) == pytest.approx(0.5 * 0.8 * len(data.dataset.y_train), abs=10)
    assert len(data.public_train()) == len(public)

"""Split a training set across devices (IID, Dirichlet, pathological) and draw per-device subsets.

Pure numpy; every function is deterministic given its seed, and each partition scheme puts every
training example on exactly one device. ``partition`` also hands a split to a Flower Datasets
partitioner (``scheme="flwr_datasets:<Name>"``, see ``flower_eec.data.flwr_partitioners``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from flower_eec.data import flwr_partitioners
from flower_eec.errors import ConfigError, DataError

SCHEMES = ("iid", "dirichlet", "pathological")
_MAX_DIRICHLET_DRAWS = 1000


def _as_labels(labels: np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got {array.dtype} {array.shape}")
    if len(array) and int(array.min()) < 0:
        raise DataError(f"labels must be >= 0, found {int(array.min())}")
    return array


def _check_devices(num_devices: int, num_examples: int) -> None:
    if num_devices < 1:
        raise ConfigError(f"num_devices must be >= 1, got {num_devices}")
    if num_devices > num_examples:
        raise ConfigError(
            f"num_devices={num_devices} exceeds the {num_examples} training examples, so some "
            "device would hold no data; use fewer devices or a larger dataset"
        )


def _sorted(parts: list[np.ndarray]) -> list[np.ndarray]:
    # Sorted int64 indices make partitions easy to compare and keep data access cache-friendly.
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def iid(labels: np.ndarray, num_devices: int, seed: int) -> list[np.ndarray]:
    """Shuffle all indices and deal them into `num_devices` parts whose sizes differ by <= 1."""
    labels = _as_labels(labels)
    _check_devices(num_devices, len(labels))
    order = np.random.default_rng(seed).permutation(len(labels))
    return _sorted(np.array_split(order, num_devices))


def _dirichlet_draw(
    labels: np.ndarray, num_devices: int, alpha: float, rng: np.random.Generator
) -> list[list[np.ndarray]]:
    """One FedML-style draw: per class, split its examples by Dir(alpha) shares over devices."""
    cap = len(labels) / num_devices
    parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
    sizes = np.zeros(num_devices, dtype=np.int64)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(num_devices, alpha))
        # Devices that already hold a fair share take no more, which keeps sizes from exploding.
        shares = np.where(sizes < cap, shares, 0.0)
        total = shares.sum()
        if not np.isfinite(total) or total <= 0:
            # Tiny alpha can underflow every open share to 0; fall back to an even split.
            shares = (sizes < cap).astype(float)
            total = shares.sum()
        cuts = (np.cumsum(shares / total) * len(members)).astype(np.int64)[:-1]
        for device, chunk in enumerate(np.split(members, cuts)):
            parts[device].append(chunk)
            sizes[device] += len(chunk)
    return parts


def dirichlet(
    labels: np.ndarray, num_devices: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Non-IID split: per class, device shares ~ Dir(alpha); redraw until all have >= min_size.

    Small `alpha` (e.g. 0.1) gives few classes per device, large `alpha` approaches IID. Raises
    ConfigError when `min_size` is unreachable or not met after 1000 draws.
    """
    labels = _as_labels(labels)
    _check_devices(num_devices, len(labels))
    if not alpha > 0:
        raise ConfigError(f"dirichlet alpha must be > 0, got {alpha}")
    if min_size < 0:
        raise ConfigError(f"min_size must be >= 0, got {min_size}")
    if num_devices * min_size > len(labels):
        raise ConfigError(
            f"cannot give {num_devices} devices at least min_size={min_size} examples each from "
            f"{len(labels)} examples; lower min_size or num_devices"
        )
    rng = np.random.default_rng(seed)
    for _ in range(_MAX_DIRICHLET_DRAWS):
        parts = [
            np.concatenate(chunks) for chunks in _dirichlet_draw(labels, num_devices, alpha, rng)
        ]
        if min(len(p) for p in parts) >= min_size:
            return _sorted(parts)
    raise ConfigError(
        f"dirichlet partition: no draw in {_MAX_DIRICHLET_DRAWS} gave every one of {num_devices} "
        f"devices >= {min_size} examples with alpha={alpha}; raise alpha or lower min_size"
    )


def pathological(
    labels: np.ndarray, num_devices: int, classes_per_device: int, seed: int
) -> list[np.ndarray]:
    """Non-IID split where each device holds exactly `classes_per_device` distinct classes.

    Classes are dealt to devices as evenly as possible (each class goes to a near-equal number of
    devices), and a class's examples are split evenly among the devices that hold it.
    """
    labels = _as_labels(labels)
    _check_devices(num_devices, len(labels))
    classes = np.unique(labels)
    if not 1 <= classes_per_device <= len(classes):
        raise ConfigError(
            f"classes_per_device must be in 1..{len(classes)} (the number of classes), got "
            f"{classes_per_device}"
        )
    slots = num_devices * classes_per_device
    if slots < len(classes):
        raise ConfigError(
            f"num_devices * classes_per_device = {slots} < {len(classes)} classes, so some class "
            "would land on no device; raise either"
        )
    rng = np.random.default_rng(seed)
    # Repeating one permutation makes every window of classes_per_device (<= #classes) distinct.
    cycle = rng.permutation(classes)
    dealt = np.resize(cycle, slots).reshape(num_devices, classes_per_device)
    dealt = dealt[rng.permutation(num_devices)]
    parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
    for cls in classes:
        holders = np.flatnonzero((dealt == cls).any(axis=1))
        members = rng.permutation(np.flatnonzero(labels == cls))
        if len(members) < len(holders):
            raise ConfigError(
                f"class {int(cls)} has {len(members)} examples but {len(holders)} devices must "
                "share it; use fewer devices or fewer classes_per_device"
            )
        for device, chunk in zip(holders, np.array_split(members, len(holders)), strict=True):
            parts[device].append(chunk)
    return _sorted([np.concatenate(chunks) for chunks in parts])


def partition(
    labels: np.ndarray,
    num_devices: int,
    scheme: str,
    *,
    seed: int,
    alpha: float = 1.0,
    classes_per_device: int = 2,
    min_size: int = 10,
    partitioner_args: Mapping[str, Any] | None = None,
) -> list[np.ndarray]:
    """Split the indices of `labels` over devices by scheme: "iid", "dirichlet", "pathological",
    or "flwr_datasets:<Name>" (that Flower Datasets partitioner, built with `partitioner_args`;
    `seed`, `alpha`, `classes_per_device` and `min_size` fill the arguments it leaves out)."""
    if flwr_partitioners.is_flwr_datasets(scheme):
        labels = _as_labels(labels)
        _check_devices(num_devices, len(labels))
        return flwr_partitioners.partition(
            labels, num_devices, scheme, partitioner_args or {}, seed=seed, alpha=alpha,
            classes_per_device=classes_per_device, min_size=min_size)
    if partitioner_args:
        raise ConfigError("partitioner_args apply only to a flwr_datasets:<Partitioner> scheme, "
                          f"not to {scheme!r}")
    if scheme == "iid":
        return iid(labels, num_devices, seed)
    if scheme == "dirichlet":
        return dirichlet(labels, num_devices, alpha, seed, min_size=min_size)
    if scheme == "pathological":
        return pathological(labels, num_devices, classes_per_device, seed)
    raise ConfigError(f"unknown partition scheme {scheme!r}; allowed: {', '.join(SCHEMES)}, or "
                      f"{flwr_partitioners.PREFIX}<Partitioner> (a Flower Datasets partitioner)")


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integer counts proportional to `weights` that sum exactly to `total`."""
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(np.int64)
    # Stable sort so ties go to the lower class id, keeping results reproducible.
    leftovers = np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]
    counts[leftovers] += 1
    return counts


def local_test_split(
    device_labels: np.ndarray, test_labels: np.ndarray, size: int, seed: int
) -> np.ndarray:
    """Sorted indices into the global test set whose label mix follows the device's training labels.

    Per-class counts are `size` split in proportion to the device's class frequencies; each class
    is sampled without replacement, capped at the test examples that class has (so the result may
    fall short of `size` only when a class runs out). Devices may share test examples.
    """
    device_labels, test_labels = _as_labels(device_labels), _as_labels(test_labels)
    if len(device_labels) == 0:
        raise DataError("local_test_split: the device holds no training labels")
    if not 1 <= size <= len(test_labels):
        raise ConfigError(f"local test size must be in 1..{len(test_labels)}, got {size}")
    num_classes = int(max(device_labels.max(), test_labels.max())) + 1
    counts = _largest_remainder(np.bincount(device_labels, minlength=num_classes), size)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.flatnonzero(counts):
        pool = np.flatnonzero(test_labels == cls)
        chosen.append(rng.choice(pool, size=min(int(counts[cls]), len(pool)), replace=False))
    return np.sort(np.concatenate(chosen).astype(np.int64))


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices keeping `fraction` of each class (rounded, at least one per class)."""
    labels = _as_labels(labels)
    if not 0 < fraction <= 1:
        raise ConfigError(f"subset fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    kept = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        keep = max(1, round(fraction * len(members)))
        kept.append(rng.choice(members, size=keep, replace=False))
    return np.sort(np.concatenate(kept).astype(np.int64)) if kept else np.zeros(0, np.int64)


# Fixed on purpose: the shipped bridge autoencoder was trained on the public slice this seed gives.
HOLDOUT_SEED = 20231218


def holdout_split(
    labels: np.ndarray, fraction: float, seed: int = HOLDOUT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (public, private): a stratified held-out public slice and the rest.

    Each class gives ``floor(fraction * n_class + 1/2)`` examples to the public slice. Per class the
    order is one seeded permutation whatever the fraction, so a larger fraction's public slice
    contains a smaller one's: a run that holds out at least the fraction the shipped bridge was
    trained on (``HOLDOUT_SEED``) never gives a device an image the bridge saw. Both results are
    sorted int64 and together cover every index exactly once.
    """
    labels = _as_labels(labels)
    if not 0 <= fraction < 1:
        raise ConfigError(f"holdout fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    public = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        public.append(members[: int(np.floor(fraction * len(members) + 0.5))])
    chosen = np.concatenate(public).astype(np.int64) if public else np.zeros(0, np.int64)
    is_public = np.zeros(len(labels), dtype=bool)
    is_public[chosen] = True
    return np.flatnonzero(is_public).astype(np.int64), np.flatnonzero(~is_public).astype(np.int64)

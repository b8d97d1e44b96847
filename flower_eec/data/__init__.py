"""Datasets, device partitions and batched augmentation.

`load_dataset` is the one entry point the rest of flower-eec uses to get data by name: CIFAR-10,
CIFAR-100, CINIC-10, Fashion-MNIST, MNIST and SVHN read offline from their official files, or
generated synthetic data. Each `Dataset` carries its classes, channels, image size and
normalisation statistics.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from pathlib import Path

from flower_eec.data.augment import (
    augment,
    normalise,
    random_crop,
    random_cutout,
    random_flip,
)
from flower_eec.data.cifar10 import load_cifar10
from flower_eec.data.cifar100 import load_cifar100
from flower_eec.data.cinic10 import load_cinic10
from flower_eec.data.dataset import Dataset
from flower_eec.data.fashion_mnist import load_fashion_mnist
from flower_eec.data.mnist import load_mnist
from flower_eec.data.partition import (
    SCHEMES,
    dirichlet,
    iid,
    local_test_split,
    partition,
    pathological,
    stratified_subset,
)
from flower_eec.data.svhn import load_svhn
from flower_eec.data.synthetic import make_synthetic
from flower_eec.errors import ConfigError, DataError

DATASETS = ("cifar10", "cifar100", "cinic10", "fashion_mnist", "mnist", "svhn", "synthetic")
# Each dataset's image shape (channels, height, width), known before a file is read: what the
# config checks a run against (FedAgg's bridge). The loaders return arrays of exactly this shape.
IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "cinic10": (3, 32, 32),
    "fashion_mnist": (1, 28, 28),
    "mnist": (1, 28, 28),
    "svhn": (3, 32, 32),
    "synthetic": (3, 32, 32),  # make_synthetic's defaults, the ones runs use
}
DATA_ENV = "FLOWER_EEC_DATA"

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "IMAGE_SHAPES",
    "SCHEMES",
    "Dataset",
    "augment",
    "dataset_options",
    "dirichlet",
    "iid",
    "load_cifar10",
    "load_cifar100",
    "load_cinic10",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist",
    "load_svhn",
    "local_test_split",
    "make_synthetic",
    "normalise",
    "partition",
    "pathological",
    "random_crop",
    "random_cutout",
    "random_flip",
    "stratified_subset",
]

_COMMON = ("root", "verify", "seed")  # arguments every loader gets, not dataset options
# Each reader takes (root, verify=...) and its own keyword options (e.g. CIFAR-100's `labels`).
_REAL_LOADERS: dict[str, Callable[..., Dataset]] = {
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "cinic10": load_cinic10,
    "fashion_mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "svhn": load_svhn,
}


def resolve_root(root: str | Path | None, name: str) -> Path:
    """Return `root`, else $FLOWER_EEC_DATA; raise DataError when neither is set."""
    chosen = str(root) if root not in (None, "") else os.environ.get(DATA_ENV, "")
    if not chosen:
        raise DataError(
            f"no data folder given for dataset {name!r}: set `data.root` in the config or the "
            f"{DATA_ENV} environment variable to the folder holding the {name} files "
            "(e.g. a folder with cifar10/cifar-10-binary.tar.gz and mnist/*.gz)"
        )
    return Path(chosen).expanduser()


def dataset_options(name: str) -> tuple[str, ...]:
    """The keyword options dataset `name` accepts besides root, verify and seed."""
    function = make_synthetic if name == "synthetic" else _REAL_LOADERS[name]
    return tuple(p for p in inspect.signature(function).parameters if p not in _COMMON)


def _check_options(name: str, options: dict[str, object]) -> None:
    allowed = dataset_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; allowed: "
            f"{', '.join(allowed) or 'none'}"
        )


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    verify: bool = True,
    seed: int = 0,
    **options: object,
) -> Dataset:
    """Load a dataset by name (one of `DATASETS`): a real one from `root`, or "synthetic".

    An empty `root` falls back to the FLOWER_EEC_DATA environment variable. `verify` checks real
    files against their official md5s (or, where the publisher gives none, their image counts);
    `seed` applies to "synthetic" only. `options` are the dataset's own keyword options, e.g.
    `labels="fine"` for CIFAR-100, `extra=True` for SVHN, `use_valid=False` for CINIC-10, or
    `num_train=...` for synthetic data (see `dataset_options`).
    """
    key = name.strip().lower()
    if key != "synthetic" and key not in _REAL_LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    _check_options(key, options)
    if key == "synthetic":
        return make_synthetic(seed=seed, **options)  # type: ignore[arg-type]
    return _REAL_LOADERS[key](resolve_root(root, key), verify=verify, **options)

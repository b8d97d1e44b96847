"""Datasets (CIFAR-10, MNIST, synthetic), device partitions and batched augmentation.

`load_dataset` is the one entry point the rest of flower-eec uses to get data by name.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from flower_eec.data.augment import (
    augment,
    normalise,
    random_crop,
    random_cutout,
    random_flip,
)
from flower_eec.data.cifar10 import load_cifar10
from flower_eec.data.dataset import Dataset
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
from flower_eec.data.synthetic import make_synthetic
from flower_eec.errors import ConfigError, DataError

DATASETS = ("cifar10", "mnist", "synthetic")
DATA_ENV = "FLOWER_EEC_DATA"

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "SCHEMES",
    "Dataset",
    "augment",
    "dirichlet",
    "iid",
    "load_cifar10",
    "load_dataset",
    "load_mnist",
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

_REAL_LOADERS = {"cifar10": load_cifar10, "mnist": load_mnist}


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


def _synthetic(seed: int, options: dict[str, object]) -> Dataset:
    allowed = set(inspect.signature(make_synthetic).parameters) - {"seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown synthetic option(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    return make_synthetic(seed=seed, **options)  # type: ignore[arg-type]


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    verify: bool = True,
    seed: int = 0,
    **synthetic_options: object,
) -> Dataset:
    """Load a dataset by name: "cifar10", "mnist" (from `root`) or "synthetic" (generated).

    An empty `root` falls back to the FLOWER_EEC_DATA environment variable. `verify` checks real
    files against their official md5s; `seed` and `synthetic_options` apply to "synthetic" only.
    """
    key = name.strip().lower()
    if key == "synthetic":
        return _synthetic(seed, synthetic_options)
    if key not in _REAL_LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if synthetic_options:
        raise ConfigError(
            f"options {', '.join(sorted(synthetic_options))} apply only to the synthetic dataset, "
            f"not {key!r}"
        )
    return _REAL_LOADERS[key](resolve_root(root, key), verify=verify)

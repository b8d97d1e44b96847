"""Fashion-MNIST loader: the four official IDX files, gzip-compressed as published, or extracted.

The files are named exactly as MNIST's, so they are looked for in `root`, `root/fashion_mnist`,
`root/fashion-mnist`, torchvision's `root/FashionMNIST/raw` and the publisher's `root/fashion`:
point `data.root` at the Fashion-MNIST folder, not at a folder of MNIST files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flower_eec.data.checksums import (
    FASHION_MNIST_GZ_MD5,
    FASHION_MNIST_URL,
    check_count,
    verify_md5,
)
from flower_eec.data.dataset import Dataset
from flower_eec.data.idx import find_idx_file, idx_content, image_split, parse_idx
from flower_eec.data.paths import existing_root, search_dirs
from flower_eec.errors import DataError

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MEAN = (0.2860,)
STD = (0.3530,)
SIZES = {"train": 60_000, "t10k": 10_000}

_SUBDIRS = ("fashion_mnist", "fashion-mnist", "FashionMNIST/raw", "fashion")
_FIX = f"Re-download it from {FASHION_MNIST_URL}."


def find_fashion_file(dirs: list[Path], name: str) -> Path:
    """Return the first `name.gz` or `name` found in `dirs`; the published .gz is preferred.

    The publisher gives the md5 of the .gz files only, so a .gz can be verified, an extracted
    file only by its image count.
    """
    found = find_idx_file(dirs, name, gz_first=True)
    if found is not None:
        return found
    raise DataError(
        f"Fashion-MNIST file {name}.gz (or {name}) not found; searched "
        f"{', '.join(str(d) for d in dirs)}. Download the four IDX files from "
        f"{FASHION_MNIST_URL} and point `data.root` / FLOWER_EEC_DATA at their folder."
    )


def read_fashion_file(path: Path, name: str, verify: bool) -> np.ndarray:
    """Parse one IDX file (decompressing a .gz); if `verify`, check a .gz's official md5."""
    data = path.read_bytes()
    array = parse_idx(idx_content(path, data, _FIX), str(path), _FIX)
    if verify and path.suffix == ".gz":
        verify_md5(path, FASHION_MNIST_GZ_MD5[f"{name}.gz"], FASHION_MNIST_URL, data=data)
    return array


def load_split(dirs: list[Path], prefix: str, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Load images (N, 1, 28, 28) uint8 and labels (N,) int64 of the split named by `prefix`."""
    images_path = find_fashion_file(dirs, f"{prefix}-images-idx3-ubyte")
    labels_path = find_fashion_file(dirs, f"{prefix}-labels-idx1-ubyte")
    images = read_fashion_file(images_path, f"{prefix}-images-idx3-ubyte", verify)
    labels = read_fashion_file(labels_path, f"{prefix}-labels-idx1-ubyte", verify)
    split = image_split(images, labels, images_path, labels_path, num_classes=len(CLASSES),
                        what="class", hint=_FIX, image_shape=(28, 28))
    if verify and images_path.suffix != ".gz":
        check_count(str(images_path), len(images), SIZES[prefix], FASHION_MNIST_URL)
    return split


def load_fashion_mnist(root: str | Path, verify: bool = True) -> Dataset:
    """Load Fashion-MNIST (60,000 train + 10,000 test, 1x28x28) from the IDX files under `root`.

    With `verify` (the default) each .gz file is checked against the publisher's md5 (cached after
    the first load); extracted files, which have no published md5, by their image counts.
    """
    dirs = search_dirs(existing_root(root, "Fashion-MNIST", FASHION_MNIST_URL), _SUBDIRS)
    x_train, y_train = load_split(dirs, "train", verify)
    x_test, y_test = load_split(dirs, "t10k", verify)
    return Dataset(
        name="fashion_mnist",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=len(CLASSES),
        mean=MEAN,
        std=STD,
        classes=CLASSES,
    )

"""MNIST loader: the four official IDX files, raw or gzip-compressed.

Looks in `root`, `root/mnist` and torchvision's `root/MNIST/raw`, so existing downloads work as-is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flower_eec.data.checksums import MNIST_MD5, MNIST_URL, verify_md5
from flower_eec.data.dataset import Dataset
from flower_eec.data.idx import find_idx_file, idx_content, image_split, parse_idx
from flower_eec.data.paths import existing_root, search_dirs
from flower_eec.errors import DataError

CLASSES = tuple(str(digit) for digit in range(10))
MEAN = (0.1307,)
STD = (0.3081,)
NUM_CLASSES = 10
_SUBDIRS = ("mnist", "MNIST/raw")
_FIX = f"Re-download it from {MNIST_URL}."


def find_mnist_file(dirs: list[Path], name: str) -> Path:
    """Return the first `name` or `name.gz` found in `dirs`, raw preferred (no decompression)."""
    found = find_idx_file(dirs, name, gz_first=False)
    if found is not None:
        return found
    searched = ", ".join(str(d) for d in dirs)
    raise DataError(
        f"MNIST file {name} (or {name}.gz) not found; searched {searched}. Download the four IDX "
        f"files from {MNIST_URL} into one of those folders, or point `data.root` / FLOWER_EEC_DATA "
        "at the folder that holds them."
    )


def load_idx_file(path: Path, name: str, verify: bool) -> np.ndarray:
    """Parse one MNIST IDX file; if `verify`, check its decompressed md5 against the official."""
    content = idx_content(path, path.read_bytes(), _FIX)
    array = parse_idx(content, str(path), _FIX)
    if verify:
        if path.suffix == ".gz":
            # Official md5s are of the raw files; gzip wrappers differ between mirrors.
            verify_md5(path, MNIST_MD5[name], MNIST_URL, member="decompressed", data=content)
        else:
            verify_md5(path, MNIST_MD5[name], MNIST_URL)
    return array


def load_split(dirs: list[Path], prefix: str, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Load images (N, 1, H, W) uint8 and labels (N,) int64 of the split named by `prefix`."""
    images_path = find_mnist_file(dirs, f"{prefix}-images-idx3-ubyte")
    labels_path = find_mnist_file(dirs, f"{prefix}-labels-idx1-ubyte")
    images = load_idx_file(images_path, f"{prefix}-images-idx3-ubyte", verify)
    labels = load_idx_file(labels_path, f"{prefix}-labels-idx1-ubyte", verify)
    return image_split(images, labels, images_path, labels_path, num_classes=NUM_CLASSES,
                       what="digit", hint=_FIX)


def load_mnist(root: str | Path, verify: bool = True) -> Dataset:
    """Load MNIST (60,000 train + 10,000 test, 1x28x28) from the IDX files under `root`.

    Each file may be raw or `.gz`. With `verify` (the default) every file's decompressed content
    is checked against the official md5; results are cached, so only the first load hashes.
    """
    dirs = search_dirs(existing_root(root, "MNIST", MNIST_URL), _SUBDIRS)
    x_train, y_train = load_split(dirs, "train", verify)
    x_test, y_test = load_split(dirs, "t10k", verify)
    return Dataset(
        name="mnist",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=NUM_CLASSES,
        mean=MEAN,
        std=STD,
        classes=CLASSES,
    )

"""SVHN loader: the cropped-digits release (format 2), `train_32x32.mat` and `test_32x32.mat`.

Each file is a MATLAB (v5) file holding `X`, uint8 of shape (32, 32, 3, N), and `y`, (N, 1) labels
1-10 where 10 stands for the digit 0. Reading .mat files needs scipy (the `datasets` extra).
`extra_32x32.mat` (531,131 easier digits) joins the training set only when asked (`extra=True`):
the papers train on `train_32x32.mat` alone, and the extra file is 1.3 GB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flower_eec.data.checksums import SVHN_MD5, SVHN_URL, verify_md5
from flower_eec.data.dataset import Dataset
from flower_eec.data.extras import require
from flower_eec.data.paths import existing_root, search_dirs
from flower_eec.errors import DataError

CLASSES = tuple(str(digit) for digit in range(10))
MEAN = (0.4377, 0.4438, 0.4728)
STD = (0.1980, 0.2010, 0.1970)
TRAIN_FILE = "train_32x32.mat"
TEST_FILE = "test_32x32.mat"
EXTRA_FILE = "extra_32x32.mat"
ZERO_LABEL = 10  # the release labels the digit 0 as 10

_SUBDIRS = ("svhn", "SVHN")
_FIX = f"Re-download the cropped digits (format 2) from {SVHN_URL}."


def find_svhn_file(dirs: list[Path], name: str) -> Path:
    """Return the first `name` found in `dirs`, or raise DataError naming where it looked."""
    for folder in dirs:
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"SVHN file {name} not found; searched {', '.join(str(d) for d in dirs)}. Download "
        f"{TRAIN_FILE} and {TEST_FILE} (format 2, cropped digits) from {SVHN_URL} and point "
        "`data.root` / FLOWER_EEC_DATA at their folder."
    )


def parse_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one .mat file into images (N, 3, 32, 32) uint8 and digit labels (N,) int64 (0-9)."""
    scipy_io = require("scipy.io", "scipy", "SVHN")
    try:
        content = scipy_io.loadmat(path, variable_names=("X", "y"))
    except Exception as exc:  # scipy raises many types on damaged or truncated files
        raise DataError(
            f"{path}: not a readable MATLAB v5 file ({type(exc).__name__}: {exc}); expected "
            f"SVHN's {path.name} holding X and y. {_FIX}"
        ) from exc
    if "X" not in content or "y" not in content:
        raise DataError(f"{path}: lacks the variables X and y of SVHN's cropped digits. {_FIX}")
    x, y = np.asarray(content["X"]), np.asarray(content["y"])
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(
            f"{path}: expected X as uint8 (32, 32, 3, N), got {x.dtype} {x.shape}. {_FIX}"
        )
    labels = y.reshape(-1)
    if y.ndim > 2 or len(labels) != x.shape[3]:
        raise DataError(
            f"{path}: expected y of shape ({x.shape[3]}, 1) to match X, got {y.shape}. {_FIX}"
        )
    if len(labels) and (
        not np.all(np.mod(labels, 1) == 0)
        or labels.min() < 1
        or labels.max() > ZERO_LABEL
    ):
        raise DataError(
            f"{path}: labels must be whole numbers 1-10 (10 meaning the digit 0), found "
            f"{labels.min()}..{labels.max()}. {_FIX}"
        )
    digits = labels.astype(np.int64) % ZERO_LABEL
    # (H, W, C, N) -> (N, C, H, W); the copy makes the result contiguous.
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), digits


def load_split(dirs: list[Path], name: str, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    """Find, read and (if `verify`) md5-check one of the .mat files."""
    path = find_svhn_file(dirs, name)
    images, labels = parse_mat(path)
    if verify:
        verify_md5(path, SVHN_MD5[name], SVHN_URL)
    return images, labels


def load_svhn(root: str | Path, verify: bool = True, extra: bool = False) -> Dataset:
    """Load SVHN's cropped digits (73,257 train + 26,032 test, 3x32x32) from `root`.

    `root` is the folder holding the .mat files (directly or under `svhn/`). With `extra` the
    531,131 digits of `extra_32x32.mat` are appended to the training set. With `verify` (the
    default) every file read is checked against its official md5 (cached after the first load).
    """
    dirs = search_dirs(existing_root(root, "SVHN", SVHN_URL), _SUBDIRS)
    x_train, y_train = load_split(dirs, TRAIN_FILE, verify)
    x_test, y_test = load_split(dirs, TEST_FILE, verify)
    if extra:
        x_extra, y_extra = load_split(dirs, EXTRA_FILE, verify)
        x_train = np.concatenate([x_train, x_extra])
        y_train = np.concatenate([y_train, y_extra])
    return Dataset(
        name="svhn",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=len(CLASSES),
        mean=MEAN,
        std=STD,
        classes=CLASSES,
    )

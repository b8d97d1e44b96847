"""Tiny copies of the datasets in their official file formats, for tests (the real files are not
on the test machines).

Each writer puts a few random images in the layout the publisher ships, so a test reads them
through the same loader a run uses: CIFAR-100 (binary records or python pickles), SVHN (.mat),
CINIC-10 (PNG folders), Fashion-MNIST (IDX, gzip-compressed or extracted). ``write_dataset`` writes
any of them with a given number of training and test images.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from flower_eec.data.cifar100 import COARSE_CLASSES, FINE_CLASSES
from flower_eec.data.cinic10 import CLASSES as CINIC10_CLASSES

# ---------------------------------------------------------------- CIFAR-100

CIFAR100Split = tuple[np.ndarray, np.ndarray, np.ndarray]  # images (N, 3, 32, 32), coarse, fine


def cifar100_splits(train: int = 30, test: int = 12) -> dict[str, CIFAR100Split]:
    """Random images with fine labels 0-99; fine class f is filed under superclass f // 5, so each
    fine class has one superclass, as in the release."""
    rng = np.random.default_rng(4)
    splits = {}
    for name, count in (("train", train), ("test", test)):
        fine = rng.integers(0, 100, count).astype(np.int64)
        images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
        splits[name] = (images, fine // 5, fine)
    return splits


def write_cifar100_binary(folder: Path, splits: dict[str, CIFAR100Split]) -> Path:
    """The binary version: records of a coarse-label byte, a fine-label byte and 3072 pixels."""
    folder.mkdir(parents=True)
    for name, (images, coarse, fine) in splits.items():
        labels = np.stack([coarse, fine], axis=1).astype(np.uint8)
        records = np.concatenate([labels, images.reshape(len(images), -1)], axis=1)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    (folder / "coarse_label_names.txt").write_text("\n".join(COARSE_CLASSES))
    return folder


def write_cifar100_python(folder: Path, splits: dict[str, CIFAR100Split]) -> Path:
    """The python version: a pickled dict with data, coarse_labels and fine_labels per split."""
    folder.mkdir(parents=True)
    for name, (images, coarse, fine) in splits.items():
        batch = {
            b"filenames": [f"{i}.png".encode() for i in range(len(images))],
            b"batch_label": name.encode(),
            b"fine_labels": fine.tolist(),
            b"coarse_labels": coarse.tolist(),
            b"data": images.reshape(len(images), -1),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": list(FINE_CLASSES)}))
    return folder


# ---------------------------------------------------------------- SVHN


def write_svhn_mat(path: Path, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Write one official-layout .mat file; return its X (32, 32, 3, N) and y (N, 1), labels
    1-10 with 10 for the digit 0."""
    import scipy.io as scipy_io

    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, count), dtype=np.uint8)
    y = (np.arange(count) % 10 + 1).astype(np.uint8)[:, None]  # 1..10, every digit
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(path, {"X": x, "y": y})
    return x, y


def write_svhn(folder: Path, train: int = 40, test: int = 20, extra: int = 0) -> dict:
    """train_32x32.mat and test_32x32.mat (and extra_32x32.mat when ``extra``) in ``folder``."""
    files = {"train_32x32.mat": write_svhn_mat(folder / "train_32x32.mat", train, 1)}
    files["test_32x32.mat"] = write_svhn_mat(folder / "test_32x32.mat", test, 2)
    if extra:
        files["extra_32x32.mat"] = write_svhn_mat(folder / "extra_32x32.mat", extra, 3)
    return files


# ---------------------------------------------------------------- CINIC-10

# split -> (images (N, 3, 32, 32) in class-then-name order, labels)
CINIC10Written = dict[str, tuple[np.ndarray, np.ndarray]]


def write_cinic(folder: Path, per_class: dict[str, int] | None = None,
                seed: int = 7) -> CINIC10Written:
    """Write ``per_class[split]`` random RGB PNGs per class and split, named as the release's."""
    from PIL import Image

    counts = per_class or {"train": 2, "valid": 1, "test": 1}
    rng = np.random.default_rng(seed)
    written: CINIC10Written = {}
    for split, count in counts.items():
        images, labels = [], []
        for label, name in enumerate(CINIC10_CLASSES):
            class_dir = folder / split / name
            class_dir.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(class_dir / f"n0{label}_{i:03d}.png")
                images.append(pixels.transpose(2, 0, 1))
                labels.append(label)
        written[split] = (np.stack(images), np.array(labels, dtype=np.int64))
    return written


# ---------------------------------------------------------------- Fashion-MNIST (IDX files)

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file: 00 00, dtype 0x08 (uint8), ndim, big-endian dims, then the data."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def write_fashion(
    folder: Path, gz: bool = True, train: int = 12, test: int = 10, seed: int = 5
) -> dict[str, np.ndarray]:
    """The four IDX files, gzip-compressed as published (``gz``) or extracted."""
    rng = np.random.default_rng(seed)
    arrays = dict(zip(FASHION_MNIST_FILES, (
        rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        np.arange(train, dtype=np.uint8) % 10,
        rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        (np.arange(test, dtype=np.uint8) * 3) % 10,
    ), strict=True))
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (folder / name).write_bytes(idx_bytes(array))
    return arrays


# ---------------------------------------------------------------- any of them


def write_dataset(name: str, root: Path, train: int = 80, test: int = 30) -> Path:
    """A small copy of dataset ``name`` in its official format, in the subfolder a shared
    ``data.root`` holds it in; return that root. CINIC-10's ``train`` images are split between
    its train/ and valid/ folders (both train), so ``train`` and ``test`` must divide by 10
    for it."""
    if name == "cifar100":
        write_cifar100_binary(root / "cifar100" / "cifar-100-binary", cifar100_splits(train, test))
    elif name == "svhn":
        write_svhn(root / "svhn", train=train, test=test)
    elif name == "cinic10":
        per_class = {"train": train // 10 - train // 20, "valid": train // 20, "test": test // 10}
        write_cinic(root / "cinic10", per_class)
    elif name == "fashion_mnist":
        write_fashion(root / "fashion_mnist", train=train, test=test)
    else:
        raise ValueError(f"no writer for {name!r}")
    return root

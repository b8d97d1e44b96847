"""CIFAR-10 loader: the binary version (folder or tarball) or the python-pickle version.

Tarballs are read member by member in memory, so nothing is ever extracted next to the user's data.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from flower_eec.data.archive import (
    Member,
    MemberSource,
    dict_entry,
    locate_release,
    read_folder,
    read_tarball,
    tarball_kind,
    unpickle_dict,
)
from flower_eec.data.checksums import (
    CIFAR10_BINARY_MD5,
    CIFAR10_PICKLE_MD5,
    CIFAR10_URL,
    verify_md5,
)
from flower_eec.data.dataset import Dataset
from flower_eec.data.paths import existing_root, search_dirs
from flower_eec.errors import DataError

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
NUM_CLASSES = 10
IMAGE_BYTES = 3 * 32 * 32
RECORD_BYTES = 1 + IMAGE_BYTES  # one label byte, then 1024 red, 1024 green, 1024 blue

BINARY_DIR = "cifar-10-batches-bin"
PICKLE_DIR = "cifar-10-batches-py"
BINARY_TAR = "cifar-10-binary.tar.gz"
PICKLE_TAR = "cifar-10-python.tar.gz"
BINARY_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
BINARY_TEST = "test_batch.bin"
PICKLE_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
PICKLE_TEST = "test_batch"

BatchSource = MemberSource

_SUBDIRS = ("cifar10", "cifar-10")
_FIX = f"Re-download CIFAR-10 from {CIFAR10_URL}."
_EXPECTED_TAR = f"the official {BINARY_TAR} (holding {BINARY_DIR}/) or {PICKLE_TAR}"


def locate_cifar10(root: Path) -> tuple[str, Path]:
    """Find CIFAR-10 under `root`: return (format, path) with format "binary", "pickle" or "tar".

    Extracted folders win over tarballs because they need no decompression.
    """
    if root.is_file():
        return "tar", root
    dirs = search_dirs(root, _SUBDIRS)
    found = locate_release(dirs, (("binary", BINARY_TRAIN[:1], BINARY_DIR),
                                  ("pickle", PICKLE_TRAIN[:1], PICKLE_DIR)),
                           (BINARY_TAR, PICKLE_TAR))
    if found is not None:
        return found
    raise DataError(
        f"CIFAR-10 not found under {root} (searched {', '.join(str(d) for d in dirs)}): expected "
        f"a {BINARY_DIR}/ or {PICKLE_DIR}/ folder, or {BINARY_TAR}. Download the binary version "
        f"from {CIFAR10_URL} and point `data.root` / FLOWER_EEC_DATA at its folder."
    )


def parse_binary_batch(data: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode binary-version records into images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    if not data or len(data) % RECORD_BYTES:
        raise DataError(
            f"{label}: truncated or not a CIFAR-10 binary batch: {len(data)} bytes is not a "
            f"positive multiple of the {RECORD_BYTES}-byte record (1 label + 3072 pixels). {_FIX}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    return _checked(label, records[:, 1:], records[:, 0])


def parse_pickle_batch(data: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode a python-version batch (a dict with data (N, 3072) and labels) like the binary one."""
    batch = unpickle_dict(data, label, "CIFAR-10 pickle batch", _FIX)
    images = dict_entry(batch, "data")
    labels = dict_entry(batch, "labels")
    if images is None or labels is None:
        raise DataError(f"{label}: the pickled dict lacks 'data' or 'labels'. {_FIX}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != IMAGE_BYTES:
        raise DataError(
            f"{label}: expected 'data' as uint8 (N, {IMAGE_BYTES}), got {images.dtype} "
            f"{images.shape}. {_FIX}"
        )
    return _checked(label, images, np.asarray(labels))


def _checked(label: str, flat: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(labels) != len(flat):
        raise DataError(f"{label}: {len(flat)} images but {len(labels)} labels. {_FIX}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise DataError(f"{label}: labels must be 0-9, found {int(labels.max())}. {_FIX}")
    # Copy: frombuffer views are read-only, and torch.from_numpy warns on those.
    return flat.reshape(-1, 3, 32, 32).copy(), labels.astype(np.int64)


def iter_folder(folder: Path, names: tuple[str, ...]) -> Iterator[Member]:
    """Yield (name, file, member, bytes) for each of `names` in `folder`; a missing one raises."""
    return read_folder(folder, names, "CIFAR-10", _FIX)


def iter_tarball(tar_path: Path, names: tuple[str, ...]) -> Iterator[Member]:
    """Yield (name, tarball, member, bytes) for each of `names` in the tarball, in one pass."""
    return read_tarball(tar_path, names, "CIFAR-10", _EXPECTED_TAR, _FIX)


def tarball_format(tar_path: Path) -> str:
    """Return "binary" or "pickle" from the tarball's first member names, without reading data."""
    markers = {"pickle": PICKLE_DIR, "binary": BINARY_DIR}
    return tarball_kind(tar_path, markers, f"the official {BINARY_TAR}", _FIX)


def load_cifar10(root: str | Path, verify: bool = True) -> Dataset:
    """Load CIFAR-10 (50,000 train + 10,000 test, 3x32x32) from `root`.

    `root` may be a `cifar-10-batches-bin/` or `cifar-10-batches-py/` folder, the
    `cifar-10-binary.tar.gz` tarball, or a folder holding any of these (directly or under
    `cifar10/`). With `verify` (the default) each batch file is checked against its official md5;
    for a tarball the members are checked, since the official md5s are of the extracted files.
    """
    kind, path = locate_cifar10(existing_root(root, "CIFAR-10", CIFAR10_URL))
    source: BatchSource = iter_folder
    if kind == "tar":
        kind, source = tarball_format(path), iter_tarball
    train_names, test_name = (
        (BINARY_TRAIN, BINARY_TEST) if kind == "binary" else (PICKLE_TRAIN, PICKLE_TEST)
    )
    parse = parse_binary_batch if kind == "binary" else parse_pickle_batch
    official = CIFAR10_BINARY_MD5 if kind == "binary" else CIFAR10_PICKLE_MD5
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, file, member, data in source(path, (*train_names, test_name)):
        label = f"{file}:{member}" if member else str(file)
        batches[name] = parse(data, label)
        if verify:
            verify_md5(file, official[name], CIFAR10_URL, member=member, data=data)
    x_train = np.concatenate([batches[n][0] for n in train_names])
    y_train = np.concatenate([batches[n][1] for n in train_names])
    x_test, y_test = batches[test_name]
    return Dataset(
        name="cifar10",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=NUM_CLASSES,
        mean=MEAN,
        std=STD,
        classes=CLASSES,
    )

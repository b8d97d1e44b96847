"""CIFAR-10 loader: the binary version (folder or tarball) or the python-pickle version.

Tarballs are read member by member in memory, so nothing is ever extracted next to the user's data.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from flower_eec.data.checksums import (
    CIFAR10_BINARY_MD5,
    CIFAR10_PICKLE_MD5,
    CIFAR10_URL,
    verify_md5,
)
from flower_eec.data.dataset import Dataset
from flower_eec.data.paths import existing_root, search_dirs
from flower_eec.errors import DataError

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

# (folder or tarball, file names) -> (name, file on disk, member in archive or "", bytes)
BatchSource = Callable[[Path, tuple[str, ...]], Iterator[tuple[str, Path, str, bytes]]]

_SUBDIRS = ("cifar10", "cifar-10")
_FIX = f"Re-download CIFAR-10 from {CIFAR10_URL}."
# Globals an official CIFAR-10 pickle needs: a dict of lists, strings and one numpy array.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


def locate_cifar10(root: Path) -> tuple[str, Path]:
    """Find CIFAR-10 under `root`: return (format, path) with format "binary", "pickle" or "tar".

    Extracted folders win over tarballs because they need no decompression.
    """
    if root.is_file():
        return "tar", root
    dirs = search_dirs(root, _SUBDIRS)
    for folder in dirs:
        if (folder / BINARY_TRAIN[0]).is_file():
            return "binary", folder
        if (folder / BINARY_DIR).is_dir():
            return "binary", folder / BINARY_DIR
    for folder in dirs:
        if (folder / PICKLE_TRAIN[0]).is_file():
            return "pickle", folder
        if (folder / PICKLE_DIR).is_dir():
            return "pickle", folder / PICKLE_DIR
    for folder in dirs:
        for tar_name in (BINARY_TAR, PICKLE_TAR):
            if (folder / tar_name).is_file():
                return "tar", folder / tar_name
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


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays but refuses every other global: a file cannot run code."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        return super().find_class(module, name)


def parse_pickle_batch(data: bytes, label: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode a python-version batch (a dict with data (N, 3072) and labels) like the binary one."""
    try:
        # latin1 is what numpy needs to rebuild arrays pickled by Python 2, as the originals were.
        batch = _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as exc:  # unpickling damaged bytes can raise almost anything
        raise DataError(f"{label}: not a readable CIFAR-10 pickle batch ({exc}). {_FIX}") from exc
    if not isinstance(batch, dict):
        raise DataError(f"{label}: expected a pickled dict, got {type(batch).__name__}. {_FIX}")
    images = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
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


def iter_folder(folder: Path, names: tuple[str, ...]) -> Iterator[tuple[str, Path, str, bytes]]:
    """Yield (name, file, member, bytes) for each of `names` in `folder`; a missing one raises."""
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"{path}: missing CIFAR-10 file (expected all of {', '.join(names)} in {folder}). "
                f"{_FIX}"
            )
        yield name, path, "", path.read_bytes()


def iter_tarball(tar_path: Path, names: tuple[str, ...]) -> Iterator[tuple[str, Path, str, bytes]]:
    """Yield (name, tarball, member, bytes) for each of `names` in the tarball, in one pass."""
    found: set[str] = set()
    try:
        with tarfile.open(tar_path, "r:*") as archive:
            for member in archive:
                name = Path(member.name).name
                if not member.isfile() or name not in names or name in found:
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                found.add(name)
                yield name, tar_path, member.name, handle.read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{tar_path}: damaged or truncated archive ({exc}). {_FIX}") from exc
    missing = [n for n in names if n not in found]
    if missing:
        raise DataError(
            f"{tar_path}: archive lacks CIFAR-10 member(s) {', '.join(missing)}; expected the "
            f"official {BINARY_TAR} (holding {BINARY_DIR}/) or {PICKLE_TAR}. {_FIX}"
        )


def tarball_format(tar_path: Path) -> str:
    """Return "binary" or "pickle" from the tarball's first member names, without reading data."""
    try:
        with tarfile.open(tar_path, "r:*") as archive:
            for member in archive:
                if PICKLE_DIR in member.name:
                    return "pickle"
                if BINARY_DIR in member.name:
                    return "binary"
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{tar_path}: damaged or truncated archive ({exc}). {_FIX}") from exc
    raise DataError(
        f"{tar_path}: no {BINARY_DIR}/ or {PICKLE_DIR}/ inside; expected the official "
        f"{BINARY_TAR}. {_FIX}"
    )


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
    )

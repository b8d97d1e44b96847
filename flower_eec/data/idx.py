"""Reader for the IDX binary format used by MNIST, with size checks against the header.

Layout: 2 zero bytes, a dtype code, the number of dims, one big-endian uint32 per dim, then data.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from flower_eec.errors import DataError

_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(data: bytes, label: str, hint: str = "") -> np.ndarray:
    """Decode an IDX buffer into an array shaped as its header declares.

    `label` names the file in error messages and `hint` says how to get a good copy. A header that
    is not IDX, or a payload shorter or longer than the header promises, raises DataError.
    """
    fix = f" {hint}" if hint else ""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(
            f"{label}: not an IDX file (expected magic bytes 00 00 <dtype> <ndim>, got "
            f"{data[:4].hex(' ') or 'an empty file'}).{fix}"
        )
    dtype, ndim = _DTYPES[data[2]], data[3]
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{label}: truncated IDX header ({len(data)} of {header_size} bytes).{fix}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header_size + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "longer than declared"
        raise DataError(
            f"{label}: {state}: the header declares shape {shape} ({expected} bytes in all) but "
            f"the file holds {len(data)} bytes.{fix}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    # Copy: frombuffer views are read-only, and torch.from_numpy warns on those.
    return array.astype(dtype.newbyteorder("="), copy=True)


def find_idx_file(dirs: list[Path], name: str, *, gz_first: bool) -> Path | None:
    """The first ``name`` or ``name.gz`` in ``dirs`` (the .gz first if ``gz_first``), or None."""
    names = (f"{name}.gz", name) if gz_first else (name, f"{name}.gz")
    return next((folder / n for folder in dirs for n in names if (folder / n).is_file()), None)


def idx_content(path: Path, data: bytes, hint: str) -> bytes:
    """The IDX bytes in `data` (read from `path`), decompressed for a .gz; a damaged gzip raises
    DataError."""
    if path.suffix != ".gz":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable gzip file ({exc}). {hint}") from exc


def image_split(images: np.ndarray, labels: np.ndarray, images_path: Path, labels_path: Path, *,
                num_classes: int, what: str, hint: str,
                image_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Check an IDX images/labels pair; return images (N, 1, H, W) uint8 and labels (N,) int64.

    `what` names a label in errors ("digit", "class"); `image_shape`, when given, is required.
    """
    if (images.ndim != 3 or images.dtype != np.uint8
            or (image_shape is not None and images.shape[1:] != image_shape)):
        raise DataError(
            f"{images_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} "
            f"{images.shape}. {hint}"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{labels_path}: expected {len(images)} labels to match {images_path.name}, got "
            f"shape {labels.shape}. {hint}"
        )
    if len(labels) and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} is not a {what} "
                        f"0-{num_classes - 1}. {hint}")
    return images[:, None, :, :], labels.astype(np.int64)

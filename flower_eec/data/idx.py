"""Reader for the IDX binary format used by MNIST, with size checks against the header.

Layout: 2 zero bytes, a dtype code, the number of dims, one big-endian uint32 per dim, then data.
"""

from __future__ import annotations

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

"""An ``Array``'s values without parsing its header again each time: the decoding of weights
that every message pays.

Flower stores a NumPy array in ``Array.data`` as the bytes of an ``.npy`` file (``stype``
"numpy.ndarray"), and ``Array.numpy()`` parses each one's header, a Python literal, before
copying the values out. A model's arrays carry the same few headers round after round, so
``values`` parses each distinct header once and reads the values in place; anything else
(another ``stype``, an ``.npy`` version or dtype this does not handle) goes to ``Array.numpy()``.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

NPY_MAGIC = b"\x93NUMPY"
_HEADER_READERS = {1: np.lib.format.read_array_header_1_0, 2: np.lib.format.read_array_header_2_0}


@lru_cache(maxsize=4096)
def _layout(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of an ``.npy`` header: its magic, version and dict."""
    stream = io.BytesIO(header)
    major, _ = np.lib.format.read_magic(stream)
    return _HEADER_READERS[major](stream)


def values(array: Array) -> np.ndarray:
    """``array.numpy()``, read-only: a view of ``array.data`` after its (cached) header."""
    data = array.data
    major = data[6] if len(data) > 9 and data[:6] == NPY_MAGIC else 0
    if array.stype != "numpy.ndarray" or major not in _HEADER_READERS:
        return array.numpy()
    width = 2 if major == 1 else 4
    start = 8 + width + int.from_bytes(data[8:8 + width], "little")
    shape, fortran, dtype = _layout(bytes(data[:start]))
    if dtype.hasobject:
        return array.numpy()
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=start)
    return flat.reshape(shape, order="F" if fortran else "C")


def to_state_dict(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """``record.to_torch_state_dict()`` through ``values`` (each tensor owns a copy)."""
    return {key: torch.from_numpy(values(array).copy()) for key, array in record.items()}

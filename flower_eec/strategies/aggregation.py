"""Weighted averaging of model arrays (HierFAVG's edge and cloud step, Liu et al., ICC 2020)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord


def weighted_average(records: Sequence[ArrayRecord], weights: Sequence[float]) -> ArrayRecord:
    """Average same-keyed ArrayRecords with the given non-negative weights.

    Each tensor keeps its dtype: integer buffers (e.g. BatchNorm's ``num_batches_tracked``)
    are rounded back to integers.
    """
    if len(records) != len(weights) or not records:
        raise ValueError("weighted_average needs one weight per record and at least one record")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weighted_average needs a positive total weight")
    averaged: dict[str, Array] = {}
    for key in records[0]:
        arrays = [record[key].numpy() for record in records]
        mean = sum(w / total * a.astype(np.float64) for w, a in zip(weights, arrays, strict=True))
        dtype = arrays[0].dtype
        if np.issubdtype(dtype, np.integer):
            mean = np.rint(mean)
        averaged[key] = Array(np.asarray(mean, dtype=dtype))
    return ArrayRecord(averaged)


def match_dtypes(arrays: ArrayRecord, reference: ArrayRecord) -> ArrayRecord:
    """``arrays`` with each tensor cast to the dtype it has in ``reference``.

    Flower's built-in averaging returns float64 for integer buffers; casting back keeps every
    tier's model loadable and every reply comparable with the model it started from.
    """
    cast: dict[str, Array] = {}
    for key, array in arrays.items():
        values = array.numpy()
        dtype = reference[key].numpy().dtype if key in reference else values.dtype
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values)
        cast[key] = Array(np.asarray(values, dtype=dtype))
    return ArrayRecord(cast)

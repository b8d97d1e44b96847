"""Weighted averaging of model arrays (HierFAVG's edge and cloud step, Liu et al., ICC 2020)
and of metrics (the example-weighted means that Flower's strategies report)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord

from flower_eec.protocol.arrays import values


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
        arrays = [values(record[key]) for record in records]
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
        data = values(array)
        dtype = np.dtype(reference[key].dtype) if key in reference else data.dtype
        if np.issubdtype(dtype, np.integer) and not np.issubdtype(data.dtype, np.integer):
            data = np.rint(data)
        cast[key] = Array(np.asarray(data, dtype=dtype))
    return ArrayRecord(cast)


def scalars(record: MetricRecord) -> dict[str, float]:
    """A record's int and float values, as floats (lists are left out)."""
    return {key: float(value) for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def mean_records(records: Sequence[MetricRecord], weights: Sequence[float]) -> MetricRecord:
    """Weighted mean of the scalar metrics that every record carries."""
    values = [scalars(record) for record in records]
    shared = set.intersection(*(set(v) for v in values))
    total = sum(weights)
    return MetricRecord({key: sum(w * v[key] for w, v in zip(weights, values, strict=True)) / total
                         for key in sorted(shared)})


def count(total: float) -> int | float:
    """An example count as a metric: an int when it is whole."""
    return int(total) if float(total).is_integer() else float(total)


def weighted_metrics(records: Sequence[MetricRecord], weighted_by_key: str = "num-examples"
                     ) -> MetricRecord | None:
    """Mean of the scalar metrics that every record carries, each record weighted by its
    ``weighted_by_key``, plus the total of ``weighted_by_key``; None without records.

    Records without a positive ``weighted_by_key`` are left out (they count no examples).
    E.g. ``loss`` 0.0 over 1 example and 2.0 over 3 examples: ``loss`` 1.5, 4 examples.
    """
    weights = [scalars(record).get(weighted_by_key, 0.0) for record in records]
    kept = [(record, w) for record, w in zip(records, weights, strict=True) if w > 0]
    if not kept:
        return None
    merged = mean_records([r for r, _ in kept], [w for _, w in kept])
    merged[weighted_by_key] = count(sum(w for _, w in kept))
    return merged

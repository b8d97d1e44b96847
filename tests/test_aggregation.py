"""Tests of weighted averaging of ArrayRecords (HierFAVG's edge and cloud step) on known inputs."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord

from flower_eec.strategies.aggregation import (
    count,
    match_dtypes,
    mean_records,
    weighted_average,
    weighted_metrics,
)


def record(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({key: Array(value) for key, value in arrays.items()})


def test_weights_one_and_three_give_the_known_mean() -> None:
    a = record(w=np.array([0.0, 4.0], np.float32), b=np.array([[1.0]], np.float32))
    b = record(w=np.array([4.0, 8.0], np.float32), b=np.array([[5.0]], np.float32))

    mean = weighted_average([a, b], [1, 3])

    assert list(mean) == ["w", "b"]
    np.testing.assert_array_equal(mean["w"].numpy(), np.array([3.0, 7.0], np.float32))
    np.testing.assert_array_equal(mean["b"].numpy(), np.array([[4.0]], np.float32))
    assert mean["w"].numpy().dtype == np.float32
    assert mean["b"].shape == (1, 1)


def test_weights_need_not_sum_to_one() -> None:
    a = record(w=np.array([1.0], np.float32))
    b = record(w=np.array([2.0], np.float32))
    c = record(w=np.array([6.0], np.float32))

    mean = weighted_average([a, b, c], [10.0, 20.0, 10.0])

    # (10*1 + 20*2 + 10*6) / 40 = 110 / 40
    np.testing.assert_allclose(mean["w"].numpy(), [2.75], rtol=0, atol=1e-7)


def test_float64_inputs_stay_float64() -> None:
    a = record(w=np.array([1.0 / 3.0], np.float64))
    b = record(w=np.array([2.0 / 3.0], np.float64))

    mean = weighted_average([a, b], [1, 1])

    assert mean["w"].numpy().dtype == np.float64
    assert mean["w"].numpy()[0] == pytest.approx(0.5, abs=1e-15)


def test_integer_buffers_are_rounded_and_stay_int64() -> None:
    # BatchNorm's num_batches_tracked is a 0-d int64 tensor.
    a = record(n=np.array(1, np.int64), v=np.array([10, 0], np.int64))
    b = record(n=np.array(2, np.int64), v=np.array([20, 3], np.int64))

    mean = weighted_average([a, b], [1, 3])

    # 0.25*1 + 0.75*2 = 1.75 -> 2;  0.25*10 + 0.75*20 = 17.5 -> 18 (half to even);  2.25 -> 2
    assert mean["n"].numpy().dtype == np.int64
    assert mean["n"].numpy().shape == ()
    assert int(mean["n"].numpy()) == 2
    assert mean["v"].numpy().dtype == np.int64
    assert mean["v"].numpy().tolist() == [18, 2]


def test_a_single_record_is_returned_unchanged() -> None:
    a = record(w=np.array([1.5, -2.0], np.float32), n=np.array(7, np.int64))

    mean = weighted_average([a], [5])

    np.testing.assert_array_equal(mean["w"].numpy(), a["w"].numpy())
    assert int(mean["n"].numpy()) == 7


def test_a_zero_weight_ignores_that_record() -> None:
    a = record(w=np.array([100.0], np.float32))
    b = record(w=np.array([2.0], np.float32))

    mean = weighted_average([a, b], [0, 4])

    np.testing.assert_array_equal(mean["w"].numpy(), [2.0])


def test_inputs_are_not_modified() -> None:
    a = record(w=np.array([0.0, 4.0], np.float32))
    b = record(w=np.array([4.0, 8.0], np.float32))

    weighted_average([a, b], [1, 3])

    np.testing.assert_array_equal(a["w"].numpy(), [0.0, 4.0])
    np.testing.assert_array_equal(b["w"].numpy(), [4.0, 8.0])


@pytest.mark.parametrize(
    ("records", "weights"),
    [
        ([], []),
        ([record(w=np.zeros(1, np.float32))], []),
        ([record(w=np.zeros(1, np.float32))], [1, 2]),
    ],
    ids=["empty", "no-weight", "extra-weight"],
)
def test_records_and_weights_must_pair_up(records: list[ArrayRecord], weights: list[float]) -> None:
    with pytest.raises(ValueError, match="one weight per record"):
        weighted_average(records, weights)


@pytest.mark.parametrize("weights", [[0, 0], [0.0, 0.0]])
def test_zero_total_weight_is_an_error(weights: list[float]) -> None:
    a = record(w=np.zeros(1, np.float32))
    b = record(w=np.ones(1, np.float32))

    with pytest.raises(ValueError, match="positive total weight"):
        weighted_average([a, b], weights)


def test_match_dtypes_casts_float_buffers_back_to_int64() -> None:
    # What Flower's own averaging returns for an int64 buffer: float64.
    averaged = record(w=np.array([0.5, 1.5], np.float64), n=np.array(2.6, np.float64))
    reference = record(w=np.zeros(2, np.float32), n=np.array(0, np.int64))

    cast = match_dtypes(averaged, reference)

    assert cast["w"].numpy().dtype == np.float32
    np.testing.assert_array_equal(cast["w"].numpy(), [0.5, 1.5])
    assert cast["n"].numpy().dtype == np.int64
    assert int(cast["n"].numpy()) == 3


def test_match_dtypes_keeps_keys_missing_from_the_reference() -> None:
    arrays = record(extra=np.array([1.25], np.float64))

    cast = match_dtypes(arrays, record(w=np.zeros(1, np.float32)))

    assert cast["extra"].numpy().dtype == np.float64
    np.testing.assert_array_equal(cast["extra"].numpy(), [1.25])


def test_match_dtypes_leaves_integers_as_integers() -> None:
    arrays = record(n=np.array([3, 4], np.int32))

    cast = match_dtypes(arrays, record(n=np.zeros(2, np.int64)))

    assert cast["n"].numpy().dtype == np.int64
    assert cast["n"].numpy().tolist() == [3, 4]


# --- metrics ----------------------------------------------------------------------------------


def test_weighted_metrics_of_one_and_three_examples() -> None:
    a = MetricRecord({"loss": 0.0, "accuracy": 0.5, "num-examples": 1})
    b = MetricRecord({"loss": 2.0, "accuracy": 0.1, "num-examples": 3})

    merged = weighted_metrics([a, b])

    assert merged is not None
    assert dict(merged) == pytest.approx({"accuracy": 0.2, "loss": 1.5, "num-examples": 4})
    assert isinstance(merged["num-examples"], int)


def test_weighted_metrics_keep_only_shared_scalars() -> None:
    a = MetricRecord({"loss": 1.0, "extra": 5.0, "hist": [1.0, 2.0], "n": 2})
    b = MetricRecord({"loss": 4.0, "n": 1})

    merged = weighted_metrics([a, b], "n")

    assert dict(merged or {}) == {"loss": 2.0, "n": 3}


def test_weighted_metrics_leave_out_records_without_examples() -> None:
    a = MetricRecord({"loss": 1.0, "num-examples": 0})
    b = MetricRecord({"loss": 3.0})
    c = MetricRecord({"loss": 5.0, "num-examples": 2.5})

    assert dict(weighted_metrics([a, b, c]) or {}) == {"loss": 5.0, "num-examples": 2.5}
    assert weighted_metrics([a, b]) is None
    assert weighted_metrics([]) is None


def test_mean_records_with_equal_weights_is_the_plain_mean() -> None:
    merged = mean_records([MetricRecord({"loss": 1.0}), MetricRecord({"loss": 2.0})], [1, 1])

    assert dict(merged) == {"loss": 1.5}


def test_count_is_an_int_when_whole() -> None:
    assert count(4.0) == 4 and isinstance(count(4.0), int)
    assert count(2.5) == 2.5

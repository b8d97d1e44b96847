"""Distillation payloads <-> Flower ArrayRecords: round trips, and each malformed record refused.

Records are built by hand, ``ArrayRecord({"name": Array(ndarray)})``, as a device would send them.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from flower_eec.errors import PayloadError
from flower_eec.protocol.payloads import (
    EmbeddingPayload,
    LogitsPayload,
    embeddings_from_record,
    logits_from_record,
    payload_bytes,
    to_record,
)

MAX = 1 << 20
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(5, 10)).astype(np.float32)
CODES = RNG.random((3, 4, 8, 8)).astype(np.float32)
LABELS = np.array([0, 9, 4], dtype=np.int64)


def read_logits(record: ArrayRecord, num_samples: int = 5, max_bytes: int = MAX) -> LogitsPayload:
    return logits_from_record(
        record, num_samples=num_samples, num_classes=10, max_bytes=max_bytes
    )


def read_codes(record: ArrayRecord, num_samples: int | None = 3) -> EmbeddingPayload:
    return embeddings_from_record(record, num_classes=10, num_samples=num_samples, max_bytes=MAX)


def logits_record(logits: np.ndarray, **extra: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"logits": Array(logits), **{k: Array(v) for k, v in extra.items()}})


def codes_record(codes: np.ndarray = CODES, labels: np.ndarray = LABELS) -> ArrayRecord:
    return ArrayRecord({"embeddings": Array(codes), "labels": Array(labels)})


def test_logits_round_trip_in_float32_keeps_every_bit() -> None:
    ids = np.array([3, 1, 4, 0, 2], dtype=np.int64)
    back = read_logits(to_record(LogitsPayload(LOGITS, ids)))
    assert back.logits.dtype == np.float32 and np.array_equal(back.logits, LOGITS)
    assert back.sample_ids is not None and np.array_equal(back.sample_ids, ids)
    assert (back.num_samples, back.num_classes) == (5, 10)


def test_logits_round_trip_in_float16_halves_the_bytes() -> None:
    full = to_record(LogitsPayload(LOGITS))
    half = to_record(LogitsPayload(LOGITS), fp16=True)
    back = read_logits(half)
    assert back.sample_ids is None
    assert back.logits.dtype == np.float32
    np.testing.assert_allclose(back.logits, LOGITS, rtol=1e-3, atol=1e-3)
    # 50 values: 200 bytes in float32, 100 in float16, plus the same header and key in both.
    assert payload_bytes(full) - payload_bytes(half) == 100


def test_embeddings_round_trip_in_both_precisions() -> None:
    for fp16, tolerance in ((False, 0.0), (True, 1e-3)):
        back = read_codes(to_record(EmbeddingPayload(CODES, LABELS), fp16=fp16))
        assert back.embeddings.dtype == np.float32 and back.embeddings.shape == (3, 4, 8, 8)
        np.testing.assert_allclose(back.embeddings, CODES, atol=tolerance, rtol=0)
        assert np.array_equal(back.labels, LABELS)


def test_embeddings_accept_any_count_when_none_is_declared() -> None:
    assert read_codes(codes_record(), num_samples=None).num_samples == 3


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_logits_are_refused(bad: float, word: str) -> None:
    logits = LOGITS.copy()
    logits[2, 3] = bad
    with pytest.raises(PayloadError, match=f"logits hold {word}"):
        read_logits(logits_record(logits))


def test_non_finite_embeddings_are_refused() -> None:
    codes = CODES.copy()
    codes[0, 0, 0, 0] = np.nan
    with pytest.raises(PayloadError, match="embeddings hold NaN"):
        read_codes(codes_record(codes))


def test_wrong_number_of_classes_is_refused() -> None:
    with pytest.raises(PayloadError, match=r"logits shape \(5, 3\), expected \(5, 10\)"):
        read_logits(logits_record(LOGITS[:, :3]))


def test_wrong_embedding_shape_is_refused() -> None:
    expected = r"embeddings shape \(3, 4, 4, 4\), expected \(3, 4, 8, 8\)"
    with pytest.raises(PayloadError, match=expected):
        read_codes(codes_record(CODES[:, :, :4, :4]))
    with pytest.raises(PayloadError, match=r"expected \(N, 4, 8, 8\)"):
        read_codes(codes_record(CODES[:, :, :4, :4]), num_samples=None)


def test_wrong_sample_count_is_refused() -> None:
    with pytest.raises(PayloadError, match="logits hold 4 samples, expected 5"):
        read_logits(logits_record(LOGITS[:4]))
    with pytest.raises(PayloadError, match="embeddings hold 3 samples, expected 4"):
        read_codes(codes_record(), num_samples=4)
    with pytest.raises(PayloadError, match="labels hold 2 samples, expected 3"):
        read_codes(codes_record(labels=LABELS[:2]))


@pytest.mark.parametrize("label", [10, -1])
def test_out_of_range_label_is_refused(label: int) -> None:
    labels = LABELS.copy()
    labels[1] = label
    with pytest.raises(PayloadError, match=rf"labels hold {label}, outside the range \[0, 10\)"):
        read_codes(codes_record(labels=labels))


def test_wrong_dtypes_are_refused() -> None:
    with pytest.raises(PayloadError, match="logits have dtype int64"):
        read_logits(logits_record(np.zeros((5, 10), dtype=np.int64)))
    with pytest.raises(PayloadError, match="dtype float64, expected float32 or float16"):
        read_logits(logits_record(LOGITS.astype(np.float64)))
    with pytest.raises(PayloadError, match="labels have dtype int32, expected int64"):
        read_codes(codes_record(labels=LABELS.astype(np.int32)))


def test_oversize_record_is_refused_before_decoding() -> None:
    record = to_record(LogitsPayload(LOGITS))
    size = payload_bytes(record)
    assert read_logits(record, max_bytes=size).num_samples == 5
    with pytest.raises(PayloadError, match=f"holds {size} bytes, over the limit of {size - 1}"):
        read_logits(record, max_bytes=size - 1)


def test_missing_and_unexpected_keys_are_refused() -> None:
    with pytest.raises(PayloadError, match=r"lacks \['labels'\]"):
        read_codes(ArrayRecord({"embeddings": Array(CODES)}))
    with pytest.raises(PayloadError, match=r"lacks \['logits'\]"):
        read_logits(ArrayRecord({"logit": Array(LOGITS)}))
    with pytest.raises(PayloadError, match=r"unexpected key\(s\) \['extra'\]"):
        read_logits(logits_record(LOGITS, extra=np.zeros(1, np.float32)))


def test_bad_sample_ids_are_refused() -> None:
    with pytest.raises(PayloadError, match="sample-ids repeat"):
        read_logits(logits_record(LOGITS, **{"sample-ids": np.array([0, 1, 1, 2, 3])}))
    with pytest.raises(PayloadError, match="sample-ids hold 4 samples, expected 5"):
        read_logits(logits_record(LOGITS, **{"sample-ids": np.arange(4)}))


def test_data_that_contradicts_its_header_is_refused() -> None:
    forged = Array(dtype="float32", shape=(5, 10), stype="numpy.ndarray", data=b"not numpy")
    with pytest.raises(PayloadError, match="logits could not be decoded"):
        read_logits(ArrayRecord({"logits": forged}))
    smaller = Array(LOGITS[:2])
    lying = Array(dtype="float32", shape=(5, 10), stype="numpy.ndarray", data=smaller.data)
    with pytest.raises(PayloadError, match="contradicts the header"):
        read_logits(ArrayRecord({"logits": lying}))


def test_payloads_refuse_bad_arrays_at_construction() -> None:
    with pytest.raises(PayloadError, match="logits hold NaN"):
        LogitsPayload(np.full((2, 3), np.nan, dtype=np.float32))
    with pytest.raises(PayloadError, match=r"expected \(N, C\)"):
        LogitsPayload(np.zeros(3, dtype=np.float32))
    with pytest.raises(PayloadError, match="labels shape"):
        EmbeddingPayload(CODES, LABELS[:2])


def test_fp16_overflow_is_refused_on_sending() -> None:
    big = np.array([[1e5, 0.0]], dtype=np.float32)
    with pytest.raises(PayloadError, match="beyond float16"):
        to_record(LogitsPayload(big), fp16=True)
    back = logits_from_record(
        to_record(LogitsPayload(big)), num_samples=1, num_classes=2, max_bytes=MAX
    )
    assert back.logits[0, 0] == 1e5

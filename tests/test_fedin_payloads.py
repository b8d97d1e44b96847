"""FedIN's FeaturePayload: round trip through Flower records and refusal of bad batches."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from flower_eec.errors import PayloadError
from flower_eec.protocol import names
from flower_eec.protocol.payloads import (
    FEATURES_IN,
    FEATURES_OUT,
    FeaturePayload,
    FeatureSpec,
    feature_bytes_per_sample,
    features_from_record,
    features_to_record,
)

IN, OUT = (4, 2, 2), (8, 1, 1)


def batch(n: int = 3) -> FeaturePayload:
    rng = np.random.default_rng(0)
    return FeaturePayload(rng.normal(size=(n, *IN)).astype(np.float32),
                          rng.normal(size=(n, *OUT)).astype(np.float32))


def read(record: ArrayRecord, max_samples: int = 8, max_bytes: int = 10_000) -> FeaturePayload:
    return features_from_record(record, in_shape=IN, out_shape=OUT, max_samples=max_samples,
                                max_bytes=max_bytes)


@pytest.mark.parametrize("fp16", [True, False])
def test_round_trip(fp16: bool) -> None:
    sent = batch()
    record = features_to_record(sent, fp16=fp16)
    got = read(record)

    assert record[FEATURES_IN].dtype == ("float16" if fp16 else "float32")
    assert got.s_in.dtype == np.float32 and got.num_samples == 3
    np.testing.assert_allclose(got.s_in, sent.s_in, atol=2e-3 if fp16 else 0)
    np.testing.assert_allclose(got.s_out, sent.s_out, atol=2e-3 if fp16 else 0)
    data = 3 * feature_bytes_per_sample(IN, OUT, fp16)
    assert data == 3 * (16 + 8) * (2 if fp16 else 4)
    assert data < record.count_bytes() < data + 300  # plus about 130 bytes of header per array


def records(**arrays: np.ndarray) -> ArrayRecord:
    good = features_to_record(batch(), fp16=False)
    content = {FEATURES_IN: good[FEATURES_IN], FEATURES_OUT: good[FEATURES_OUT]}
    content.update({k.replace("_", "-"): Array(v) for k, v in arrays.items()})
    return ArrayRecord(content)


@pytest.mark.parametrize("record, message", [
    (records(extra=np.zeros(1, np.float32)), "unexpected key"),
    (ArrayRecord({FEATURES_IN: Array(np.zeros((1, *IN), np.float32))}), "lacks"),
    (records(s_out=np.zeros((2, *OUT), np.float32)), "samples"),
    (records(s_in=np.zeros((3, 4, 2, 3), np.float32)), "shape"),
    (records(s_in=np.zeros((3, *IN), np.float64)), "dtype"),
    (records(s_in=np.full((3, *IN), np.nan, np.float32)), "NaN"),
    (records(s_in=np.zeros((9, *IN), np.float32), s_out=np.zeros((9, *OUT), np.float32)),
     "expected 1 to 8"),
])
def test_bad_batches_are_refused_with_a_reason(record: ArrayRecord, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        read(record)


def test_size_limit_and_fp16_overflow() -> None:
    with pytest.raises(PayloadError, match="over the limit"):
        read(features_to_record(batch(), fp16=False), max_bytes=100)
    huge = FeaturePayload(np.full((1, *IN), 1e6, np.float32), np.zeros((1, *OUT), np.float32))
    with pytest.raises(PayloadError, match="float16"):
        features_to_record(huge, fp16=True)
    with pytest.raises(PayloadError, match="samples"):
        FeaturePayload(np.zeros((2, *IN), np.float32), np.zeros((3, *OUT), np.float32))


def test_feature_spec_travels_in_a_config_record_and_reads_batches() -> None:
    spec = FeatureSpec(IN, OUT, batch=3, fp16=False, max_bytes=10_000)
    record = ConfigRecord(spec.to_config())

    assert dict(record) == {names.FEATURE_IN_SHAPE: [4, 2, 2], names.FEATURE_OUT_SHAPE: [8, 1, 1],
                            names.FEATURE_BATCH: 3, names.FEATURE_FP16: False,
                            names.MAX_FEATURE_BYTES: 10_000}
    assert FeatureSpec.from_config(record) == spec
    assert spec.batch_bytes == 3 * (16 + 8) * 4
    assert spec.read(features_to_record(batch(3), fp16=False)).num_samples == 3
    with pytest.raises(PayloadError, match="expected 1 to 2"):
        FeatureSpec(IN, OUT, batch=2).read(features_to_record(batch(3)))


@pytest.mark.parametrize("change, message", [
    ({names.FEATURE_IN_SHAPE: [4.0, 2.0, 2.0]}, "feature-in-shape.*list of int"),
    ({names.FEATURE_BATCH: True}, "feature-batch.*expected int"),
    ({names.FEATURE_FP16: 1}, "feature-fp16.*expected bool"),
    ({names.FEATURE_BATCH: 0}, "not usable: batch=0"),
    ({names.MAX_FEATURE_BYTES: 100}, "not usable: a batch of 3 takes 144 bytes"),
])
def test_a_bad_feature_spec_in_a_message_is_a_payload_error(change: dict, message: str) -> None:
    config = {**FeatureSpec(IN, OUT, batch=3).to_config(), **change}
    with pytest.raises(PayloadError, match=message):
        FeatureSpec.from_config(config)
    missing = FeatureSpec(IN, OUT, batch=3).to_config()
    del missing[names.MAX_FEATURE_BYTES]
    with pytest.raises(PayloadError, match="max-feature-bytes"):
        FeatureSpec.from_config(missing)

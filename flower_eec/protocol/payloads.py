"""Typed distillation payloads <-> Flower records: FedAgg (arXiv 2312.11489), FedEEC (2501.00693).

Every conversion from a Flower ArrayRecord validates keys, dtype, shape, finiteness and size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from flower_eec.errors import PayloadError
from flower_eec.models.bridge import EMBEDDING_SHAPE
from flower_eec.protocol import names

# Keys of the arrays inside a payload's record (the records' own names are in ``names``)
LOGITS = "logits"
SAMPLE_IDS = "sample-ids"
EMBEDDINGS = "embeddings"
LABELS = "labels"
FLOAT_DTYPES = ("float32", "float16")
_NUMPY_STYPE = "numpy.ndarray"
_FP16_MAX = float(np.finfo(np.float16).max)


def _shape_text(shape: Sequence[int | None]) -> str:
    inner = ", ".join("N" if d is None else str(d) for d in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def _check_float(name: str, value: np.ndarray) -> None:
    if value.dtype.name not in FLOAT_DTYPES:
        raise PayloadError(f"{name} have dtype {value.dtype}, expected {' or '.join(FLOAT_DTYPES)}")
    if not np.isfinite(value).all():
        nans = int(np.isnan(value).sum())
        what = f"NaN ({nans} values)" if nans else f"Inf ({int(np.isinf(value).sum())} values)"
        raise PayloadError(f"{name} hold {what}; every value must be finite")


def _check_int64(name: str, value: np.ndarray, length: int) -> None:
    if value.dtype != np.int64:
        raise PayloadError(f"{name} have dtype {value.dtype}, expected int64")
    if value.shape != (length,):
        raise PayloadError(f"{name} shape {value.shape}, expected ({length},)")


@dataclass(frozen=True, eq=False)
class LogitsPayload:
    """A teacher's (or returning student's) logits on a batch of bridge samples.

    Attributes:
        logits: ``(N, C)`` float32 or float16, finite.
        sample_ids: ``(N,)`` int64, the store positions the rows belong to; ``None`` when the rows
            follow the order both sides already agree on.
    """

    logits: np.ndarray
    sample_ids: np.ndarray | None = None

    def __post_init__(self) -> None:
        """Refuse arrays that do not hold what the type promises."""
        if self.logits.ndim != 2:
            raise PayloadError(f"logits shape {self.logits.shape}, expected (N, C)")
        _check_float(LOGITS, self.logits)
        if self.sample_ids is not None:
            _check_int64(SAMPLE_IDS, self.sample_ids, self.num_samples)

    @property
    def num_samples(self) -> int:
        """Number of rows N."""
        return int(self.logits.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.logits.shape[1])


@dataclass(frozen=True, eq=False)
class EmbeddingPayload:
    """Bridge-encoder codes of a device's training images with their labels (FedAgg's init).

    Attributes:
        embeddings: ``(N, 4, 8, 8)`` (for CIFAR-10) float32 or float16, finite.
        labels: ``(N,)`` int64, non-negative.
    """

    embeddings: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        """Refuse arrays that do not hold what the type promises."""
        if self.embeddings.ndim < 2:
            raise PayloadError(f"embeddings shape {self.embeddings.shape}, expected (N, ...)")
        _check_float(EMBEDDINGS, self.embeddings)
        _check_int64(LABELS, self.labels, self.num_samples)
        if self.labels.size and int(self.labels.min()) < 0:
            raise PayloadError(f"labels hold {int(self.labels.min())}; labels must be >= 0")

    @property
    def num_samples(self) -> int:
        """Number of examples N."""
        return int(self.embeddings.shape[0])


def _wire_float(name: str, value: np.ndarray, fp16: bool) -> Array:
    if not fp16:
        return Array(np.ascontiguousarray(value, dtype=np.float32))
    if value.size and float(np.abs(value).max()) > _FP16_MAX:
        raise PayloadError(
            f"{name} reach {float(np.abs(value).max()):.3g}, beyond float16's {_FP16_MAX:.0f}; "
            "send them as float32 (fp16=False)"
        )
    return Array(np.ascontiguousarray(value, dtype=np.float16))


def to_record(payload: LogitsPayload | EmbeddingPayload, fp16: bool = False) -> ArrayRecord:
    """The payload as an ArrayRecord; floats travel as float16 when ``fp16`` (half the bytes).

    Raises:
        PayloadError: ``fp16`` is asked for but a value does not fit float16.
    """
    arrays: dict[str, Array]
    if isinstance(payload, LogitsPayload):
        arrays = {LOGITS: _wire_float(LOGITS, payload.logits, fp16)}
        if payload.sample_ids is not None:
            arrays[SAMPLE_IDS] = Array(np.ascontiguousarray(payload.sample_ids))
    elif isinstance(payload, EmbeddingPayload):
        arrays = {
            EMBEDDINGS: _wire_float(EMBEDDINGS, payload.embeddings, fp16),
            LABELS: Array(np.ascontiguousarray(payload.labels)),
        }
    else:
        raise TypeError(f"not a payload: {type(payload).__name__}")
    return ArrayRecord(arrays)


def logits_limit(num_samples: int, num_classes: int) -> int:
    """Largest logits record accepted for ``num_samples`` rows: float32 data plus key overhead."""
    return num_samples * (num_classes * 4 + 8) + 4096


def embeddings_limit(num_samples: int, embedding_shape: tuple[int, ...] = EMBEDDING_SHAPE) -> int:
    """Largest embeddings record accepted for ``num_samples`` codes with their int64 labels."""
    return num_samples * (4 * int(np.prod(embedding_shape)) + 8) + 4096


def payload_bytes(record: ArrayRecord) -> int:
    """Bytes the record puts on the wire: array data plus keys (as the traffic meter counts)."""
    return int(record.count_bytes())


def _check_record(
    kind: str,
    record: ArrayRecord,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    max_bytes: int,
) -> None:
    keys = set(record.keys())
    missing = [key for key in required if key not in keys]
    if missing:
        raise PayloadError(f"{kind} record lacks {missing}; it holds {sorted(keys)}")
    extra = sorted(keys - set(required) - set(optional))
    if extra:
        allowed = list(required) + [f"{key} (optional)" for key in optional]
        raise PayloadError(f"{kind} record holds unexpected key(s) {extra}; allowed: {allowed}")
    size = payload_bytes(record)
    if size > max_bytes:
        raise PayloadError(f"{kind} record holds {size} bytes, over the limit of {max_bytes}")


def _decode(
    name: str, array: Array, dtypes: tuple[str, ...], shape: tuple[int | None, ...]
) -> np.ndarray:
    """Check the header against the expectation, then decode and check the data matches it."""
    if array.stype != _NUMPY_STYPE:
        raise PayloadError(f"{name} are serialised as {array.stype!r}, expected {_NUMPY_STYPE!r}")
    if array.dtype not in dtypes:
        raise PayloadError(f"{name} have dtype {array.dtype}, expected {' or '.join(dtypes)}")
    found = tuple(array.shape)
    fits = len(found) == len(shape) and all(
        e is None or e == f for e, f in zip(shape, found, strict=True)
    )
    if not fits:
        if len(found) == len(shape) and found[1:] == shape[1:]:
            raise PayloadError(f"{name} hold {found[0]} samples, expected {shape[0]}")
        raise PayloadError(f"{name} shape {found}, expected {_shape_text(shape)}")
    try:
        value = array.numpy()
    except (ValueError, EOFError, OSError, TypeError) as err:
        raise PayloadError(f"{name} could not be decoded ({err})") from err
    if value.dtype.name != array.dtype or value.shape != found:
        raise PayloadError(
            f"{name} data ({value.dtype} {value.shape}) contradicts the header "
            f"({array.dtype} {found})"
        )
    return value


def _as_float32(name: str, value: np.ndarray) -> np.ndarray:
    _check_float(name, value)
    return value.astype(np.float32, copy=False)


def logits_from_record(
    record: ArrayRecord, *, num_samples: int, num_classes: int, max_bytes: int
) -> LogitsPayload:
    """Read and validate a logits record; floats come back as float32.

    Args:
        record: What ``to_record(LogitsPayload(...))`` made, as received.
        num_samples: Rows the sender was asked for (the size of the shared bridge batch).
        num_classes: Logits per row.
        max_bytes: Largest record accepted (checked before decoding).

    Raises:
        PayloadError: A key is missing or unexpected, the record is too large, or an array has the
            wrong dtype or shape, holds NaN/Inf, or (sample ids) repeats or is negative.
    """
    _check_record(LOGITS, record, (LOGITS,), (SAMPLE_IDS,), max_bytes)
    logits = _decode(LOGITS, record[LOGITS], FLOAT_DTYPES, (num_samples, num_classes))
    sample_ids = None
    if SAMPLE_IDS in record:
        sample_ids = _decode(SAMPLE_IDS, record[SAMPLE_IDS], ("int64",), (num_samples,))
        if sample_ids.size and int(sample_ids.min()) < 0:
            raise PayloadError(f"sample-ids hold {int(sample_ids.min())}; ids must be >= 0")
        if len(np.unique(sample_ids)) != len(sample_ids):
            raise PayloadError("sample-ids repeat an id; each row must belong to its own sample")
    return LogitsPayload(_as_float32(LOGITS, logits), sample_ids)


def embeddings_from_record(
    record: ArrayRecord,
    *,
    num_classes: int,
    num_samples: int | None = None,
    embedding_shape: tuple[int, ...] = EMBEDDING_SHAPE,
    max_bytes: int,
) -> EmbeddingPayload:
    """Read and validate an embeddings record; floats come back as float32.

    Args:
        record: What ``to_record(EmbeddingPayload(...))`` made, as received.
        num_classes: Labels must lie in ``[0, num_classes)``.
        num_samples: The device's declared number of training examples, or ``None`` to accept
            any count (labels must still match the embeddings).
        embedding_shape: Shape of one code (the bridge's ``(4, 8, 8)`` for 32x32 images).
        max_bytes: Largest record accepted (checked before decoding).

    Raises:
        PayloadError: A key is missing or unexpected, the record is too large, an array has the
            wrong dtype or shape or holds NaN/Inf, or a label is out of range.
    """
    _check_record(EMBEDDINGS, record, (EMBEDDINGS, LABELS), (), max_bytes)
    codes = _decode(
        EMBEDDINGS, record[EMBEDDINGS], FLOAT_DTYPES, (num_samples, *embedding_shape)
    )
    labels = _decode(LABELS, record[LABELS], ("int64",), (len(codes),))
    if labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            bad = low if low < 0 else high
            raise PayloadError(f"labels hold {bad}, outside the range [0, {num_classes})")
    return EmbeddingPayload(_as_float32(EMBEDDINGS, codes), labels)


# --- FedIN's feature batches (Chan et al., arXiv 2304.00759) ----------------------------------

FEATURES_IN = "s-in"
FEATURES_OUT = "s-out"


@dataclass(frozen=True, eq=False)
class FeaturePayload:
    """One batch of a device's features: ``s_in = E(x)`` and ``s_out = IN_k(E(x))`` (FedIN).

    Attributes:
        s_in: ``(N, ...)`` float32 or float16, finite: the input of the intermediate layers.
        s_out: ``(N, ...)`` float32 or float16, finite: their output (the classifier's input).
    """

    s_in: np.ndarray
    s_out: np.ndarray

    def __post_init__(self) -> None:
        """Refuse arrays that do not hold what the type promises."""
        for name, value in ((FEATURES_IN, self.s_in), (FEATURES_OUT, self.s_out)):
            if value.ndim < 2 or value.shape[0] < 1:
                raise PayloadError(f"{name} shape {value.shape}, expected (N, ...) with N >= 1")
            _check_float(name, value)
        if self.s_in.shape[0] != self.s_out.shape[0]:
            raise PayloadError(f"{FEATURES_IN} hold {self.s_in.shape[0]} samples but "
                               f"{FEATURES_OUT} hold {self.s_out.shape[0]}")

    @property
    def num_samples(self) -> int:
        """Number of samples N."""
        return int(self.s_in.shape[0])


def feature_bytes_per_sample(in_shape: Sequence[int], out_shape: Sequence[int],
                             fp16: bool) -> int:
    """Wire bytes of one sample's ``(s_in, s_out)`` (array data only)."""
    return (int(np.prod(in_shape)) + int(np.prod(out_shape))) * (2 if fp16 else 4)


def features_to_record(payload: FeaturePayload, fp16: bool = True) -> ArrayRecord:
    """The feature batch as an ArrayRecord; float16 on the wire when ``fp16`` (the default).

    Raises:
        PayloadError: ``fp16`` is asked for but a value does not fit float16.
    """
    return ArrayRecord({FEATURES_IN: _wire_float(FEATURES_IN, payload.s_in, fp16),
                        FEATURES_OUT: _wire_float(FEATURES_OUT, payload.s_out, fp16)})


def features_from_record(record: ArrayRecord, *, in_shape: tuple[int, ...],
                         out_shape: tuple[int, ...], max_samples: int,
                         max_bytes: int) -> FeaturePayload:
    """Read and validate a feature batch; floats come back as float32.

    Args:
        record: What ``features_to_record`` made, as received.
        in_shape: Per-sample shape of ``s_in`` (the extractor's output for the run's images).
        out_shape: Per-sample shape of ``s_out``.
        max_samples: Most samples accepted (the run's feature batch size).
        max_bytes: Largest record accepted (checked before decoding).

    Raises:
        PayloadError: A key is missing or unexpected, the record is too large, an array has the
            wrong dtype or shape, the two disagree on N, N is 0 or over ``max_samples``, or a
            value is NaN/Inf.
    """
    _check_record("features", record, (FEATURES_IN, FEATURES_OUT), (), max_bytes)
    count = int(record[FEATURES_IN].shape[0]) if record[FEATURES_IN].shape else 0
    if not 1 <= count <= max_samples:
        raise PayloadError(f"{FEATURES_IN} hold {count} samples; expected 1 to {max_samples}")
    s_in = _decode(FEATURES_IN, record[FEATURES_IN], FLOAT_DTYPES, (count, *in_shape))
    s_out = _decode(FEATURES_OUT, record[FEATURES_OUT], FLOAT_DTYPES, (count, *out_shape))
    return FeaturePayload(_as_float32(FEATURES_IN, s_in), _as_float32(FEATURES_OUT, s_out))


FEATURE_RECORD_OVERHEAD = 512  # Flower adds about 130 bytes of header per array, two per batch


@dataclass(frozen=True)
class FeatureSpec:
    """What every feature batch of a FedIN run looks like; the strategy sends it to the devices.

    ``FedIN(features=spec)`` puts it in each train message's ``config`` record (``to_config``);
    a device reads it back (``from_config``) to check the batch it receives and the one it sends,
    and the strategy checks every uploaded batch with ``read``.

    Attributes:
        in_shape: Per-sample shape of ``s_in = E(x)``, e.g. ``(8, 8, 8)``.
        out_shape: Per-sample shape of ``s_out = IN(s_in)``, e.g. ``(64, 1, 1)``.
        batch: Samples per batch (a device sends this many, or all it has when fewer).
        fp16: Batches travel as float16 (half the bytes).
        max_bytes: Largest feature record accepted, headers included.

    Raises:
        ValueError: A shape is empty or not positive, ``batch < 1``, or one full batch (plus
            ``FEATURE_RECORD_OVERHEAD``) does not fit ``max_bytes``.
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    batch: int
    fp16: bool = True
    max_bytes: int = 1_000_000

    def __post_init__(self) -> None:
        """Refuse a spec no batch could meet."""
        for name, shape in (("in_shape", self.in_shape), ("out_shape", self.out_shape)):
            if not shape or min(shape) < 1:
                raise ValueError(f"{name}={shape!r}: give a per-sample shape of positive sizes")
        if self.batch < 1:
            raise ValueError(f"batch={self.batch}: a feature batch holds at least one sample")
        if self.batch_bytes + FEATURE_RECORD_OVERHEAD > self.max_bytes:
            raise ValueError(f"a batch of {self.batch} takes {self.batch_bytes} bytes, over "
                             f"max_bytes={self.max_bytes}: lower batch, set fp16 or raise "
                             "max_bytes")

    @property
    def batch_bytes(self) -> int:
        """Array bytes of one full batch."""
        return self.batch * feature_bytes_per_sample(self.in_shape, self.out_shape, self.fp16)

    def read(self, record: ArrayRecord) -> FeaturePayload:
        """Validate a received feature record against this spec."""
        return features_from_record(record, in_shape=self.in_shape, out_shape=self.out_shape,
                                    max_samples=self.batch, max_bytes=self.max_bytes)

    def to_config(self) -> dict[str, Any]:
        """The spec as ``config`` record entries (``names.FEATURE_*``)."""
        return {names.FEATURE_IN_SHAPE: list(self.in_shape),
                names.FEATURE_OUT_SHAPE: list(self.out_shape),
                names.FEATURE_BATCH: self.batch, names.FEATURE_FP16: self.fp16,
                names.MAX_FEATURE_BYTES: self.max_bytes}

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> FeatureSpec:
        """Inverse of ``to_config``; a missing or mistyped entry is a ``PayloadError``."""
        def shape(key: str) -> tuple[int, ...]:
            value = config.get(key)
            if not isinstance(value, list) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise PayloadError(f"knob '{key}' is {value!r}, expected a list of int")
            return tuple(value)

        def scalar(key: str, kind: type) -> Any:
            value = config.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise PayloadError(f"knob '{key}' is {value!r}, expected {kind.__name__}")
            return value

        try:
            return cls(shape(names.FEATURE_IN_SHAPE), shape(names.FEATURE_OUT_SHAPE),
                       scalar(names.FEATURE_BATCH, int), scalar(names.FEATURE_FP16, bool),
                       scalar(names.MAX_FEATURE_BYTES, int))
        except ValueError as exc:
            if isinstance(exc, PayloadError):
                raise
            raise PayloadError(f"the feature spec in the message is not usable: {exc}") from exc

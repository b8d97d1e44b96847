"""``protocol.arrays.values``: the values of Flower's ``Array.numpy()``, read in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from flower_eec.protocol.arrays import to_state_dict, values


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),  # the header says Fortran order
    np.array(3.5, dtype=np.float32),                    # a scalar (shape ())
    np.zeros((0, 3), dtype=np.int64),                   # empty
    np.array([1, -2], dtype=">i4"),                     # big-endian
    np.arange(6, dtype=np.float16).reshape(1, 2, 3),
])
def test_values_equal_flowers_numpy(array: np.ndarray) -> None:
    got = values(Array(array))
    expected = Array(array).numpy()
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.array_equal(got, expected)
    assert not got.flags.writeable  # a view of the message's bytes: never written through


def test_values_of_an_array_not_in_npy_bytes_go_through_flower() -> None:
    array = Array(np.arange(4.0))
    other = Array(dtype=array.dtype, shape=array.shape, stype="numpy.ndarray",
                  data=b"not npy bytes")
    with pytest.raises(Exception):  # noqa: B017 - whatever Flower's np.load raises on junk
        values(other)
    assert np.array_equal(values(array), np.arange(4.0))


def test_to_state_dict_matches_flower_and_owns_its_memory() -> None:
    state = {"w": torch.randn(3, 2), "n": torch.tensor(7)}
    record = ArrayRecord(state)
    got = to_state_dict(record)
    expected = record.to_torch_state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) and got[k].dtype == expected[k].dtype
               for k in got)
    got["w"] += 1  # writable, and the record is untouched
    assert torch.equal(to_state_dict(record)["w"], state["w"])

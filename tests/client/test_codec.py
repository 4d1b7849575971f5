"""Round trips of every dtype through the shared tensor codec, raw and typed."""

from __future__ import annotations

import numpy as np
import pytest

from client.messages import tensor_inputs
from serving.v1 import tensor_pb2
from wire.codec import NUMPY_DTYPES, from_numpy, to_numpy

NUMERIC = [code for code in NUMPY_DTYPES if code != tensor_pb2.DATA_TYPE_STRING]


def sample(code: int) -> np.ndarray:
    """A 2x3 array of the dtype, with its extreme values where it has them."""
    dtype = NUMPY_DTYPES[code]
    if dtype.kind == "b":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, 0, 1], [2, info.max - 1, info.max]], dtype=dtype)
    finfo = np.finfo(dtype)
    return np.array([[0.0, -1.5, finfo.max], [finfo.tiny, np.inf, -np.inf]], dtype=dtype)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("code", NUMERIC, ids=lambda c: tensor_pb2.DataType.Name(c))
def test_numeric_round_trip(code: int, raw: bool) -> None:
    array = sample(code)
    tensor = from_numpy(array, raw=raw)
    assert tensor.dtype == code
    assert list(tensor.shape) == [2, 3]
    assert bool(tensor.raw) == raw
    decoded = to_numpy(tensor)
    assert decoded.dtype == NUMPY_DTYPES[code]
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
def test_string_round_trip(raw: bool) -> None:
    array = np.array([[b"a", "b\u00e9"], ["", b"\x00z"]], dtype=object)
    tensor = from_numpy(array, raw=raw)
    assert tensor.dtype == tensor_pb2.DATA_TYPE_STRING
    assert not tensor.raw
    decoded = to_numpy(tensor)
    assert decoded.tolist() == [[b"a", "b\u00e9".encode()], [b"", b"\x00z"]]


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "typed"])
@pytest.mark.parametrize("shape", [(), (0,), (0, 3), (2, 1, 1)])
def test_odd_shapes(shape: tuple[int, ...], raw: bool) -> None:
    array = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    decoded = to_numpy(from_numpy(array, raw=raw))
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, array)


def test_raw_is_little_endian() -> None:
    big = np.array([1, 256], dtype=">i4")
    tensor = from_numpy(big, raw=True)
    assert tensor.raw == np.array([1, 256], dtype="<i4").tobytes()
    np.testing.assert_array_equal(to_numpy(tensor), [1, 256])


def test_client_inputs_are_raw_tensors() -> None:
    arrays = {"image": np.ones((2, 4), np.float32), "mask": np.zeros((2,), np.bool_)}
    inputs = tensor_inputs(arrays)
    assert set(inputs) == {"image", "mask"}
    for name, value in inputs.items():
        assert value.WhichOneof("kind") == "tensor"
        assert value.tensor.raw
        np.testing.assert_array_equal(to_numpy(value.tensor), arrays[name])

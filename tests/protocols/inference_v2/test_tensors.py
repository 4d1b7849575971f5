"""Open Inference Protocol tensors <-> numpy (server/protocols/inference_v2/tensors.py), one piece at a time."""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest

from inference import open_inference_pb2 as pb
from server.errors import InvalidArgument
from server.protocols.inference_v2 import tensors
from wire import codec


def test_every_api_dtype_has_a_datatype_and_round_trips_raw() -> None:
    for dtype in codec.NUMPY_DTYPES.values():
        name = tensors.datatype_of(dtype)
        assert tensors.DATATYPES[name] == dtype
        if dtype.kind == "O":
            array = np.array([[b"a", b""], [b"\xff\x00", b"text"]], dtype=object)
        else:
            array = np.arange(6).reshape(2, 3).astype(dtype)
        back = tensors.from_raw("t", name, list(array.shape), tensors.to_raw(array))
        assert back.dtype == dtype and back.shape == array.shape
        assert back.tolist() == array.tolist()


def test_bytes_raw_is_length_prefixed() -> None:
    array = np.array([b"ab", b"c"], dtype=object)
    assert tensors.to_raw(array) == struct.pack("<I", 2) + b"ab" + struct.pack("<I", 1) + b"c"
    with pytest.raises(InvalidArgument, match="raw BYTES element 1 is cut short"):
        tensors.from_raw("t", "BYTES", [2], struct.pack("<I", 2) + b"ab" + struct.pack("<I", 5) + b"c")
    with pytest.raises(InvalidArgument, match="end after 1 of 2 elements"):
        tensors.from_raw("t", "BYTES", [2], struct.pack("<I", 2) + b"abxx")
    with pytest.raises(InvalidArgument, match="hold more than the 1 elements"):
        tensors.from_raw("t", "BYTES", [1], struct.pack("<I", 1) + b"ab")
    with pytest.raises(InvalidArgument, match="raw BYTES contents of 5 bytes cannot hold 8589934592 elements"):
        tensors.from_raw("t", "BYTES", [2**33], struct.pack("<I", 1) + b"x")  # refused before allocating


def test_contents_take_the_datatype_field_and_refuse_out_of_range_values() -> None:
    contents = pb.InferTensorContents(int_contents=[1, -2, 300])
    with pytest.raises(InvalidArgument, match="t: a value is outside the range of INT8"):
        tensors.from_contents("t", "INT8", [3], contents)
    assert tensors.from_contents("t", "INT16", [3], contents).tolist() == [1, -2, 300]
    assert tensors.from_contents("t", "BYTES", [1], pb.InferTensorContents(bytes_contents=[b"x"])).tolist() == [b"x"]
    with pytest.raises(InvalidArgument, match="FP16 values travel as raw contents only"):
        tensors.from_contents("t", "FP16", [1], pb.InferTensorContents(fp32_contents=[1.0]))


def test_json_data_flat_nested_and_deep() -> None:
    assert tensors.from_json("t", "INT64", [2, 2], [[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]
    assert tensors.from_json("t", "FP32", [2, 2], [1, 2.5, 3, 4]).dtype == np.float32
    assert tensors.from_json("t", "BOOL", [2], [True, False]).tolist() == [True, False]
    assert tensors.from_json("t", "BYTES", [1], ["é"]).tolist() == ["é".encode()]
    deep: list = [1.0]
    for _ in range(100_000):  # nesting deeper than Python's recursion limit
        deep = [deep]
    assert tensors.from_json("t", "FP64", [1], deep).tolist() == [1.0]
    with pytest.raises(InvalidArgument, match="t: BOOL data must be true or false"):
        tensors.from_json("t", "BOOL", [1], [1])
    with pytest.raises(InvalidArgument, match="t: a value is outside the range of UINT64"):
        tensors.from_json("t", "UINT64", [1], [2**64])
    with pytest.raises(InvalidArgument, match="t: a value is outside the range of UINT8"):
        tensors.from_json("t", "UINT8", [1], [-1])
    with pytest.raises(InvalidArgument, match="t: unknown datatype 'F32'"):
        tensors.from_json("t", "F32", [1], [1.0])


def test_narrowing_refuses_each_value_that_does_not_fit_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from numpy's casts
        assert codec.narrowed(np.array([np.nan, 1e10]), np.dtype("<f2")) is None  # the NaN does not hide the 1e10
        assert np.isnan(codec.narrowed(np.array([np.nan, 1.0]), np.dtype("<f2"))[0])
        assert codec.narrowed(np.array([70000]), np.dtype("<f2")) is None
        assert codec.narrowed(np.array([70000]), np.dtype("<f4")).tolist() == [70000.0]
        assert codec.narrowed(np.array([2**31]), np.dtype("<i4")) is None
        assert codec.narrowed(np.array([2**70], dtype=object), np.dtype("<u8")) is None
    with pytest.raises(InvalidArgument, match="shape is too large: its FP64 values would take more than"):
        tensors.from_raw("t", "FP64", [2**60, 0], b"")


def test_json_fast_path_agrees_with_the_checks() -> None:
    x = np.random.default_rng(0).random((2, 3, 4)).astype(np.float32)
    assert np.array_equal(tensors.from_json("t", "FP32", [2, 3, 4], x.tolist()), x)  # numpy reads it in one go
    assert np.array_equal(tensors.from_json("t", "FP32", [2, 3, 4], x.ravel().tolist()), x)
    with pytest.raises(InvalidArgument, match="t: data holds 3 values but shape \\[2, 2\\] needs 4"):
        tensors.from_json("t", "FP32", [2, 2], [[1, 2], [3]])  # ragged: counted one by one
    with pytest.raises(InvalidArgument, match="t: INT32 data must be integers"):
        tensors.from_json("t", "INT32", [2], [1.0, 2.0])
    with pytest.raises(InvalidArgument, match="t: FP32 data must be numbers"):
        tensors.from_json("t", "FP32", [2], [True, False])
    with pytest.raises(InvalidArgument, match="t: a value is outside the range of INT64"):
        tensors.from_json("t", "INT64", [2], [1, 2**63])


def test_json_answers() -> None:
    assert tensors.to_json(np.array([[0.1, 1 / 3]], np.float32)) == [0.1, 0.33333334]
    assert tensors.to_json(np.array([b"ok"], dtype=object)) == ["ok"]
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        tensors.to_json(np.array([b"\xff"], dtype=object))

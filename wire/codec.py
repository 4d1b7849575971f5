"""Tensor codec: `serving.v1.Tensor` <-> numpy, shared by the server and the client.

Raw tensors are read with `numpy.frombuffer` (no per-element Python loop); typed
repeated fields are read with `numpy.asarray` over the repeated container. This
module imports only numpy and the generated messages, so the client can use it
without TensorFlow.
"""

from __future__ import annotations

import math
from typing import Any, Final, cast

import numpy as np

from serving.v1 import tensor_pb2

DataType = tensor_pb2.DataType

NUMPY_DTYPES: Final[dict[int, np.dtype]] = {
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    tensor_pb2.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DATA_TYPE_INT8: np.dtype("i1"),
    tensor_pb2.DATA_TYPE_INT16: np.dtype("<i2"),
    tensor_pb2.DATA_TYPE_INT32: np.dtype("<i4"),
    tensor_pb2.DATA_TYPE_INT64: np.dtype("<i8"),
    tensor_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
    tensor_pb2.DATA_TYPE_UINT16: np.dtype("<u2"),
    tensor_pb2.DATA_TYPE_UINT32: np.dtype("<u4"),
    tensor_pb2.DATA_TYPE_UINT64: np.dtype("<u8"),
    tensor_pb2.DATA_TYPE_BOOL: np.dtype("?"),
    tensor_pb2.DATA_TYPE_STRING: np.dtype(object),
}

# Which typed repeated field carries each dtype.
TYPED_FIELDS: Final[dict[int, str]] = {
    tensor_pb2.DATA_TYPE_FLOAT32: "float_val",
    tensor_pb2.DATA_TYPE_FLOAT16: "float_val",
    tensor_pb2.DATA_TYPE_FLOAT64: "double_val",
    tensor_pb2.DATA_TYPE_INT8: "int_val",
    tensor_pb2.DATA_TYPE_INT16: "int_val",
    tensor_pb2.DATA_TYPE_INT32: "int_val",
    tensor_pb2.DATA_TYPE_UINT8: "int_val",
    tensor_pb2.DATA_TYPE_UINT16: "int_val",
    tensor_pb2.DATA_TYPE_INT64: "int64_val",
    tensor_pb2.DATA_TYPE_UINT32: "int64_val",
    tensor_pb2.DATA_TYPE_UINT64: "uint64_val",
    tensor_pb2.DATA_TYPE_BOOL: "bool_val",
    tensor_pb2.DATA_TYPE_STRING: "string_val",
}
_ALL_TYPED = tuple(sorted(set(TYPED_FIELDS.values())))


class TensorCodecError(ValueError):
    """A tensor message that cannot be turned into an array (or back)."""


def dtype_name(dtype: int) -> str:
    """`DATA_TYPE_FLOAT32` -> `FLOAT32`, for messages."""
    try:
        return DataType.Name(dtype).removeprefix("DATA_TYPE_")
    except ValueError:
        return f"<unknown dtype {dtype}>"


_DATA_TYPES: Final[dict[tuple[str, int], tensor_pb2.DataType]] = {
    (dtype.kind, dtype.itemsize): cast(tensor_pb2.DataType, code)  # NUMPY_DTYPES' keys are DataType values
    for code, dtype in NUMPY_DTYPES.items()
    if code != tensor_pb2.DATA_TYPE_STRING
}


def data_type_of(array: np.ndarray) -> tensor_pb2.DataType:
    """The `DataType` of a numpy array (strings and bytes map to STRING)."""
    kind = array.dtype.kind
    if kind in "OSU":
        return tensor_pb2.DATA_TYPE_STRING
    code = _DATA_TYPES.get((kind, array.dtype.itemsize))
    if code is None:
        raise TensorCodecError(f"numpy dtype {array.dtype} has no serving.v1.DataType")
    return code


def to_numpy(tensor: tensor_pb2.Tensor, name: str = "tensor") -> np.ndarray:
    """Decode a tensor message; `name` is used in error messages."""
    if tensor.dtype == tensor_pb2.DATA_TYPE_UNSPECIFIED:
        raise TensorCodecError(f"{name}: dtype is required (for example DATA_TYPE_FLOAT32)")
    dtype = NUMPY_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise TensorCodecError(f"{name}: unknown dtype {tensor.dtype}")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise TensorCodecError(f"{name}: shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    typed_set = [f for f in _ALL_TYPED if len(getattr(tensor, f))]
    if tensor.raw:
        if typed_set:
            raise TensorCodecError(f"{name}: set either raw or {typed_set[0]}, not both")
        if tensor.dtype == tensor_pb2.DATA_TYPE_STRING:
            raise TensorCodecError(f"{name}: STRING tensors must use string_val, not raw")
        expected = count * dtype.itemsize
        if len(tensor.raw) != expected:
            raise TensorCodecError(
                f"{name}: raw holds {len(tensor.raw)} bytes but shape {list(shape)} of "
                f"{dtype_name(tensor.dtype)} needs {expected}"
            )
        return np.frombuffer(tensor.raw, dtype=dtype).reshape(shape)
    field = TYPED_FIELDS[tensor.dtype]
    wrong = [f for f in typed_set if f != field]
    if wrong:
        raise TensorCodecError(f"{name}: {dtype_name(tensor.dtype)} values go in {field} (or raw), not {wrong[0]}")
    values = getattr(tensor, field)
    if len(values) != count:
        raise TensorCodecError(f"{name}: {field} holds {len(values)} values but shape {list(shape)} needs {count}")
    if tensor.dtype == tensor_pb2.DATA_TYPE_STRING:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except OverflowError as exc:
        raise TensorCodecError(f"{name}: value out of range for {dtype_name(tensor.dtype)}") from exc


def from_numpy(array: np.ndarray, *, raw: bool = True) -> tensor_pb2.Tensor:
    """Encode an array: little-endian `raw` bytes, or typed repeated fields."""
    array = np.asarray(array)
    code = data_type_of(array)
    tensor = tensor_pb2.Tensor(dtype=code, shape=array.shape)
    if code == tensor_pb2.DATA_TYPE_STRING:
        tensor.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1))
    elif raw:
        tensor.raw = np.ascontiguousarray(array, dtype=NUMPY_DTYPES[code]).tobytes()
    else:
        getattr(tensor, TYPED_FIELDS[code]).extend(array.reshape(-1).tolist())
    return tensor


def narrowed(values: np.ndarray, dtype: np.dtype) -> np.ndarray | None:
    """Numbers (ints, floats, or Python ints in an object array) as `dtype`, or None when a value does
    not fit: an integer outside its bounds, or a finite number that would become infinite."""
    if values.size and values.dtype == object:  # Python integers too large for any numpy integer type
        return None
    if values.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            return None
    with np.errstate(over="ignore", invalid="ignore"):
        converted = values.astype(dtype)
    if (
        values.size
        and dtype.kind == "f"
        and values.dtype.kind in "iuf"
        and not np.all(np.isfinite(converted) | ~np.isfinite(values))  # each value on its own
    ):
        return None
    return converted


def float_list(array: np.ndarray) -> list:
    """A float array as nested lists, float16/float32 values written as the shortest decimal that reads
    back as the same value (0.99999994, not 0.9999999403953552)."""
    values: list[Any]
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        values = array.astype(str).astype(np.float64).tolist()
    else:
        values = array.tolist()
    return values

"""The Open Inference Protocol's tensors (KServe V2, Triton) as numpy arrays, and back.

A V2 tensor is a name, a datatype string ("FP32", "INT64", "BYTES", ...), a
shape and its values in row-major order, carried one of three ways:

- gRPC `contents`: the typed repeated field of the datatype;
- raw bytes (gRPC `raw_input_contents`, or the binary part of a REST body):
  little-endian elements; BYTES elements each prefixed by a 4-byte
  little-endian length;
- REST JSON `data`: a flat or nested list (BYTES as strings).

Every decoder checks the datatype, the shape and the number of values before
it builds an array, and names the tensor and what was expected.
"""

from __future__ import annotations

import math
import struct
from typing import Any, Final

import numpy as np

from server.errors import InvalidArgument
from serving.v1 import tensor_pb2
from wire import codec

# The API's dtypes under their V2 names (numpy dtypes from codec.NUMPY_DTYPES; object arrays hold bytes).
_V2_NAMES: Final[dict[int, str]] = {
    tensor_pb2.DATA_TYPE_BOOL: "BOOL",
    tensor_pb2.DATA_TYPE_UINT8: "UINT8",
    tensor_pb2.DATA_TYPE_UINT16: "UINT16",
    tensor_pb2.DATA_TYPE_UINT32: "UINT32",
    tensor_pb2.DATA_TYPE_UINT64: "UINT64",
    tensor_pb2.DATA_TYPE_INT8: "INT8",
    tensor_pb2.DATA_TYPE_INT16: "INT16",
    tensor_pb2.DATA_TYPE_INT32: "INT32",
    tensor_pb2.DATA_TYPE_INT64: "INT64",
    tensor_pb2.DATA_TYPE_FLOAT16: "FP16",
    tensor_pb2.DATA_TYPE_FLOAT32: "FP32",
    tensor_pb2.DATA_TYPE_FLOAT64: "FP64",
    tensor_pb2.DATA_TYPE_STRING: "BYTES",
}
DATATYPES: Final[dict[str, np.dtype]] = {name: codec.NUMPY_DTYPES[code] for code, name in _V2_NAMES.items()}
MAX_DIMENSIONS = 32
MAX_BYTES = 2**62  # what a shape may ask for, zero dimensions counted as 1 (numpy's own limit is 2**63)
# Where gRPC `InferTensorContents` carries each datatype (FP16 only travels raw).
CONTENTS_FIELDS: Final[dict[str, str]] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_FIELDS = tuple(sorted(set(CONTENTS_FIELDS.values())))
_LENGTH = struct.Struct("<I")


def datatype_of(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype ("BYTES" for strings and bytes)."""
    try:
        return _V2_NAMES[codec.data_type_of(np.empty(0, dtype))]
    except codec.TensorCodecError:
        raise InvalidArgument(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def element_count(tensor: str, datatype: str, shape: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    """The numpy dtype, shape and element count of a tensor's header, checked."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"{tensor}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"{tensor}: shape must be a list of integers, got {str(shape)[:100]}")
    if len(shape) > MAX_DIMENSIONS:
        raise InvalidArgument(f"{tensor}: shape has {len(shape)} dimensions; at most {MAX_DIMENSIONS} are taken")
    if any(d < 0 for d in shape):
        raise InvalidArgument(f"{tensor}: shape {list(shape)} has a negative dimension")
    # Checked before any product is printed or any array shaped: a zero-size tensor may not carry
    # dimensions numpy cannot represent, and huge JSON integers are not formatted.
    if any(d > MAX_BYTES for d in shape) or math.prod(max(d, 1) for d in shape) * dtype.itemsize > MAX_BYTES:
        raise InvalidArgument(
            f"{tensor}: shape is too large: its {datatype} values would take more than {MAX_BYTES} bytes"
        )
    dims = tuple(int(d) for d in shape)
    return dtype, dims, math.prod(dims)


def check_datatype(tensor: str, datatype: str, expected: np.dtype, model: str) -> None:
    """InvalidArgument unless `datatype` is the model input's own (V2 names in the message)."""
    want = datatype_of(expected)
    if datatype != want:
        raise InvalidArgument(f"{tensor}: datatype {datatype} does not match model '{model}', which expects {want}")


def from_contents(tensor: str, datatype: str, shape: Any, contents: Any) -> np.ndarray:
    """An array from gRPC `InferTensorContents` (exactly the datatype's field, one value per element)."""
    dtype, dims, count = element_count(tensor, datatype, shape)
    field = CONTENTS_FIELDS.get(datatype)
    filled = [f for f in _ALL_FIELDS if len(getattr(contents, f))]
    if field is None:
        raise InvalidArgument(f"{tensor}: {datatype} values travel as raw contents only (raw_input_contents)")
    wrong = [f for f in filled if f != field]
    if wrong:
        raise InvalidArgument(f"{tensor}: {datatype} values go in contents.{field}, not contents.{wrong[0]}")
    values = getattr(contents, field)
    if len(values) != count:
        raise InvalidArgument(
            f"{tensor}: contents.{field} holds {len(values)} values but shape {list(dims)} needs {count}"
        )
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(dims)
    return _narrowed(tensor, np.asarray(values), dtype, datatype).reshape(dims)


def from_raw(tensor: str, datatype: str, shape: Any, data: bytes | memoryview) -> np.ndarray:
    """An array from raw little-endian bytes (BYTES: 4-byte length-prefixed elements)."""
    dtype, dims, count = element_count(tensor, datatype, shape)
    if datatype == "BYTES":
        return _length_prefixed(tensor, data, count).reshape(dims)
    expected = count * dtype.itemsize
    if len(data) != expected:
        raise InvalidArgument(
            f"{tensor}: raw contents hold {len(data)} bytes but shape {list(dims)} of {datatype} needs {expected}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def from_json(tensor: str, datatype: str, shape: Any, data: Any) -> np.ndarray:
    """An array from REST `data`: a flat or nested list in row-major order (BYTES as strings)."""
    dtype, dims, count = element_count(tensor, datatype, shape)
    if dtype.kind in "iuf" and isinstance(data, list):
        # Fast path: regular nested lists of numbers are read by numpy in C (a 224x224x3 image in 2-7
        # ms instead of 30). Anything else (ragged, strings, too large, the wrong kind) takes the
        # element-by-element path below, which names the problem.
        try:
            values = np.asarray(data)
        except (ValueError, OverflowError, RecursionError):
            values = None
        if values is not None and values.size == count and values.dtype.kind in ("iu" if dtype.kind in "iu" else "iuf"):
            return _narrowed(tensor, values, dtype, datatype).reshape(dims)
    flat = _flattened(tensor, data)
    if len(flat) != count:
        raise InvalidArgument(f"{tensor}: data holds {len(flat)} values but shape {list(dims)} needs {count}")
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in flat):
            raise InvalidArgument(f"{tensor}: BYTES data must be strings")
        array = np.empty(count, dtype=object)
        array[:] = [v.encode() for v in flat]
        return array.reshape(dims)
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in flat):
            raise InvalidArgument(f"{tensor}: BOOL data must be true or false")
        return np.asarray(flat, dtype=dtype).reshape(dims)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise InvalidArgument(f"{tensor}: {datatype} data must be numbers")
    if dtype.kind in "iu":
        if not all(isinstance(v, int) for v in flat):
            raise InvalidArgument(f"{tensor}: {datatype} data must be integers")
        info = np.iinfo(dtype)  # compared as Python integers: numpy would read [1, 2**63] as floats
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise InvalidArgument(f"{tensor}: a value is outside the range of {datatype}")
        return np.asarray(flat, dtype=dtype).reshape(dims)
    try:
        values = np.asarray(flat) if flat else np.empty(0, dtype)
    except OverflowError:
        values = np.asarray(flat, dtype=object)
    return _narrowed(tensor, values, dtype, datatype).reshape(dims)


def to_raw(array: np.ndarray) -> bytes:
    """An array's raw contents: little-endian elements, or length-prefixed BYTES elements."""
    if array.dtype.kind in "OSU":
        parts = []
        for value in array.reshape(-1):
            data = value if isinstance(value, bytes) else str(value).encode()
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=DATATYPES[datatype_of(array.dtype)]).tobytes()


def to_json(array: np.ndarray) -> list[Any]:
    """REST `data`: the values flattened in row-major order (BYTES as text where it is UTF-8)."""
    if array.dtype.kind in "OSU":
        return [_text(v) for v in array.reshape(-1).tolist()]
    return codec.float_list(array.reshape(-1))


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise InvalidArgument("an output holds bytes that are not UTF-8; ask for it as binary data") from None
    return str(value)


def _narrowed(tensor: str, values: np.ndarray, dtype: np.dtype, datatype: str) -> np.ndarray:
    """`values` as `dtype`, refusing what does not fit (a wider integer, a finite float turned infinite)."""
    converted = codec.narrowed(values, dtype)
    if converted is None:
        raise InvalidArgument(f"{tensor}: a value is outside the range of {datatype}")
    return converted


def _length_prefixed(tensor: str, data: bytes | memoryview, count: int) -> np.ndarray:
    view = memoryview(data)
    if count * _LENGTH.size > len(view):  # before anything is allocated for the elements
        raise InvalidArgument(f"{tensor}: raw BYTES contents of {len(view)} bytes cannot hold {count} elements")
    array = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + 4 > len(view):
            raise InvalidArgument(f"{tensor}: raw BYTES contents end after {index} of {count} elements")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidArgument(f"{tensor}: raw BYTES element {index} is cut short")
        array[index] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidArgument(f"{tensor}: raw BYTES contents hold more than the {count} elements of the shape")
    return array


def _flattened(tensor: str, data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise InvalidArgument(f"{tensor}: data must be a list")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:  # iterative: a deeply nested body cannot exhaust the stack
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat

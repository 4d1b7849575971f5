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
from server.models import codec

# The API's dtypes (codec.NUMPY_DTYPES) under their V2 names; object arrays hold bytes.
DATATYPES: Final[dict[str, np.dtype]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
assert set(DATATYPES.values()) == set(codec.NUMPY_DTYPES.values())
_NAMES: Final[dict[tuple[str, int], str]] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in DATATYPES.items() if name != "BYTES"
}
# Where gRPC `InferTensorContents` carries each datatype (FP16 only travels raw).
CONTENTS_FIELDS: Final[dict[str, str]] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_ALL_FIELDS = tuple(sorted(set(CONTENTS_FIELDS.values())))
_LENGTH = struct.Struct("<I")


def datatype_of(dtype: np.dtype) -> str:
    """The V2 datatype of a numpy dtype ("BYTES" for strings and bytes)."""
    if dtype.kind in "OSU":
        return "BYTES"
    name = _NAMES.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise InvalidArgument(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return name


def element_count(tensor: str, datatype: str, shape: Any) -> tuple[np.dtype, tuple[int, ...], int]:
    """The numpy dtype, shape and element count of a tensor's header, checked."""
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidArgument(f"{tensor}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise InvalidArgument(f"{tensor}: shape must be a list of integers, got {shape!r}"[:200])
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"{tensor}: shape {list(dims)} has a negative dimension")
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
        raise InvalidArgument(f"{tensor}: contents.{field} holds {len(values)} values but shape {list(dims)} needs {count}")
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(dims)
    values_array = np.asarray(values)
    return _narrowed(tensor, values_array, dtype, datatype).reshape(dims)


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
    if dtype.kind in "iu" and not all(isinstance(v, int) for v in flat):
        raise InvalidArgument(f"{tensor}: {datatype} data must be integers")
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
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        # The shortest decimal that reads back as the same float32 (0.99999994, not 0.9999999403953552).
        return array.reshape(-1).astype(str).astype(np.float64).tolist()
    return array.reshape(-1).tolist()


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise InvalidArgument("an output holds bytes that are not UTF-8; ask for it as binary data") from None
    return str(value)


def _narrowed(tensor: str, values: np.ndarray, dtype: np.dtype, datatype: str) -> np.ndarray:
    """`values` as `dtype`, refusing what does not fit (a wider integer, a finite float turned infinite)."""
    if values.size and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.dtype == object or values.min() < info.min or values.max() > info.max:
            raise InvalidArgument(f"{tensor}: a value is outside the range of {datatype}")
    if values.dtype == object:
        raise InvalidArgument(f"{tensor}: a value is outside the range of {datatype}")
    with np.errstate(over="ignore"):
        converted = values.astype(dtype)
    if dtype.kind == "f" and values.size and not np.isfinite(converted).all() and np.isfinite(values).all():
        raise InvalidArgument(f"{tensor}: a value is outside the range of {datatype}")
    return converted


def _length_prefixed(tensor: str, data: bytes | memoryview, count: int) -> np.ndarray:
    view = memoryview(data)
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

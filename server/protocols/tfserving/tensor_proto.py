"""TensorFlow's `TensorProto` as a numpy array: TF Serving's requests and warm-up records.

Only the dtypes the API has are taken, and the size is checked before
decoding: TensorFlow repeats the last typed value to fill the shape, so a few
bytes could otherwise ask for gigabytes.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from server.errors import InvalidArgument
from wire import codec


def tf_dtype_of(dtype: np.dtype) -> int:
    """TensorFlow's `DataType` for one of the API's numpy dtypes (object: DT_STRING)."""
    code: int = (tf.string if dtype.kind == "O" else tf.as_dtype(dtype)).as_datatype_enum
    return code


# The TensorFlow dtypes a TensorProto may carry: the API's own (codec.NUMPY_DTYPES), and where typed values go.
TF_NUMPY_DTYPES = {tf_dtype_of(dtype): dtype for dtype in codec.NUMPY_DTYPES.values()}
VALUE_FIELDS = {
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def tensor_array(
    name: str, tensor: tensor_pb2.TensorProto, max_bytes: int, limit: str = "MAX_MESSAGE_BYTES"
) -> np.ndarray:
    """A TensorProto as an array, or InvalidArgument naming the input (at most `max_bytes` once decoded)."""
    dtype = TF_NUMPY_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidArgument(f"input '{name}': dtype {_dtype_name(tensor.dtype)} is not supported")
    shape = tensor.tensor_shape
    dims = [d.size for d in shape.dim]
    if shape.unknown_rank or any(d < 0 for d in dims):
        raise InvalidArgument(f"input '{name}': tensor_shape {dims} must be fully known (no unknown rank, no -1)")
    count = math.prod(dims)
    if count * max(dtype.itemsize, 1) > max_bytes:
        raise InvalidArgument(
            f"input '{name}': shape {dims} holds {count} values, more than the {max_bytes} bytes allowed ({limit})"
        )
    if tensor.tensor_content:
        if len(tensor.tensor_content) != count * dtype.itemsize:
            raise InvalidArgument(
                f"input '{name}': tensor_content has {len(tensor.tensor_content)} bytes; shape {dims} of "
                f"{_dtype_name(tensor.dtype)} needs {count * dtype.itemsize}"
            )
    else:
        values = len(getattr(tensor, VALUE_FIELDS[tensor.dtype]))
        if values > count or (values == 0 and count > 0):
            raise InvalidArgument(
                f"input '{name}': {VALUE_FIELDS[tensor.dtype]} has {values} values; shape {dims} needs "
                f"{count} (or fewer, the last repeated)"
            )
    try:
        array: np.ndarray = tf.make_ndarray(tensor)
    except Exception as exc:  # anything the checks above did not foresee
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InvalidArgument(f"input '{name}': not a valid TensorProto: {first_line}") from None
    if array.dtype.kind == "O":  # DT_STRING: bytes
        return array
    return np.ascontiguousarray(array)


def _dtype_name(dtype: int) -> str:
    try:
        name: str = types_pb2.DataType.Name(dtype)
        return name
    except ValueError:
        return f"<unknown dtype {dtype}>"

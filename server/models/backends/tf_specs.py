"""TensorFlow dtypes and shapes <-> `TensorInfo`, for the backends that run on TensorFlow."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from server.models.backend import TensorInfo


def tensor_info(name: str, dtype: Any, shape: Any) -> TensorInfo:
    """A TensorFlow (or Keras) dtype and shape as a `TensorInfo`: tf.string as object, unknown dims as -1."""
    tf_dtype = tf.as_dtype(dtype)
    numpy_dtype = np.dtype(object) if tf_dtype == tf.string else np.dtype(tf_dtype.as_numpy_dtype)
    dims = shape.as_list() if isinstance(shape, tf.TensorShape) else list(shape)
    return TensorInfo(name, numpy_dtype, tuple(-1 if d is None else int(d) for d in dims))


def tensor_spec(info: TensorInfo) -> tf.TensorSpec:
    """The `tf.TensorSpec` a `TensorInfo` describes (-1 dims free)."""
    dtype = tf.string if info.dtype == object else tf.as_dtype(info.dtype)
    return tf.TensorSpec([None if d == -1 else d for d in info.shape], dtype, info.name)

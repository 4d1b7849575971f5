"""TF Serving's warm-up records: predict requests kept with a version, replayed before it serves.

The file is `<version>/assets.extra/tf_serving_warmup_requests`, a TFRecord of
PredictionLog, in TF Serving's place and format whatever the model's format.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError

from server.errors import InvalidArgument
from server.protocols.tfserving.tensor_proto import tensor_array

log = logging.getLogger(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # as TF Serving
MAX_WARMUP_BYTES = 256 * 1024 * 1024  # per tensor, decoded


def warmup_records(path: Path) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(record number, inputs) of each predict request in a TF Serving warm-up file, read one at a time.

    The file is a TFRecord of PredictionLog. No file: nothing. Classify,
    regress and other logs are skipped (only Predict is served); a record
    that cannot be read fails the load, as in TF Serving.
    """
    if not path.is_file():
        return
    from tensorflow_serving.apis import prediction_log_pb2

    try:
        for index, raw in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator()):
            if index >= MAX_WARMUP_RECORDS:
                raise ValueError(f"more than {MAX_WARMUP_RECORDS} records")
            entry = prediction_log_pb2.PredictionLog.FromString(raw)
            if entry.WhichOneof("log_type") != "predict_log":
                log.warning(
                    "%s: record %d is a %s, skipped: only predict logs are replayed",
                    path,
                    index,
                    entry.WhichOneof("log_type"),
                )
                continue
            try:
                inputs = {
                    key: tensor_array(key, tensor, MAX_WARMUP_BYTES, "the warm-up limit")
                    for key, tensor in entry.predict_log.request.inputs.items()
                }
            except InvalidArgument as exc:
                raise ValueError(f"record {index}: {exc.message}") from None
            yield index, inputs
    except (ValueError, DecodeError, tf.errors.OpError) as exc:
        reason = exc.message if isinstance(exc, tf.errors.OpError) else str(exc)
        raise ValueError(f"{path}: cannot read the warm-up records: {reason}") from None

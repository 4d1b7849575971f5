"""TF Serving warm-up records (assets.extra/tf_serving_warmup_requests) replayed when a version loads."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2

from server.batching import BatchingConfig
from server.models.model import load_model
from server.models.warmup import WARMUP_FILE
from tests.support.servers import MODEL_DIR, wait_for


def predict_log(**inputs: np.ndarray) -> prediction_log_pb2.PredictionLog:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    for name, array in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def _truncated_content() -> prediction_log_pb2.PredictionLog:
    record = predict_log(image=np.zeros((1, 8, 8, 1), np.float32))
    tensor = record.predict_log.request.inputs["image"]
    tensor.tensor_content = tensor.tensor_content[:-4]
    return record


def version_with_records(tmp_path: Path, records: list[prediction_log_pb2.PredictionLog | bytes]) -> Path:
    version = tmp_path / "digits" / "1"
    shutil.copytree(MODEL_DIR / "digits" / "1", version)
    (version / WARMUP_FILE).parent.mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(version / WARMUP_FILE)) as writer:
        for record in records:
            writer.write(record if isinstance(record, bytes) else record.SerializeToString())
    return version


def load(version: Path):
    return load_model("digits", 1, version, "/device:CPU:0", BatchingConfig())


def test_predict_records_are_replayed_and_other_logs_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = np.random.default_rng(3).random((3, 8, 8, 1), dtype=np.float32)
    classify = prediction_log_pb2.PredictionLog(
        classify_log=prediction_log_pb2.ClassifyLog(request=classification_pb2.ClassificationRequest())
    )
    version = version_with_records(tmp_path, [predict_log(image=rows), classify, predict_log(image=rows[:1])])
    caplog.set_level(logging.INFO, logger="server.models.model")
    model = load(version)
    try:
        assert model.warm_up() == 2
        assert "(2 warm-up records)" in caplog.text
        assert "record 1 is a classify_log, skipped" in caplog.text
    finally:
        model.close()


def test_without_a_warmup_file_nothing_is_replayed(tmp_path: Path) -> None:
    version = tmp_path / "digits" / "1"
    shutil.copytree(MODEL_DIR / "digits" / "1", version)
    model = load(version)
    try:
        assert model.warm_up() == 0
    finally:
        model.close()


@pytest.mark.parametrize(
    "records, message",
    [
        (
            [predict_log(image=np.zeros((1, 8, 8, 1)))],
            "record 0: input 'image': dtype FLOAT64 does not match the model's FLOAT32 [-1, 8, 8, 1]",
        ),
        (
            [
                predict_log(image=np.zeros((1, 8, 8, 1), np.float32)),
                predict_log(img=np.zeros((1, 8, 8, 1), np.float32)),
            ],
            "record 1: inputs: unknown input 'img'; model 'digits' takes 'image'",
        ),
        ([b"not a PredictionLog at all \xff"], "cannot read the warm-up records: "),
        (
            [predict_log(image=np.zeros((1, 8, 8, 1), np.float32))] * 2 + [_truncated_content()],
            "cannot read the warm-up records: record 2: input 'image': tensor_content has 252 bytes",
        ),
        (
            [
                prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog()),
                predict_log(image=np.zeros((1, 8, 8, 1))),
            ],
            "record 1: input 'image': dtype FLOAT64",
        ),  # numbered as in the file, skipped records included
    ],
)
def test_a_bad_record_fails_the_load_naming_it(tmp_path: Path, records: list, message: str) -> None:
    version = version_with_records(tmp_path, records)
    batchers = {t for t in threading.enumerate() if t.name == "batcher-digits"}
    with pytest.raises(ValueError) as info:
        load(version)
    # the failed version's Batcher thread is gone (it would keep the model in memory)
    wait_for(
        lambda: {t for t in threading.enumerate() if t.name == "batcher-digits"} <= batchers,
        10,
        "the failed version's batcher thread to end",
    )
    assert str(info.value).startswith(f"{version / WARMUP_FILE}: ")
    assert message in str(info.value)


def test_a_file_that_is_not_a_tfrecord_fails_the_load(tmp_path: Path) -> None:
    version = version_with_records(tmp_path, [])
    (version / WARMUP_FILE).write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00truncated")
    with pytest.raises(ValueError, match="cannot read the warm-up records: "):
        load(version)

"""One model that cannot load does not stop the others; a model with string inputs loads and serves."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests

from client.messages import predict_request, tensor_inputs
from inference import open_inference_pb2 as v2
from inference import open_inference_pb2_grpc as v2_grpc
from server.app import App
from server.config import Settings
from serving.v1 import predict_pb2, predict_pb2_grpc
from tests.conftest import digits_rows
from tests.models.test_reload import add_version
from tests.support.servers import health_status

pytestmark = pytest.mark.integration


def save_string_model(path: Path) -> None:
    """A SavedModel whose serving_default takes a string tensor, as tf.Example-based models do."""
    import tensorflow as tf

    class Lengths(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"length": tf.strings.length(text)}

    module = Lengths()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@pytest.fixture
def mixed_repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    add_version(root, "digits", 1)
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    (root / "onnx_model" / "1").mkdir(parents=True)  # a format the server does not know
    (root / "onnx_model" / "1" / "model.onnx").write_bytes(b"\x08\x07")
    save_string_model(root / "lengths" / "1")
    return root


def test_a_model_that_fails_to_load_is_reported_and_the_others_serve(
    make_app, mixed_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = make_app(model_dir=mixed_repository)
    assert health_status(app.address) == "SERVING"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(
        f"model broken: version 1 ({mixed_repository / 'broken' / '1'}) failed to load ("
    ), errors
    assert any(f"{mixed_repository / 'onnx_model' / '1'}: no saved_model.pb" in r.getMessage() for r in caplog.records)
    with grpc.insecure_channel(app.address) as channel:
        predict = predict_pb2_grpc.PredictServiceStub(channel)
        reply = predict.Predict(predict_request("digits", tensor_inputs({"image": digits_rows(1)})), timeout=10)
        assert list(reply.outputs["probabilities"].shape) == [1, 10]
        strings = predict_request("lengths", tensor_inputs({"text": np.array([b"abc", b"hello"], dtype=object)}))
        assert np.array_equal(
            np.frombuffer(predict.Predict(strings, timeout=10).outputs["length"].raw, np.int32), [3, 5]
        )
        with pytest.raises(grpc.RpcError) as raised:
            predict.GetModel(predict_pb2.GetModelRequest(model="broken"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert raised.value.details().startswith("model 'broken' failed to load: "), raised.value.details()
        index = v2_grpc.GRPCInferenceServiceStub(channel).RepositoryIndex(v2.RepositoryIndexRequest(), timeout=10)
    states = {(m.name, m.version): (m.state, m.reason) for m in index.models}
    assert states[("digits", "1")] == ("READY", "")
    assert states[("lengths", "1")] == ("READY", "")
    assert states[("broken", "1")][0] == "UNAVAILABLE"
    assert states[("broken", "1")][1].startswith("failed to load: "), states
    reply = requests.get(f"http://{app.http_address}/v1/models/broken", timeout=10)
    assert reply.status_code == 503 and reply.json()["message"].startswith("model 'broken' failed to load")


def assert_start_fails(model_dir: Path, match: str, **settings: Any) -> None:
    app = App(
        Settings(
            _env_file=None,
            grpc_server_address="127.0.0.1:0",
            http_server_address="",
            metrics_address="",
            access_log_path="",
            model_dir=model_dir,
            **settings,
        )
    )
    try:
        with pytest.raises(RuntimeError, match=match):
            app.start()
    finally:
        app.stop(grace=0)


def test_strict_loading_stops_the_start_naming_the_model(mixed_repository: Path) -> None:
    assert_start_fails(
        mixed_repository, r"model broken: version 1 \(.*broken/1\) failed to load: ", model_load_strict=True
    )


def test_nothing_loadable_stops_the_start(tmp_path: Path) -> None:
    broken = tmp_path / "models" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    assert_start_fails(tmp_path / "models", r"no model could be loaded: broken v1: ")

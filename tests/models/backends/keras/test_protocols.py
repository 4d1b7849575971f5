"""The Keras 3 demo model (models/digits_keras/1/model.keras) through every protocol, against the
SavedModel of the same network and weights (models/digits/1): the same answers, only the names differ."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_service_pb2_grpc
from tensorflow_serving.apis import predict_pb2 as tfs_predict_pb2

from inference import open_inference_pb2 as v2_pb2
from inference import open_inference_pb2_grpc as v2_grpc
from serving.v1 import predict_pb2, predict_pb2_grpc
from tests.conftest import digits_rows
from tests.support.servers import MODEL_DIR
from wire import codec

pytestmark = pytest.mark.integration

KERAS, SAVED = "digits_keras", "digits"


@dataclass
class Served:
    grpc: grpc.Channel
    shim: str  # the HTTP shim (serving.v1 routes and /v2)
    tfs_rest: str  # TF Serving's REST API


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from server.app import App
    from server.config import Settings

    root = tmp_path_factory.mktemp("keras")
    settings = Settings(
        _env_file=None,
        grpc_server_address="127.0.0.1:0",
        http_server_address="127.0.0.1:0",
        tfserving_rest_address="127.0.0.1:0",
        metrics_address="",
        model_dir=MODEL_DIR,
        upload_dir=root / "uploads",
        access_log_path=str(root / "access.log"),
    )
    app = App(settings)
    try:
        app.start()
        with grpc.insecure_channel(app.address) as channel:
            yield Served(channel, f"http://{app.http_address}", f"http://{app.tfserving.address}")
    finally:
        app.stop(grace=1)


ROWS = digits_rows(4, seed=31)


def both(call: Any) -> tuple[Any, Any]:
    return call(KERAS), call(SAVED)


def test_it_is_served_as_a_keras_model_with_the_savedmodels_specs(served: Served) -> None:
    stub = predict_pb2_grpc.PredictServiceStub(served.grpc)
    keras, saved = both(lambda m: stub.GetModel(predict_pb2.GetModelRequest(model=m), timeout=30).model)
    assert keras.platform.startswith("keras (Keras 3.")
    assert saved.platform.startswith("tensorflow_savedmodel (TensorFlow ")
    for field in ("inputs", "outputs", "labels", "classification_output", "image_inputs", "signature_name"):
        assert getattr(keras, field) == getattr(saved, field), field
    assert [m.name for m in stub.ListModels(predict_pb2.ListModelsRequest(), timeout=30).models] == [
        "digits",
        "digits_decoder",
        "digits_keras",
    ]


def test_serving_v1_grpc_predict_with_top_k(served: Served) -> None:
    stub = predict_pb2_grpc.PredictServiceStub(served.grpc)

    def predict(model: str) -> predict_pb2.PredictResponse:
        request = predict_pb2.PredictRequest(model=model, top_k=3)
        request.inputs["image"].tensor.CopyFrom(codec.from_numpy(ROWS, raw=True))
        return stub.Predict(request, timeout=30)

    keras, saved = both(predict)
    np.testing.assert_array_equal(
        codec.to_numpy(keras.outputs["probabilities"], "probabilities"),
        codec.to_numpy(saved.outputs["probabilities"], "probabilities"),
    )
    assert list(keras.classifications) == list(saved.classifications)
    assert len(keras.classifications) == 4 and len(keras.classifications[0].classes) == 3


def test_serving_v1_http_shim(served: Served) -> None:
    tensor = {"dtype": "DATA_TYPE_FLOAT32", "shape": list(ROWS.shape), "raw": base64.b64encode(ROWS.tobytes()).decode()}

    def predict(model: str) -> dict[str, Any]:
        reply = requests.post(
            f"{served.shim}/v1/models/{model}:predict",
            json={"inputs": {"image": {"tensor": tensor}}, "topK": 2},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body.pop("model") == {"name": model, "version": "1"}
        body.pop("requestId")
        return body

    keras, saved = both(predict)
    assert keras == saved


def test_tfserving_grpc_predict_and_metadata(served: Served) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(served.grpc)

    def predict(model: str) -> np.ndarray:
        request = tfs_predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(ROWS))
        response = stub.Predict(request, timeout=30)
        assert list(response.outputs) == ["probabilities"]
        return tf.make_ndarray(response.outputs["probabilities"])

    def metadata(model: str) -> dict[str, Any]:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = model
        signatures = get_model_metadata_pb2.SignatureDefMap()
        stub.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(signatures)
        return json_format.MessageToDict(signatures)

    keras, saved = both(predict)
    np.testing.assert_array_equal(keras, saved)
    assert metadata(KERAS) == metadata(SAVED)


def test_tfserving_rest_predict(served: Served) -> None:
    def predict(model: str) -> dict[str, Any]:
        reply = requests.post(
            f"{served.tfs_rest}/v1/models/{model}:predict", json={"instances": ROWS.tolist()}, timeout=30
        )
        assert reply.status_code == 200, reply.text
        return reply.json()

    keras, saved = both(predict)
    assert keras == saved
    assert len(keras["predictions"]) == 4


def test_open_inference_protocol_grpc_and_rest(served: Served) -> None:
    stub = v2_grpc.GRPCInferenceServiceStub(served.grpc)

    def infer(model: str) -> np.ndarray:
        request = v2_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name="image", datatype="FP32", shape=ROWS.shape)
        request.raw_input_contents.append(ROWS.tobytes())
        response = stub.ModelInfer(request, timeout=30)
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("probabilities", "FP32", [4, 10])]
        return np.frombuffer(response.raw_output_contents[0], "<f4")

    def rest(model: str) -> dict[str, Any]:
        body = {
            "inputs": [{"name": "image", "datatype": "FP32", "shape": list(ROWS.shape), "data": ROWS.ravel().tolist()}]
        }
        reply = requests.post(f"{served.shim}/v2/models/{model}/infer", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert answer.pop("model_name") == model
        return answer

    keras, saved = both(infer)
    np.testing.assert_array_equal(keras, saved)
    keras_rest, saved_rest = both(rest)
    assert keras_rest == saved_rest
    metadata = stub.ModelMetadata(v2_pb2.ModelMetadataRequest(name=KERAS), timeout=30)
    assert (metadata.platform, list(metadata.versions)) == ("keras", ["1"])
    assert requests.get(f"{served.shim}/v2/models/{KERAS}/ready", timeout=30).status_code == 200

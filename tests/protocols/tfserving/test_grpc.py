"""TensorFlow Serving's gRPC API (PredictionService, ModelService) on the real server with the demo models."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.v1 import predict_pb2 as serving_predict_pb2
from serving.v1 import predict_pb2_grpc as serving_predict_pb2_grpc
from tests.conftest import digits_rows
from tests.support.servers import MODEL_DIR, wait_for
from wire import codec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def access_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tfserving-grpc") / "access.log"


@pytest.fixture(scope="module")
def channel(access_log: Path) -> Iterator[grpc.Channel]:
    from server.app import App
    from server.config import Settings

    settings = Settings(
        _env_file=None,
        grpc_server_address="127.0.0.1:0",
        http_server_address="",
        metrics_address="",
        model_dir=MODEL_DIR,
        upload_dir=access_log.parent / "uploads",
        access_log_path=str(access_log),
    )
    app = App(settings)
    try:
        app.start()
        with grpc.insecure_channel(app.address) as channel:
            yield channel
    finally:
        app.stop(grace=1)


def tfs_request(model: str, inputs: dict[str, object], **spec: object) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for key, value in spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    for name, value in inputs.items():
        tensor = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        request.inputs[name].CopyFrom(tensor)
    return request


def own_api(channel: grpc.Channel, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same rows through serving.v1.PredictService/Predict (file outputs inline)."""
    request = serving_predict_pb2.PredictRequest(model=model, inline_files=True)
    for name, array in inputs.items():
        request.inputs[name].tensor.CopyFrom(codec.from_numpy(array, raw=True))
    response = serving_predict_pb2_grpc.PredictServiceStub(channel).Predict(request, timeout=30)
    return {name: codec.to_numpy(t, name) for name, t in response.outputs.items()}


def test_predict_answers_what_the_own_api_answers(channel: grpc.Channel, access_log: Path) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = digits_rows(4, seed=21)
    response = stub.Predict(tfs_request("digits", {"image": x}), timeout=30, metadata=[("x-request-id", "tfs-grpc-1")])
    assert (response.model_spec.name, response.model_spec.version.value, response.model_spec.signature_name) == (
        "digits",
        1,
        "serving_default",
    )
    assert list(response.outputs) == ["probabilities"]
    assert response.outputs["probabilities"].dtype == types_pb2.DT_FLOAT
    np.testing.assert_array_equal(
        tf.make_ndarray(response.outputs["probabilities"]), own_api(channel, "digits", {"image": x})["probabilities"]
    )

    def logged() -> list[dict]:
        lines = [json.loads(line) for line in access_log.read_text().splitlines()] if access_log.exists() else []
        return [line for line in lines if line["request_id"] == "tfs-grpc-1"]

    wait_for(logged, 10, "the access-log line")
    assert [(e["method"], e["status"], e["model"]) for e in logged()] == [
        ("/tensorflow.serving.PredictionService/Predict", "OK", "digits")
    ]


def test_typed_value_tensors_versions_filters_and_integer_models(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    x = digits_rows(1, seed=22)
    typed = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in x.shape]
        ),
        float_val=x.ravel().tolist(),
    )
    request = tfs_request("digits", {"image": typed}, version=1, signature_name="serving_default")
    request.output_filter.append("probabilities")
    got = tf.make_ndarray(stub.Predict(request, timeout=30).outputs["probabilities"])
    np.testing.assert_array_equal(got, own_api(channel, "digits", {"image": x})["probabilities"])

    digits = np.array([3, 7], np.int32)
    response = stub.Predict(tfs_request("digits_decoder", {"digit": digits}), timeout=30)
    image = tf.make_ndarray(response.outputs["image"])
    assert image.shape == (2, 32, 32, 1)
    np.testing.assert_array_equal(image, own_api(channel, "digits_decoder", {"digit": digits})["image"])


def test_model_metadata_and_status(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "digits"
    response = stub.GetModelMetadata(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == ("digits", 1)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert list(signatures.signature_def) == ["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert {k: (v.dtype, [d.size for d in v.tensor_shape.dim]) for k, v in signature.inputs.items()} == {
        "image": (types_pb2.DT_FLOAT, [-1, 8, 8, 1])
    }
    assert {k: (v.dtype, [d.size for d in v.tensor_shape.dim]) for k, v in signature.outputs.items()} == {
        "probabilities": (types_pb2.DT_FLOAT, [-1, 10])
    }

    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "digits"
    status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)
    assert [(s.version, s.state, s.status.error_code) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE, 0)
    ]


def _proto(dtype: int, dims: list[int], **values: list) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **values)


def _bad_content() -> tensor_pb2.TensorProto:
    tensor = tf.make_tensor_proto(np.zeros((1, 8, 8, 1), np.float32))
    tensor.tensor_content = tensor.tensor_content[:-4]
    return tensor


ZEROS = np.zeros((1, 8, 8, 1), np.float32)
PREDICT_ERRORS = [
    (
        tfs_request("nope", {"image": ZEROS}),
        grpc.StatusCode.NOT_FOUND,
        "model 'nope' not found; available models: 'digits', 'digits_decoder', 'digits_keras'",
    ),
    (
        tfs_request("digits", {"image": ZEROS}, version=4),
        grpc.StatusCode.NOT_FOUND,
        "version 4 of model 'digits' is not served; served version: 1",
    ),
    (
        tfs_request("digits", {"image": np.zeros((1, 8, 8, 1))}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': dtype FLOAT64 does not match the model's FLOAT32 [-1, 8, 8, 1]",
    ),
    (
        tfs_request("digits", {"image": np.zeros((1, 8, 8), np.float32)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': shape [1, 8, 8] does not match the model's FLOAT32 [-1, 8, 8, 1]",
    ),
    (
        tfs_request("digits", {"image": _bad_content()}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': tensor_content has 252 bytes; shape [1, 8, 8, 1] of DT_FLOAT needs 256",
    ),
    (
        tfs_request("digits", {"image": _proto(types_pb2.DT_BFLOAT16, [1, 8, 8, 1], half_val=[16256])}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': dtype DT_BFLOAT16 is not supported",
    ),
    (
        tfs_request("digits", {"image": _proto(types_pb2.DT_COMPLEX64, [1, 8, 8, 1], scomplex_val=[1.0, 0.0])}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': dtype DT_COMPLEX64 is not supported",
    ),
    (
        tfs_request("digits", {"image": _proto(types_pb2.DT_FLOAT, [8_000_000, 8, 8, 1], float_val=[0.5])}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': shape [8000000, 8, 8, 1] holds 512000000 values, more than the 67108864 bytes allowed "
        "(MAX_MESSAGE_BYTES)",
    ),
    (
        tfs_request("digits", {"image": _proto(types_pb2.DT_FLOAT, [1, 8, 8, 1], float_val=[0.5] * 65)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': float_val has 65 values; shape [1, 8, 8, 1] needs 64 (or fewer, the last repeated)",
    ),
    (
        tfs_request("digits", {"image": _proto(types_pb2.DT_FLOAT, [1, -1, 8, 1], float_val=[0.5])}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': tensor_shape [1, -1, 8, 1] must be fully known (no unknown rank, no -1)",
    ),
    (
        tfs_request("digits", {}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs: none given; model 'digits' takes 'image' (FLOAT32 [-1, 8, 8, 1])",
    ),
    (
        tfs_request("digits", {"img": ZEROS}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs: unknown input 'img'; model 'digits' takes 'image'",
    ),
    # refused before anything is decoded: the unknown input would expand to 64 MB
    (
        tfs_request("digits", {"image": ZEROS, "junk": _proto(types_pb2.DT_FLOAT, [16_000_000], float_val=[1.0])}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs: unknown input 'junk'; model 'digits' takes 'image'",
    ),
    (
        tfs_request("digits", {"image": ZEROS}, signature_name="predict"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model_spec.signature_name: only 'serving_default' is served, not 'predict'",
    ),
    (
        tfs_request("digits", {"image": ZEROS}, version_label="stable"),
        grpc.StatusCode.NOT_FOUND,
        "model 'digits' has no version label 'stable'; its labels: none (set version_labels in its serving.json)",
    ),
    (tfs_request("", {"image": ZEROS}), grpc.StatusCode.INVALID_ARGUMENT, "model_spec.name: required"),
]


def test_version_labels_name_versions(make_app, tmp_path: Path) -> None:
    """serving.json "version_labels" (TF Serving's model config labels): gRPC version_label and REST /labels/."""
    models = tmp_path / "models"
    for version in (1, 2):
        shutil.copytree(MODEL_DIR / "digits" / "1", models / "digits" / str(version))
    labels = {"stable": 1, "canary": 2, "retired": 3}
    (models / "digits" / "serving.json").write_text(json.dumps({"version_policy": "all", "version_labels": labels}))
    app = make_app(model_dir=models, tfserving_rest_address="127.0.0.1:0")
    with grpc.insecure_channel(app.address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for label, version in (("stable", 1), ("canary", 2)):
            response = stub.Predict(tfs_request("digits", {"image": ZEROS}, version_label=label), timeout=30)
            assert response.model_spec.version.value == version
            status_request = get_model_status_pb2.GetModelStatusRequest()
            status_request.model_spec.name, status_request.model_spec.version_label = "digits", label
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(status_request, timeout=30)
            assert [s.version for s in status.model_version_status] == [version]
        for label, message in (
            ("retired", "label 'retired' of model 'digits' names version 3, which is not served; served: 2, 1"),
            ("beta", "model 'digits' has no version label 'beta'; its labels: 'canary', 'retired', 'stable'"),
        ):
            with pytest.raises(grpc.RpcError) as raised:
                stub.Predict(tfs_request("digits", {"image": ZEROS}, version_label=label), timeout=30)
            assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.NOT_FOUND, message)
    rest = f"http://{app.tfserving.address}/v1/models/digits/labels"
    assert requests.get(f"{rest}/canary/metadata", timeout=30).json()["model_spec"]["version"] == "2"
    assert requests.get(f"{rest}/stable", timeout=30).json()["model_version_status"][0]["version"] == "1"
    predicted = requests.post(f"{rest}/stable:predict", json={"instances": ZEROS.tolist()}, timeout=30)
    assert predicted.status_code == 200 and len(predicted.json()["predictions"]) == 1
    missing = requests.get(f"{rest}/beta", timeout=30)
    assert (missing.status_code, missing.json()["error"]) == (
        404,
        "model 'digits' has no version label 'beta'; its labels: 'canary', 'retired', 'stable'",
    )


@pytest.mark.parametrize("request_, code, message", PREDICT_ERRORS, ids=[str(i) for i in range(len(PREDICT_ERRORS))])
def test_predict_errors_have_their_code_and_name_the_field(channel: grpc.Channel, request_, code, message) -> None:
    with pytest.raises(grpc.RpcError) as info:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request_, timeout=30)
    assert (info.value.code(), info.value.details()) == (code, message)


def test_output_filter_metadata_field_and_unserved_methods(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = tfs_request("digits", {"image": ZEROS})
    request.output_filter.append("logits")
    metadata = get_model_metadata_pb2.GetModelMetadataRequest()
    metadata.model_spec.name = "digits"
    model_service = model_service_pb2_grpc.ModelServiceStub(channel)
    cases = [
        (
            lambda: stub.Predict(request, timeout=30),
            grpc.StatusCode.INVALID_ARGUMENT,
            "output_filter: unknown output 'logits'; model 'digits' returns 'probabilities'",
        ),
        (
            lambda: stub.GetModelMetadata(metadata, timeout=30),
            grpc.StatusCode.INVALID_ARGUMENT,
            "metadata_field: only 'signature_def' is served; got none",
        ),
        (
            lambda: stub.Classify(classification_pb2.ClassificationRequest(), timeout=30),
            grpc.StatusCode.UNIMPLEMENTED,
            "Classify is not supported; use Predict",
        ),
        (
            lambda: stub.Regress(regression_pb2.RegressionRequest(), timeout=30),
            grpc.StatusCode.UNIMPLEMENTED,
            "Regress is not supported; use Predict",
        ),
        (
            lambda: stub.MultiInference(inference_pb2.MultiInferenceRequest(), timeout=30),
            grpc.StatusCode.UNIMPLEMENTED,
            "MultiInference is not supported; use Predict",
        ),
        (
            lambda: model_service.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(), timeout=30),
            grpc.StatusCode.FAILED_PRECONDITION,
            "model control is off (MODEL_CONTROL_MODE=none serves the models found at start): set "
            "MODEL_CONTROL_MODE=explicit or poll to reconfigure models by API",
        ),
    ]
    for call, code, message in cases:
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert (info.value.code(), info.value.details()) == (code, message)


def test_the_rest_listeners_in_process_method_is_not_served_over_grpc(channel: grpc.Channel) -> None:
    from google.protobuf import wrappers_pb2

    call: Any = channel.unary_unary(
        "/serving.v1.TFServingRest/Predict", request_serializer=lambda m: m.SerializeToString()
    )
    with pytest.raises(grpc.RpcError) as info:
        call(wrappers_pb2.BytesValue(value=b"{}"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_reflection_lists_the_tensorflow_serving_services(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(
        stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)  # type: ignore[operator]  # types-grpcio-reflection types this method as binascii.Incomplete
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"} <= names
    for service, file in (
        ("tensorflow.serving.PredictionService", "tensorflow_serving/apis/prediction_service.proto"),
        ("tensorflow.serving.ModelService", "tensorflow_serving/apis/model_service.proto"),
    ):
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol=service)
        replies = stub.ServerReflectionInfo(iter([request]), timeout=10)  # type: ignore[operator]  # types-grpcio-reflection types this method as binascii.Incomplete
        reply = list(replies)[0]  # noqa: RUF015 (reads the stream to its end)
        assert reply.WhichOneof("message_response") == "file_descriptor_response", reply
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(b)
            for b in reply.file_descriptor_response.file_descriptor_proto
        ]
        assert file in [f.name for f in files]


def test_the_tensorflow_serving_api_can_be_turned_off(make_app, tmp_path: Path) -> None:
    app = make_app(listen_only=True, tfserving_grpc=False)
    with grpc.insecure_channel(app.address) as off, pytest.raises(grpc.RpcError) as info:
        prediction_service_pb2_grpc.PredictionServiceStub(off).Predict(
            tfs_request("digits", {"image": ZEROS}), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED

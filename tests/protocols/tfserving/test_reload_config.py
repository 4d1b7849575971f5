"""TF Serving's ModelService.HandleReloadConfigRequest through tensorflow-serving-api's own stubs: a
ModelServerConfig replaces the set of served models (MODEL_CONTROL_MODE explicit or poll)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from tests.conftest import digits_rows
from tests.models.test_reload import add_version
from tests.support.servers import MODEL_DIR

pytestmark = pytest.mark.integration


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    add_version(root, "digits", 1)
    add_version(root, "digits", 2)
    add_version(root, "digits_keras", 1, MODEL_DIR / "digits_keras" / "1")
    return root


def request_of(*entries: dict) -> model_management_pb2.ReloadConfigRequest:
    config = model_server_config_pb2.ModelServerConfig()
    for entry in entries:
        model = config.model_config_list.config.add(name=entry["name"], base_path=entry.get("base_path", ""))
        model.model_platform = entry.get("platform", "tensorflow")
        if "versions" in entry:
            model.model_version_policy.specific.versions.extend(entry["versions"])
        model.version_labels.update(entry.get("labels", {}))
    return model_management_pb2.ReloadConfigRequest(config=config)


def statuses(channel: grpc.Channel, name: str) -> list[int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    reply = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
    return [s.version for s in reply.model_version_status]


def test_a_reload_config_replaces_the_served_models(make_app, repository: Path) -> None:
    app = make_app(model_dir=repository, model_control_mode="explicit", grace_period_seconds=0.5)
    with grpc.insecure_channel(app.address) as channel:
        reload = model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest
        reply = reload(request_of({"name": "digits", "base_path": str(repository / "digits")}), timeout=60)
        assert reply.status.error_code == 0
        assert [(m.name, m.version) for m in app.repository.models()] == [("digits", 2)]

        reload(
            request_of({"name": "digits", "versions": [1, 2], "labels": {"stable": 1}}, {"name": "digits_keras"}),
            timeout=60,
        )
        assert [(m.name, m.version) for m in app.repository.models()] == [
            ("digits", 2),
            ("digits", 1),
            ("digits_keras", 1),
        ]
        assert statuses(channel, "digits") == [2, 1]
        predict = predict_pb2.PredictRequest()
        predict.model_spec.name, predict.model_spec.version_label = "digits", "stable"
        predict.inputs["image"].CopyFrom(tf.make_tensor_proto(digits_rows(1)))
        answer = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict, timeout=30)
        assert answer.model_spec.version.value == 1

        reload(request_of({"name": "digits_keras"}), timeout=60)
        assert [m.name for m in app.repository.models()] == ["digits_keras"]


@pytest.mark.parametrize(
    ("entry", "code", "message"),
    [
        ({"name": "nope"}, grpc.StatusCode.NOT_FOUND, "model 'nope' not found in "),
        (
            {"name": "digits", "base_path": "/elsewhere/digits"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "config.model_config_list.config[0].base_path: models load from MODEL_DIR: expected ",
        ),
        (
            {"name": "digits", "platform": "pytorch"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "config.model_config_list.config[0].model_platform: expected 'tensorflow', not 'pytorch'",
        ),
        (
            {"name": "digits", "labels": {"stable": 7}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "model 'digits': version label 'stable' names version 7, which its version policy",
        ),
    ],
)
def test_a_bad_reload_config_names_the_field_and_changes_nothing(make_app, repository: Path, entry, code, message):
    app = make_app(model_dir=repository, model_control_mode="explicit", startup_models="digits_keras")
    with grpc.insecure_channel(app.address) as channel, pytest.raises(grpc.RpcError) as raised:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request_of(entry), timeout=60)
    assert raised.value.code() == code and raised.value.details().startswith(message), raised.value.details()
    assert [m.name for m in app.repository.models()] == ["digits_keras"]


def test_without_model_control_a_reload_is_refused(make_app) -> None:
    app = make_app()
    with grpc.insecure_channel(app.address) as channel, pytest.raises(grpc.RpcError) as raised:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(
            request_of({"name": "digits"}), timeout=60
        )
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "MODEL_CONTROL_MODE=explicit or poll to reconfigure models" in raised.value.details()

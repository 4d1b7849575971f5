"""serving.json "version_policy": which versions of a model are served side by side."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest
import requests
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from client.messages import predict_request, tensor_inputs
from server.errors import NotFound, Unavailable
from server.models.repository import version_labels, version_policy
from serving.v1 import predict_pb2
from tests.conftest import digits_rows
from tests.models.test_reload import add_version, call
from tests.support.servers import wait_for

pytestmark = pytest.mark.integration

FOUND = [3, 2, 1]


@pytest.mark.parametrize(
    "raw, served",
    [
        (None, [3]),
        ("latest", [3]),
        ({"latest": 2}, [3, 2]),
        ({"latest": 5}, [3, 2, 1]),
        ("all", [3, 2, 1]),
        ({"specific": [1, 3]}, [3, 1]),
        ({"specific": [7]}, []),
    ],
)
def test_policies_pick_versions(raw, served) -> None:
    assert version_policy(raw, "serving.json")(FOUND) == served


@pytest.mark.parametrize(
    "raw",
    [
        "newest",
        {"latest": 0},
        {"latest": True},
        {"specific": []},
        {"specific": ["1"]},
        {"latest": 1, "specific": [1]},
        3,
    ],
)
def test_invalid_policies_are_refused_naming_the_file(raw) -> None:
    with pytest.raises(ValueError) as info:
        version_policy(raw, "models/x/serving.json")
    assert str(info.value) == (
        'models/x/serving.json: version_policy must be "latest", "all", {"latest": N} (N >= 1) or '
        f'{{"specific": [versions]}}; got {json.dumps(raw)}'
    )


@pytest.mark.parametrize(
    "raw", [["stable"], {"stable": 0}, {"stable": "1"}, {"1st": 1}, {"": 1}, {"a b": 2}, {"stable": True}]
)
def test_invalid_version_labels_are_refused_naming_the_file(raw) -> None:
    assert version_labels({"stable": 1, "canary-2.x": 2}, "s.json") == {"stable": 1, "canary-2.x": 2}
    with pytest.raises(ValueError) as info:
        version_labels(raw, "models/x/serving.json")
    assert str(info.value) == (
        'models/x/serving.json: version_labels must map labels (a letter, then letters, digits, "_", "." or "-") '
        f'to versions (>= 1), e.g. {{"stable": 1, "canary": 2}}; got {json.dumps(raw)}'
    )


def set_policy(repository: Path, policy: object) -> None:
    (repository / "digits" / "serving.json").write_text(json.dumps({"version_policy": policy}))


def predicted_version(app, version: int) -> int:
    request = predict_request("digits", tensor_inputs({"image": digits_rows(1)}), version=version)
    return call(app, "Predict", request).model.version


def status_versions(app) -> list[int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "digits"
    with grpc.insecure_channel(app.address) as channel:
        reply = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return [s.version for s in reply.model_version_status]


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    add_version(root, "digits", 1)
    add_version(root, "digits", 2)
    return root


def test_latest_two_are_served_side_by_side_and_follow_new_versions(make_app, repository: Path) -> None:
    set_policy(repository, {"latest": 2})
    app = make_app(model_dir=repository, grace_period_seconds=0.2, tfserving_rest_address="127.0.0.1:0")
    assert [predicted_version(app, v) for v in (1, 2, 0)] == [1, 2, 2]
    assert status_versions(app) == [2, 1]
    model = call(app, "GetModel", predict_pb2.GetModelRequest(model="digits", version=1)).model
    assert (model.version, list(model.served_versions), list(model.available_versions)) == (1, [2, 1], [2, 1])
    rest = requests.get(f"http://{app.tfserving.address}/v1/models/digits", timeout=10).json()
    assert [s["version"] for s in rest["model_version_status"]] == ["2", "1"]
    listed = call(app, "ListModels", predict_pb2.ListModelsRequest()).models
    assert [(m.name, m.version) for m in listed] == [("digits", 2), ("digits", 1)]

    first = app.repository.get("digits", 1)
    add_version(repository, "digits", 3)
    app.repository.poll_once()
    assert [predicted_version(app, v) for v in (3, 2, 0)] == [3, 2, 3]
    with pytest.raises(grpc.RpcError) as error:
        predicted_version(app, 1)
    assert (error.value.code(), error.value.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "version 1 of model 'digits' is not served; served versions: 3, 2",
    )
    wait_for(lambda: first.batcher._closed, 30, "version 1 to be unloaded")


def test_a_specific_version_stays_pinned_until_the_policy_changes(make_app, repository: Path, caplog) -> None:
    set_policy(repository, {"specific": [1]})
    app = make_app(model_dir=repository, grace_period_seconds=0.2)
    assert predicted_version(app, 0) == 1
    assert status_versions(app) == [1]

    set_policy(repository, {"latest": 0})  # invalid: logged once, nothing changes
    with caplog.at_level(logging.ERROR, logger="server.models.repository"):
        app.repository.poll_once()
        app.repository.poll_once()
    problems = [r.getMessage() for r in caplog.records if "version_policy must be" in r.getMessage()]
    assert len(problems) == 1 and problems[0].endswith("; the served versions stay")
    assert predicted_version(app, 0) == 1

    first = app.repository.get("digits", 1)
    set_policy(repository, {"specific": [2]})
    app.repository.poll_once()
    assert status_versions(app) == [2]
    assert predicted_version(app, 0) == 2
    wait_for(lambda: first.batcher._closed, 30, "version 1 to be unloaded")


def test_a_failed_new_version_retires_nothing(make_app, repository: Path) -> None:
    set_policy(repository, {"latest": 2})
    app = make_app(model_dir=repository)
    broken = repository / "digits" / "3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    for _ in range(2):
        app.repository.poll_once()
    assert status_versions(app) == [2, 1]  # not [2]: version 1 stays until 3 is really served
    assert [predicted_version(app, v) for v in (1, 2, 0)] == [1, 2, 2]


def test_a_version_still_loading_is_unavailable_not_missing(make_app, repository: Path) -> None:
    app = make_app(model_dir=repository)
    app.repository.ready.clear()  # as during start-up, while the other versions load
    try:
        with pytest.raises(Unavailable, match="models are still loading; version 1 of model 'digits'"):
            app.repository.get("digits", 1)
    finally:
        app.repository.ready.set()
    with pytest.raises(NotFound, match="version 1 of model 'digits' is not served; served version: 2"):
        app.repository.get("digits", 1)

"""MODEL_POLL_SECONDS: new versions and models are served without a restart or a failed call."""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from client.messages import predict_request, tensor_inputs
from server.app import App
from serving.v1 import predict_pb2, predict_pb2_grpc
from tests.conftest import digits_rows
from tests.support.servers import MODEL_DIR, health_status, wait_for

pytestmark = pytest.mark.integration

DIGITS = MODEL_DIR / "digits" / "1"


def add_version(repository: Path, model: str, version: int, source: Path = DIGITS) -> Path:
    """Copy a SavedModel in as a new version the way deployments should: copy aside, then rename."""
    staging = repository / f".staging-{model}-{version}"
    shutil.copytree(source, staging)
    target = repository / model / str(version)
    target.parent.mkdir(exist_ok=True)
    staging.rename(target)
    return target


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    add_version(root, "digits", 1)
    return root


def call(app: App, method: str, request: object) -> Any:
    """One PredictService call on a channel of its own."""
    with grpc.insecure_channel(app.address) as channel:
        return getattr(predict_pb2_grpc.PredictServiceStub(channel), method)(request, timeout=10)


def served_version(app: App, model: str = "digits") -> int:
    return call(app, "GetModel", predict_pb2.GetModelRequest(model=model)).model.version


def test_a_new_version_takes_over_without_failing_a_call(make_app, repository: Path) -> None:
    app = make_app(model_dir=repository, model_poll_seconds=0.1, grace_period_seconds=0.5)
    first = app.repository.get("digits")
    channel = grpc.insecure_channel(app.address)
    predict = predict_pb2_grpc.PredictServiceStub(channel).Predict
    request = predict_request("digits", tensor_inputs({"image": digits_rows(1)}))
    outcomes: list[tuple[str, int]] = []
    stop = threading.Event()

    def call_until_stopped() -> None:
        while not stop.is_set():
            try:
                outcomes.append(("OK", predict(request, timeout=10).model.version))
            except grpc.RpcError as exc:
                outcomes.append((exc.code().name, 0))

    caller = threading.Thread(target=call_until_stopped)
    caller.start()
    try:
        wait_for(lambda: len(outcomes) >= 5, 30, "calls to version 1")
        add_version(repository, "digits", 2)
        wait_for(lambda: sum(1 for _, v in outcomes if v == 2) >= 5, 60, "calls answered by version 2")
    finally:
        stop.set()
        caller.join(30)
        channel.close()
    versions = [v for _, v in outcomes]
    assert {code for code, _ in outcomes} == {"OK"}
    assert versions == sorted(versions) and set(versions) == {1, 2}  # never back to 1 once 2 answered
    reply = call(app, "GetModel", predict_pb2.GetModelRequest(model="digits")).model
    assert (reply.version, list(reply.available_versions)) == (2, [2, 1])
    wait_for(lambda: first.batcher._closed, 30, "version 1 to be unloaded after the grace period")
    assert health_status(app.address) == "SERVING"


def test_a_broken_version_is_skipped_until_its_files_change(make_app, repository: Path, caplog) -> None:
    app = make_app(model_dir=repository)  # no poll thread: the test polls
    broken = repository / "digits" / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    with caplog.at_level(logging.ERROR, logger="server.models.repository"):
        for _ in range(3):
            app.repository.poll_once()
    failures = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
    assert len(failures) == 1 and failures[0].startswith("model digits: version 2 failed to load")
    assert failures[0].endswith("; still serving version 1")
    assert served_version(app) == 1
    assert health_status(app.address) == "SERVING"

    shutil.rmtree(broken)
    add_version(repository, "digits", 2)
    app.repository.poll_once()
    assert served_version(app) == 2


def test_new_models_are_added_and_removed_ones_unloaded(make_app, repository: Path) -> None:
    app = make_app(model_dir=repository, grace_period_seconds=0.2)
    add_version(repository, "digits_copy", 1)
    app.repository.poll_once()
    names = [m.name for m in call(app, "ListModels", predict_pb2.ListModelsRequest()).models]
    assert names == ["digits", "digits_copy"]
    reply = call(app, "Predict", predict_request("digits_copy", tensor_inputs({"image": digits_rows(2)})))
    assert (reply.model.name, len(reply.classifications)) == ("digits_copy", 2)

    copy = app.repository.get("digits_copy")
    shutil.rmtree(repository / "digits_copy")
    app.repository.poll_once()
    assert served_version(app, "digits_copy") == 1  # gone at one poll is not enough (a volume hiccup)
    app.repository.poll_once()
    with pytest.raises(grpc.RpcError) as error:
        call(app, "GetModel", predict_pb2.GetModelRequest(model="digits_copy"))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert error.value.details() == "model 'digits_copy' not found; available models: 'digits'"
    wait_for(lambda: copy.batcher._closed, 30, "the removed model to be unloaded")


def test_a_poll_that_finds_no_models_changes_nothing(make_app, repository: Path) -> None:
    app = make_app(model_dir=repository)
    shutil.rmtree(repository)  # an unmounted volume
    for _ in range(3):
        app.repository.poll_once()
    reply = call(app, "Predict", predict_request("digits", tensor_inputs({"image": digits_rows(1)})))
    assert (reply.model.name, reply.model.version) == ("digits", 1)

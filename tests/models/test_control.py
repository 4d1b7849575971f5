"""Model control (MODEL_CONTROL_MODE, as Triton's): LoadModel and UnloadModel over serving.v1 gRPC and
the shim, Triton's repository load/unload through its own clients, and what polling leaves alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
import requests

from client.messages import predict_request, tensor_inputs
from inference import open_inference_pb2 as v2_pb2
from inference import open_inference_pb2_grpc as v2_grpc
from server.app import App
from serving.v1 import predict_pb2, predict_pb2_grpc
from tests.conftest import digits_rows
from tests.models.test_reload import add_version
from tests.support import triton
from tests.support.servers import MODEL_DIR, health_status, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    root.mkdir()
    add_version(root, "digits", 1)
    add_version(root, "digits_keras", 1, MODEL_DIR / "digits_keras" / "1")
    return root


def stub(app: App) -> predict_pb2_grpc.PredictServiceStub:
    return predict_pb2_grpc.PredictServiceStub(grpc.insecure_channel(app.address))


def failure(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=30)
    return raised.value


def predict(app: App, model: str) -> predict_pb2.PredictResponse:
    return stub(app).Predict(predict_request(model, tensor_inputs({"image": digits_rows(2)})), timeout=30)


def index(app: App) -> list[tuple[str, str, str, str]]:
    reply = v2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(app.address)).RepositoryIndex(
        v2_pb2.RepositoryIndexRequest(), timeout=30
    )
    return [(m.name, m.version, m.state, m.reason) for m in reply.models]


def test_without_model_control_load_and_unload_are_refused_by_name(make_app) -> None:
    app = make_app()
    for call, request in (
        (stub(app).LoadModel, predict_pb2.LoadModelRequest(model="digits")),
        (stub(app).UnloadModel, predict_pb2.UnloadModelRequest(model="digits")),
    ):
        error = failure(call, request)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error.details().startswith("model control is off (MODEL_CONTROL_MODE=none"), error.details()
    assert predict(app, "digits").model.name == "digits"  # still served


def test_explicit_mode_loads_nothing_until_asked_then_loads_and_unloads(make_app, repository: Path) -> None:
    app = make_app(model_dir=repository, model_control_mode="explicit", grace_period_seconds=0.5)
    assert health_status(app.address) == "SERVING"  # ready with no model, as Triton in explicit mode
    assert list(stub(app).ListModels(predict_pb2.ListModelsRequest(), timeout=30).models) == []
    error = failure(stub(app).Predict, predict_request("digits", tensor_inputs({"image": digits_rows(1)})))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "model 'digits' is not loaded (MODEL_CONTROL_MODE=explicit): load it with LoadModel",
    )
    not_loaded = "not loaded: MODEL_CONTROL_MODE=explicit loads a model when a call asks (LoadModel)"
    assert index(app) == [("digits", "1", "UNAVAILABLE", not_loaded), ("digits_keras", "1", "UNAVAILABLE", not_loaded)]

    loaded = stub(app).LoadModel(predict_pb2.LoadModelRequest(model="digits"), timeout=60)
    assert [(m.name, m.version, list(m.served_versions)) for m in loaded.models] == [("digits", 1, [1])]
    assert predict(app, "digits").model.version == 1
    assert index(app) == [("digits", "1", "READY", ""), ("digits_keras", "1", "UNAVAILABLE", not_loaded)]
    again = stub(app).LoadModel(predict_pb2.LoadModelRequest(model="digits"), timeout=60)  # loaded: nothing to do
    assert [m.version for m in again.models] == [1] and app.repository.get("digits") is app.repository.get("digits")

    unloaded = stub(app).UnloadModel(predict_pb2.UnloadModelRequest(model="digits"), timeout=30)
    assert list(unloaded.unloaded_versions) == [1]
    assert (
        failure(stub(app).Predict, predict_request("digits", tensor_inputs({"image": digits_rows(1)}))).code()
        == grpc.StatusCode.NOT_FOUND
    )
    assert index(app)[0] == ("digits", "1", "UNAVAILABLE", "unloaded by a call (UnloadModel)")
    error = failure(stub(app).UnloadModel, predict_pb2.UnloadModelRequest(model="digits"))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.NOT_FOUND,
        "model 'digits' is not loaded; loaded models: none",
    )


@pytest.mark.parametrize(
    ("model", "code", "message"),
    [
        ("nope", grpc.StatusCode.NOT_FOUND, "model 'nope' not found in "),
        (
            "../digits",
            grpc.StatusCode.INVALID_ARGUMENT,
            "model: '../digits' is not a model name (one folder name of MODEL_DIR)",
        ),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "model: '' is not a model name (one folder name of MODEL_DIR)"),
    ],
)
def test_loading_what_is_not_a_model_names_it(make_app, repository: Path, model, code, message) -> None:
    app = make_app(model_dir=repository, model_control_mode="explicit")
    error = failure(stub(app).LoadModel, predict_pb2.LoadModelRequest(model=model))
    assert error.code() == code and error.details().startswith(message), error.details()


def test_a_version_that_fails_to_load_answers_failed_precondition_and_serves_nothing(
    make_app, repository: Path
) -> None:
    broken = repository / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    app = make_app(model_dir=repository, model_control_mode="explicit")
    error = failure(stub(app).LoadModel, predict_pb2.LoadModelRequest(model="broken"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith("model 'broken': version 1 failed to load: "), error.details()
    assert app.repository.models() == []


def test_startup_models_are_loaded_at_start(make_app, repository: Path) -> None:
    app = make_app(model_dir=repository, model_control_mode="explicit", startup_models="digits_keras")
    assert [m.name for m in app.repository.models()] == ["digits_keras"]


def test_the_shim_serves_load_and_unload(make_app, repository: Path) -> None:
    app = make_app(model_dir=repository, model_control_mode="explicit", grace_period_seconds=0.5)
    base = f"http://{app.http_address}"
    reply = requests.post(f"{base}/v1/models/digits_keras:load", json={}, timeout=60)
    assert reply.status_code == 200, reply.text
    assert [(m["name"], m["version"], m["platform"].split(" ")[0]) for m in reply.json()["models"]] == [
        ("digits_keras", "1", "keras")
    ]
    reply = requests.post(f"{base}/v1/models/digits_keras:unload", json={}, timeout=30)
    assert (reply.status_code, reply.json()) == (200, {"unloadedVersions": ["1"]})
    reply = requests.post(f"{base}/v1/models/digits_keras:unload", json={}, timeout=30)
    assert reply.status_code == 404 and reply.json()["message"].startswith("model 'digits_keras' is not loaded")
    reply = requests.post(f"{base}/v2/repository/models/digits/load", json={"parameters": {"config": "{}"}}, timeout=30)
    assert (reply.status_code, reply.json()) == (
        400,
        {"error": "parameters: 'config' not supported (models load from MODEL_DIR as they are); it takes none"},
    )


def test_tritons_own_clients_load_and_unload(make_app, repository: Path) -> None:
    app = make_app(model_dir=repository, model_control_mode="explicit", grace_period_seconds=0.5)
    seen = triton.run("load-unload", app.address, app.http_address, "digits")
    assert seen == {"grpc": [False, True, False], "http": [False, True, False]}


def test_polling_leaves_a_callers_load_and_unload_alone(make_app, repository: Path) -> None:
    app = make_app(model_dir=repository, model_control_mode="poll", model_poll_seconds=3600, grace_period_seconds=0.5)
    assert [m.name for m in app.repository.models()] == ["digits", "digits_keras"]
    stub(app).UnloadModel(predict_pb2.UnloadModelRequest(model="digits"), timeout=30)
    stub(app).LoadModel(predict_pb2.LoadModelRequest(model="digits_keras"), timeout=60)
    shutil.rmtree(repository / "digits_keras")  # gone from the directory, but a caller loaded it
    for _ in range(3):  # a model absent twice in a row is unloaded, unless a caller loaded it
        app.repository.poll_once()
    assert [m.name for m in app.repository.models()] == ["digits_keras"]  # and digits is not loaded again
    stub(app).LoadModel(predict_pb2.LoadModelRequest(model="digits"), timeout=60)
    app.repository.poll_once()
    assert [m.name for m in app.repository.models()] == ["digits", "digits_keras"]


def _rss_mib() -> float:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


@pytest.mark.slow
@pytest.mark.parametrize("model", ["digits", "digits_keras"])
def test_unloading_gives_the_memory_back(model: str) -> None:
    """20 loads and unloads of a model grow the resident size by under 8 MiB (measured: 3.2 MiB for
    digits, 2.5 for digits_keras; 16 MiB before unloads collected TensorFlow's cycles), where keeping
    the 20 loads would take 56 and 22 MiB (a kept load costs 2.8 and 1.1 MiB here)."""
    from server.batching import BatchingConfig
    from server.models.repository import ModelRepository

    repository = ModelRepository(MODEL_DIR, "/CPU:0", BatchingConfig(), retire_seconds=0, control="explicit")
    repository.load_all()
    try:
        repository.load(model)
        repository.unload(model)
        before = _rss_mib()
        for _ in range(20):
            repository.load(model)
            repository.unload(model)
        wait_for(lambda: not repository._retiring, 30, "the unloaded versions to be closed (on timers)")
        assert _rss_mib() - before < 8
    finally:
        repository.close()


def test_the_client_library_and_cli_load_and_unload(make_app, repository: Path, capsys) -> None:
    from client import Client
    from client.cli import main

    app = make_app(model_dir=repository, model_control_mode="explicit", grace_period_seconds=0.5)
    assert main(["--target", app.address, "load", "digits"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["digits", "1"]
    with Client(app.address, timeout=60) as client:
        assert [(m.name, m.version) for m in client.load_model("digits_keras")] == [("digits_keras", 1)]
        assert client.unload_model("digits_keras") == [1]
    assert main(["--target", app.address, "unload", "digits"]) == 0
    assert capsys.readouterr().out == "unloaded digits version 1\n"
    assert main(["--target", app.address, "unload", "digits"]) == 1
    assert capsys.readouterr().err.startswith("error: NOT_FOUND: model 'digits' is not loaded")


def test_a_load_serves_every_version_it_asks_for_or_none(make_app, repository: Path) -> None:
    add_version(repository, "digits", 3)
    broken = repository / "digits" / "2"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    (repository / "digits" / "serving.json").write_text('{"version_policy": {"latest": 2}}')
    app = make_app(model_dir=repository, model_control_mode="explicit", grace_period_seconds=0.5)
    error = failure(stub(app).LoadModel, predict_pb2.LoadModelRequest(model="digits"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith("model 'digits': version 2 failed to load: "), error.details()
    assert app.repository.models() == []  # version 3 loaded first, and was taken back
    error = failure(stub(app).UnloadModel, predict_pb2.UnloadModelRequest(model=""))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

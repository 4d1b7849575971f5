"""TensorFlow Serving's REST API (TFSERVING_REST_ADDRESS) against the real App and demo models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests

from serving.v1 import predict_pb2, predict_pb2_grpc
from tests.conftest import digits_rows
from tests.support.servers import MODEL_DIR, wait_for
from wire import codec

pytestmark = pytest.mark.integration

KEY = "tfs-test-key"


class Served:
    def __init__(self, app: object, root: Path) -> None:
        self.app = app
        self.url = f"http://{app.tfserving.address}"  # type: ignore[attr-defined]
        self.grpc = app.address  # type: ignore[attr-defined]
        self.access_log = root / "access.log"


@pytest.fixture(scope="module")
def tfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from server.app import App
    from server.config import Settings

    root = tmp_path_factory.mktemp("tfserving")
    settings = Settings(
        _env_file=None,
        grpc_server_address="127.0.0.1:0",
        http_server_address="",
        metrics_address="",
        tfserving_rest_address="127.0.0.1:0",
        model_dir=MODEL_DIR,
        upload_dir=root / "uploads",
        access_log_path=str(root / "access.log"),
        api_keys=f"tfs:{KEY}",
    )
    app = App(settings)
    try:
        app.start()
        yield Served(app, root)
    finally:
        app.stop(grace=1)


def post(tfs: Served, path: str, body: object, key: str | None = KEY) -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(f"{tfs.url}{path}", data=data, headers=headers, timeout=30)


def get(tfs: Served, path: str, key: str | None = KEY) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.get(f"{tfs.url}{path}", headers=headers, timeout=30)


def grpc_outputs(tfs: Served, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same rows through gRPC Predict (file outputs inline, as tensors)."""
    request = predict_pb2.PredictRequest(model=model, inline_files=True)
    for name, array in inputs.items():
        request.inputs[name].tensor.CopyFrom(codec.from_numpy(array, raw=True))
    with grpc.insecure_channel(tfs.grpc) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        response = stub.Predict(request, metadata=[("authorization", f"Bearer {KEY}")], timeout=30)
    return {name: codec.to_numpy(tensor, name) for name, tensor in response.outputs.items()}


def test_row_format_answers_the_same_numbers_as_grpc(tfs: Served, digits_reference) -> None:
    x = digits_rows(5, seed=11)
    want = grpc_outputs(tfs, "digits", {"image": x})["probabilities"]

    plain = post(tfs, "/v1/models/digits:predict", {"instances": x.tolist()})
    named = post(
        tfs,
        "/v1/models/digits/versions/1:predict",
        {"signature_name": "serving_default", "instances": [{"image": row} for row in x.tolist()]},
    )

    for reply in (plain, named):
        assert reply.status_code == 200, reply.text
        assert list(reply.json()) == ["predictions"]
        got = np.asarray(reply.json()["predictions"], dtype=np.float32)
        assert got.shape == (5, 10)
        np.testing.assert_array_equal(got, want)  # float32 values survive the JSON round trip exactly
    np.testing.assert_allclose(want, digits_reference(x), rtol=1e-5, atol=1e-6)


def test_columnar_format_answers_outputs(tfs: Served) -> None:
    x = digits_rows(3, seed=12)
    want = grpc_outputs(tfs, "digits", {"image": x})["probabilities"]
    for body in ({"inputs": x.tolist()}, {"inputs": {"image": x.tolist()}}):
        reply = post(tfs, "/v1/models/digits:predict", body)
        assert reply.status_code == 200, reply.text
        assert list(reply.json()) == ["outputs"]
        np.testing.assert_array_equal(np.asarray(reply.json()["outputs"], dtype=np.float32), want)


def test_integer_inputs_and_image_outputs(tfs: Served) -> None:
    want = grpc_outputs(tfs, "digits_decoder", {"digit": np.array([3, 7], np.int32)})["image"]
    reply = post(tfs, "/v1/models/digits_decoder:predict", {"instances": [3, 7]})
    assert reply.status_code == 200, reply.text
    got = np.asarray(reply.json()["predictions"], dtype=np.float32)
    assert got.shape == (2, 32, 32, 1)
    np.testing.assert_array_equal(got, want)


def test_model_status_and_metadata(tfs: Served) -> None:
    for path in ("/v1/models/digits", "/v1/models/digits/versions/1"):
        reply = get(tfs, path)
        assert reply.status_code == 200, reply.text
        assert reply.json() == {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        }

    def dims(*sizes: int) -> dict:
        return {"dim": [{"size": str(s), "name": ""} for s in sizes], "unknown_rank": False}

    reply = get(tfs, "/v1/models/digits/metadata")
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "model_spec": {"name": "digits", "signature_name": "", "version": "1"},
        "metadata": {
            "signature_def": {
                "signature_def": {
                    "serving_default": {
                        "inputs": {"image": {"dtype": "DT_FLOAT", "tensor_shape": dims(-1, 8, 8, 1)}},
                        "outputs": {"probabilities": {"dtype": "DT_FLOAT", "tensor_shape": dims(-1, 10)}},
                        "method_name": "tensorflow/serving/predict",
                    }
                }
            }
        },
    }


ROW = np.zeros((8, 8, 1)).tolist()
ERRORS = [
    # (method, path, body, HTTP status, the whole error message)
    (
        "POST",
        "/v1/models/nope:predict",
        {"instances": [ROW]},
        404,
        "model 'nope' not found; available models: 'digits', 'digits_decoder', 'digits_keras'",
    ),
    ("GET", "/v1/models/digits/versions/4", None, 404, "version 4 of model 'digits' is not served; served version: 1"),
    (
        "POST",
        "/v1/models/digits:predict",
        {"instances": [[1, 2]]},
        400,
        "input 'image': shape [1, 2] does not match the model's FLOAT32 [-1, 8, 8, 1]",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {"instances": [[["a"]]]},
        400,
        "input 'image': expected numbers for FLOAT32 [-1, 8, 8, 1]",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {"instances": [ROW, ROW[:7]]},
        400,
        "input 'image': the values do not form a regular array (rows of different lengths, or nested too deeply); "
        "expected FLOAT32 [-1, 8, 8, 1]",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {"instances": [ROW], "inputs": [ROW]},
        400,
        'request body: give exactly one of "instances" (rows) and "inputs" (columns)',
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {},
        400,
        'request body: give exactly one of "instances" (rows) and "inputs" (columns)',
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {"instances": []},
        400,
        "instances: expected a non-empty list with one entry per row",
    ),
    ("POST", "/v1/models/digits:predict", "{not json", 400, None),
    (
        "POST",
        "/v1/models/digits:predict",
        [ROW],
        400,
        'request body: expected a JSON object with "instances" or "inputs"',
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {"instances": [ROW], "extra": 1},
        400,
        "request body: unknown field 'extra'; expected signature_name, instances or inputs",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {"signature_name": "other", "instances": [ROW]},
        400,
        "signature_name: model 'digits' serves signature 'serving_default', not 'other'",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {"instances": [{"img": ROW}]},
        400,
        "input 'img': model 'digits' has no such input; it takes 'image'",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {"instances": [{"image": ROW}, ROW]},
        400,
        "instances[1]: expected an object with the same inputs as instances[0] (image)",
    ),
    (
        "POST",
        "/v1/models/digits_decoder:predict",
        {"instances": [1.5]},
        400,
        "input 'digit': expected integers for INT32 [-1]",
    ),
    (
        "POST",
        "/v1/models/digits_decoder:predict",
        {"instances": [2**70]},
        400,
        "input 'digit': a value is outside the range of INT32 [-1]",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {"instances": (np.full((1, 8, 8, 1), 1e300)).tolist()},
        400,
        "input 'image': a value is outside the range of FLOAT32 [-1, 8, 8, 1]",
    ),
    (
        "POST",
        "/v1/models/digits_decoder:predict",
        {"instances": [2**40]},
        400,
        "input 'digit': a value is outside the range of INT32 [-1]",
    ),
    ("POST", "/v1/models/digits:classify", {"examples": []}, 501, "classify is not supported; use :predict"),
    (
        "GET",
        "/v1/models/digits/labels/stable",
        None,
        404,
        "model 'digits' has no version label 'stable'; its labels: none (set version_labels in its serving.json)",
    ),
    (
        "GET",
        "/v1/models/digits:predict",
        None,
        405,
        "method GET is not allowed for /v1/models/digits:predict; use POST",
    ),
    ("POST", "/v1/models/digits", {}, 405, "method POST is not allowed for /v1/models/digits; use GET"),
    (
        "GET",
        "/v2/models/digits",
        None,
        404,
        "no such path: /v2/models/digits; the TensorFlow Serving API is under /v1/models/",
    ),
    (
        "GET",
        "/v1/models/digits/versions/0",
        None,
        404,
        "no such path: /v1/models/digits/versions/0; the TensorFlow Serving API is under /v1/models/",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        '{"instances": ' + "[" * 100_000 + "]" * 100_000 + "}",
        400,
        "request body: nested too deeply",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {"instances": json.loads("[" * 70 + "1" + "]" * 70)},
        400,
        "input 'image': the values do not form a regular array (rows of different lengths, or nested too deeply); "
        "expected FLOAT32 [-1, 8, 8, 1]",
    ),
    (
        "POST",
        "/v1/models/digits:predict",
        {"instances": [[]]},
        400,
        "input 'image': shape [1, 0] does not match the model's FLOAT32 [-1, 8, 8, 1]",
    ),
]


@pytest.mark.parametrize("method,path,body,status,message", ERRORS, ids=[f"{e[3]}-{i}" for i, e in enumerate(ERRORS)])
def test_errors_name_what_is_wrong(tfs: Served, method, path, body, status, message) -> None:
    reply = post(tfs, path, body) if method == "POST" else get(tfs, path)
    assert reply.status_code == status, reply.text
    assert list(reply.json()) == ["error"]
    if status == 405:  # RFC 9110: the methods the path takes
        assert reply.headers["Allow"] == message.rsplit("use ", 1)[1]
    if message is None:
        assert reply.json()["error"].startswith("request body: not JSON")
    else:
        assert reply.json()["error"] == message


def test_api_keys_apply_before_anything_else(tfs: Served) -> None:
    for key in (None, "wrong"):
        for reply in (
            post(tfs, "/v1/models/digits:predict", {"instances": [ROW]}, key=key),
            post(tfs, "/v1/models/nope:predict", {"instances": [ROW]}, key=key),
            post(tfs, "/v1/models/digits:predict", "{not json", key=key),
            post(tfs, "/v1/models/digits:predict", {"instances": [[1, 2]]}, key=key),
            get(tfs, "/v1/models/nope/metadata", key=key),
            get(tfs, "/v1/models/digits/labels/beta", key=key),  # labels are resolved after the key
            post(tfs, "/v1/models/nope/labels/beta:predict", {"instances": [ROW]}, key=key),
        ):
            assert reply.status_code == 401, reply.text
            assert reply.headers["WWW-Authenticate"] == "Bearer"
            assert list(reply.json()) == ["error"]


def test_calls_are_logged_and_the_server_keeps_serving(tfs: Served) -> None:
    reply = requests.post(
        f"{tfs.url}/v1/models/digits:predict",
        data=json.dumps({"instances": [ROW]}),
        headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": "tfs-req-1"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text

    def mine() -> list[dict]:
        lines = [json.loads(line) for line in tfs.access_log.read_text().splitlines()]
        return [line for line in lines if line.get("request_id") == "tfs-req-1"]

    wait_for(lambda: len(mine()) >= 1, 10, "the access-log line")
    route = "POST /v1/models/{model}:predict (TF Serving)"
    assert [(m["method"], m["status"], m["key"], m["transport"], m["route"], m["model"]) for m in mine()] == [
        ("/serving.v1.TFServingRest/Predict", "OK", "tfs", "http", route, "digits")
    ]
    assert get(tfs, "/v1/models/digits").status_code == 200


def test_rate_limited_calls_answer_429_with_retry_after(make_app) -> None:
    app = make_app(
        tfserving_rest_address="127.0.0.1:0",
        http_server_address="",
        api_keys=f"tfs:{KEY}",
        rate_limit_per_second=0.5,
        rate_limit_burst=1,
    )
    url = f"http://{app.tfserving.address}/v1/models/digits:predict"
    headers = {"Authorization": f"Bearer {KEY}"}
    first = requests.post(url, data=json.dumps({"instances": [ROW]}), headers=headers, timeout=30)
    second = requests.post(url, data=json.dumps({"instances": [ROW]}), headers=headers, timeout=30)
    assert first.status_code == 200, first.text  # one call, one token: the body is parsed inside it
    assert second.status_code == 429, second.text
    assert list(second.json()) == ["error"]
    assert float(second.headers["Retry-After"]) > 0


def test_row_answers_need_outputs_with_one_batch_dimension() -> None:
    from types import SimpleNamespace

    from server.errors import InvalidArgument
    from server.protocols.tfserving.rest import predict_json

    model: Any = SimpleNamespace(outputs={"scores": None, "ids": None})  # what predict_json reads of a model
    both = {"scores": np.array([[0.5, 0.25]], np.float32), "ids": np.array([b"a", b"\xff"], dtype=object)}
    assert predict_json(model, {"scores": both["scores"], "ids": both["ids"][:1]}, columnar=False) == {
        "predictions": [{"scores": [0.5, 0.25], "ids": "a"}]
    }
    assert predict_json(model, both, columnar=True) == {
        "outputs": {"scores": [[0.5, 0.25]], "ids": ["a", {"b64": "/w=="}]}
    }
    with pytest.raises(InvalidArgument, match="do not share a batch dimension"):
        predict_json(model, both, columnar=False)


def test_string_inputs_take_text_and_b64() -> None:
    from server.errors import InvalidArgument
    from server.models.backend import TensorInfo
    from server.protocols.tfserving.rest import input_array

    spec = TensorInfo("text", np.dtype(object), (-1,))
    array = input_array("text", ["hi", {"b64": "/w=="}], spec)
    assert array.dtype == object and array.tolist() == [b"hi", b"\xff"]
    with pytest.raises(InvalidArgument, match="input 'text': a b64 value is not valid base64"):
        input_array("text", [{"b64": "%%"}], spec)
    with pytest.raises(InvalidArgument, match="input 'text': expected strings"):
        input_array("text", [1], spec)

"""The Open Inference Protocol (KServe V2, Triton): gRPC on the gRPC port, REST under /v2 on the shim.

Against the real App and demo models; Triton's own clients run in a subprocess.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import requests
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from inference import open_inference_pb2 as pb
from inference import open_inference_pb2_grpc
from serving.v1 import predict_pb2, predict_pb2_grpc
from tests.conftest import digits_rows
from tests.support import triton
from tests.support.servers import MODEL_DIR, ROOT, wait_for
from wire import codec

pytestmark = pytest.mark.integration

KEY = "v2-test-key"
AUTH = [("authorization", f"Bearer {KEY}")]


def own_api(channel: grpc.Channel, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same rows through serving.v1.PredictService/Predict."""
    request = predict_pb2.PredictRequest(model=model, inline_files=True)
    for name, array in inputs.items():
        request.inputs[name].tensor.CopyFrom(codec.from_numpy(array, raw=True))
    response = predict_pb2_grpc.PredictServiceStub(channel).Predict(request, timeout=30, metadata=AUTH)
    return {name: codec.to_numpy(t, name) for name, t in response.outputs.items()}


class Served:
    def __init__(self, app: object, root: Path) -> None:
        self.app = app
        self.url = f"http://{app.http_address}"  # type: ignore[attr-defined]
        self.target = app.address  # type: ignore[attr-defined]
        self.access_log = root / "access.log"
        self.channel = grpc.insecure_channel(self.target)
        self.stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    def own_api(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return own_api(self.channel, model, inputs)

    def post(self, path: str, body: object, key: str | None = KEY, headers: dict[str, str] | None = None):
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        sent = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.post(f"{self.url}{path}", data=data, headers={**sent, **(headers or {})}, timeout=30)

    def get(self, path: str, key: str | None = KEY):
        return requests.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)


@pytest.fixture(scope="module")
def v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from server.app import App
    from server.config import Settings

    root = tmp_path_factory.mktemp("inference-v2")
    settings = Settings(
        _env_file=None,
        grpc_server_address="127.0.0.1:0",
        http_server_address="127.0.0.1:0",
        metrics_address="",
        model_dir=MODEL_DIR,
        upload_dir=root / "uploads",
        access_log_path=str(root / "access.log"),
        api_keys=f"v2:{KEY}",
        max_http_body_bytes=1_000_000,
    )
    app = App(settings)
    try:
        app.start()
        served = Served(app, root)
        yield served
        served.channel.close()
    finally:
        app.stop(grace=1)


def infer_request(model: str, rows: np.ndarray, *, raw: bool = True, **fields: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, **fields)
    tensor = request.inputs.add(name="image", datatype="FP32", shape=rows.shape)
    if raw:
        request.raw_input_contents.append(rows.tobytes())
    else:
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    return request


def raw_output(response: pb.ModelInferResponse, index: int = 0) -> np.ndarray:
    output = response.outputs[index]
    assert output.datatype == "FP32"
    return np.frombuffer(response.raw_output_contents[index], "<f4").reshape(output.shape)


# -- gRPC ------------------------------------------------------------------------------------


def test_grpc_infer_answers_what_the_own_api_answers(v2: Served) -> None:
    rows = digits_rows(4, seed=41)
    want = v2.own_api("digits", {"image": rows})["probabilities"]
    for raw in (True, False):
        response = v2.stub.ModelInfer(infer_request("digits", rows, raw=raw, id=f"v2-{raw}"), timeout=30, metadata=AUTH)
        assert (response.model_name, response.model_version, response.id) == ("digits", "1", f"v2-{raw}")
        assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("probabilities", "FP32", [4, 10])]
        np.testing.assert_array_equal(raw_output(response), want)

    digits = np.array([3, 7], np.int32)
    request = pb.ModelInferRequest(model_name="digits_decoder", model_version="1")
    request.inputs.add(name="digit", datatype="INT32", shape=[2]).contents.int_contents.extend([3, 7])
    response = v2.stub.ModelInfer(request, timeout=30, metadata=AUTH)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("image", "FP32", [2, 32, 32, 1])]
    np.testing.assert_array_equal(raw_output(response), v2.own_api("digits_decoder", {"digit": digits})["image"])


def test_grpc_classification_parameter_answers_top_classes(v2: Served) -> None:
    rows = digits_rows(2, seed=42)
    scores = v2.own_api("digits", {"image": rows})["probabilities"]
    request = infer_request("digits", rows)
    request.outputs.add(name="probabilities").parameters["classification"].int64_param = 3
    response = v2.stub.ModelInfer(request, timeout=30, metadata=AUTH)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("probabilities", "BYTES", [2, 3])]
    data = response.raw_output_contents[0]
    values, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        values.append(data[offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    assert len(values) == 6
    for row in range(2):
        found = [re.fullmatch(r"(\d\.\d{6}):(\d):(\d)", value) for value in values[3 * row : 3 * row + 3]]
        assert all(found), values  # Triton's "score:index:label", the score with six decimals
        indices = [int(match[2]) for match in found]
        assert [match[3] for match in found] == [str(i) for i in indices]  # the labels file says "0".."9"
        assert indices == sorted(range(10), key=lambda i: -scores[row, i])[:3]
        np.testing.assert_allclose([float(match[1]) for match in found], scores[row, indices], atol=5e-7)


def test_grpc_stream_answers_each_message_by_id(v2: Served) -> None:
    rows = [digits_rows(n, seed=50 + n) for n in (1, 3, 2)]
    good = [infer_request("digits", r, id=f"s{i}") for i, r in enumerate(rows)]
    unknown = infer_request("digits", rows[0], id="bad-model", model_version="1")
    unknown.model_name = "nope"
    wrong = infer_request("digits", rows[0], id="bad-type")
    wrong.inputs[0].datatype = "FP64"
    messages = [good[0], unknown, good[1], wrong, good[2]]
    answers = list(v2.stub.ModelStreamInfer(iter(messages), timeout=30, metadata=AUTH))
    by_id = {answer.infer_response.id: answer for answer in answers}
    assert len(answers) == 5 and sorted(by_id) == sorted(m.id for m in messages)
    for index, x in enumerate(rows):
        answer = by_id[f"s{index}"]
        assert (answer.error_message, answer.infer_response.model_name, answer.infer_response.model_version) == (
            "",
            "digits",
            "1",
        )
        # Batched with the stream's other messages: equal up to float32 rounding of other batch sizes.
        want = v2.own_api("digits", {"image": x})["probabilities"]
        np.testing.assert_allclose(raw_output(answer.infer_response), want, rtol=1e-5, atol=1e-6)
    assert by_id["bad-model"].error_message.startswith("model 'nope' not found")
    assert (by_id["bad-model"].infer_response.model_name, by_id["bad-model"].infer_response.model_version) == (
        "nope",
        "1",
    )
    assert by_id["bad-type"].error_message == (
        "input 'image': datatype FP64 does not match model 'digits', which expects FP32"
    )


def test_grpc_probes_and_metadata(v2: Served) -> None:
    assert v2.stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live is True  # no key needed
    assert v2.stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready is True
    assert v2.stub.ModelReady(pb.ModelReadyRequest(name="digits"), timeout=10, metadata=AUTH).ready is True
    assert (
        v2.stub.ModelReady(pb.ModelReadyRequest(name="digits", version="2"), timeout=10, metadata=AUTH).ready is False
    )
    assert v2.stub.ModelReady(pb.ModelReadyRequest(name="nope"), timeout=10, metadata=AUTH).ready is False
    server = v2.stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=10, metadata=AUTH)
    assert (server.name, list(server.extensions)) == (
        "tf-grpc-serving",
        ["classification", "binary_tensor_data", "model_repository", "model_configuration", "statistics"],
    )
    meta = v2.stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=10, metadata=AUTH)
    assert (meta.name, list(meta.versions), meta.platform) == ("digits", ["1"], "tensorflow_savedmodel")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "FP32", [-1, 8, 8, 1])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("probabilities", "FP32", [-1, 10])]


def test_grpc_needs_a_key_except_for_probes(v2: Served) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        v2.stub.ModelInfer(infer_request("digits", digits_rows(1)), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as raised:
        v2.stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_repository_index_lists_every_version_found_and_its_state(make_app, tmp_path: Path) -> None:
    models = tmp_path / "models"
    for version in (1, 2):  # the default policy serves the newest only
        shutil.copytree(MODEL_DIR / "digits" / "1", models / "digits" / str(version))
    (models / "digits" / "²").mkdir()  # digits, but not a version number: skipped
    (models / "digits" / "²" / "saved_model.pb").write_bytes(b"")
    app = make_app(model_dir=models)
    with grpc.insecure_channel(app.address) as channel:
        stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
        assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
            ("digits", "1", "UNAVAILABLE", "not served: the model's version_policy does not ask for it"),
            ("digits", "2", "READY", ""),
        ]
        ready = stub.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="models", ready=True), timeout=10)
        assert [(m.name, m.version, m.state) for m in ready.models] == [("digits", "2", "READY")]
        with pytest.raises(grpc.RpcError) as raised:
            stub.RepositoryIndex(pb.RepositoryIndexRequest(repository_name="other"), timeout=10)
        assert (raised.value.code(), raised.value.details()) == (
            grpc.StatusCode.NOT_FOUND,
            "repository_name: no repository 'other'; the one repository is 'models' (MODEL_DIR)",
        )
    url = f"http://{app.http_address}/v2/repository/index"
    assert requests.post(url, json={"ready": True}, timeout=10).json() == [
        {"name": "digits", "version": "2", "state": "READY", "reason": ""}
    ]
    assert len(requests.post(url, timeout=10).json()) == 2  # no body: everything
    bad = requests.post(url, json={"ready": "yes"}, timeout=10)
    assert (bad.status_code, bad.json()["error"]) == (
        400,
        'request body: "repository_name" is a string and "ready" true or false',
    )
    assert requests.get(url, timeout=10).status_code == 405

    # A newer version copied in later (MODEL_POLL_SECONDS=0), then a broken version_policy.
    shutil.copytree(MODEL_DIR / "digits" / "1", models / "digits" / "3")
    assert requests.post(url, json={"ready": None}, timeout=10).json()[-1] == {
        "name": "digits",
        "version": "3",
        "state": "UNAVAILABLE",
        "reason": "found after start-up; with MODEL_POLL_SECONDS=0 new versions are not loaded",
    }
    (models / "digits" / "serving.json").write_text(json.dumps({"version_policy": {"latest": 0}}))
    reasons = {entry["version"]: entry["reason"] for entry in requests.post(url, timeout=10).json()}
    assert reasons["2"] == ""  # still served
    assert reasons["3"].startswith("not served: ") and "version_policy" in reasons["3"], reasons


def test_version_labels_name_versions_in_every_api(make_app, tmp_path: Path) -> None:
    models = tmp_path / "models"
    for version in (1, 2):
        shutil.copytree(MODEL_DIR / "digits" / "1", models / "digits" / str(version))
    config = {"version_policy": "all", "version_labels": {"stable": 1, "canary": 2}}
    (models / "digits" / "serving.json").write_text(json.dumps(config))
    app = make_app(model_dir=models)
    x = digits_rows(1, seed=49)
    with grpc.insecure_channel(app.address) as channel:
        v2_stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        own = predict_pb2_grpc.PredictServiceStub(channel)
        for label, version in (("stable", 1), ("canary", 2)):
            answer = v2_stub.ModelInfer(infer_request("digits", x, model_version=label), timeout=30)
            assert (answer.model_name, answer.model_version) == ("digits", str(version))
            assert v2_stub.ModelReady(pb.ModelReadyRequest(name="digits", version=label), timeout=30).ready
            request = predict_pb2.PredictRequest(model="digits", version_label=label)
            request.inputs["image"].tensor.CopyFrom(codec.from_numpy(x))
            assert own.Predict(request, timeout=30).model.version == version
            got = own.GetModel(predict_pb2.GetModelRequest(model="digits", version_label=label), timeout=30)
            assert got.model.version == version
        assert not v2_stub.ModelReady(pb.ModelReadyRequest(name="digits", version="beta"), timeout=30).ready
        with pytest.raises(grpc.RpcError) as raised:
            own.GetModel(predict_pb2.GetModelRequest(model="digits", version=1, version_label="canary"), timeout=30)
        assert (raised.value.code(), raised.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "give a version (1) or a version label ('canary'), not both",
        )
    base = f"http://{app.http_address}"
    body = {"inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": x.ravel().tolist()}]}
    assert (
        requests.post(f"{base}/v2/models/digits/versions/canary/infer", json=body, timeout=30).json()["model_version"]
        == "2"
    )
    assert (
        requests.post(f"{base}/v2/models/digits/infer", json={**body, "model_version": "stable"}, timeout=30).json()[
            "model_version"
        ]
        == "1"
    )
    assert requests.get(f"{base}/v1/models/digits?versionLabel=canary", timeout=30).json()["model"]["version"] == "2"

    from client import Client  # the client library and CLI take a label where they take a version

    with Client(app.address, timeout=30) as client:
        assert client.predict("digits", {"image": x}, version="canary").version == 2
        assert client.get_model("digits", "stable").version == 1
        assert [r.result.version for r in client.stream_predict("digits", [{"image": x}], version="canary")] == [2]
    cli = subprocess.run(
        [sys.executable, "-m", "client", "--target", app.address, "model", "digits", "--version", "canary"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0 and json.loads(cli.stdout)["version"] == "2", cli.stderr


def test_reflection_lists_the_service(v2: Served) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(v2.channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)  # type: ignore[operator]  # types-grpcio-reflection types this method as binascii.Incomplete
    names = [s.name for reply in replies for s in reply.list_services_response.service]
    assert "inference.GRPCInferenceService" in names


def _bad(edit) -> pb.ModelInferRequest:
    request = infer_request("digits", digits_rows(1))
    edit(request)
    return request


def _contents(request: pb.ModelInferRequest) -> None:
    del request.raw_input_contents[:]
    request.inputs[0].contents.fp32_contents.extend([0.5] * 64)


def _wrong_field(request: pb.ModelInferRequest) -> None:
    del request.raw_input_contents[:]
    request.inputs[0].contents.fp64_contents.extend([0.5] * 64)


def _short_contents(request: pb.ModelInferRequest) -> None:
    del request.raw_input_contents[:]
    request.inputs[0].contents.fp32_contents.extend([0.5] * 63)


def _both(request: pb.ModelInferRequest) -> None:
    request.inputs[0].contents.fp32_contents.extend([0.5] * 64)


def _second_input(request: pb.ModelInferRequest) -> None:
    request.inputs.add(name="image", datatype="FP32", shape=[1, 8, 8, 1])
    request.raw_input_contents.append(bytes(256))


def _text_classification(request: pb.ModelInferRequest) -> None:
    request.outputs.add(name="probabilities").parameters["classification"].string_param = "2"


GRPC_ERRORS = [
    (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    (lambda r: setattr(r, "model_name", ""), grpc.StatusCode.INVALID_ARGUMENT, "model_name: required"),
    (
        lambda r: setattr(r, "model_version", "one"),
        grpc.StatusCode.NOT_FOUND,
        "model 'digits' has no version label 'one'; its labels: none (set version_labels in its serving.json)",
    ),
    (
        lambda r: setattr(r, "model_version", "1.0"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model_version: expected a version number such as '1' or a version label such as 'stable', got '1.0'",
    ),
    (
        lambda r: setattr(r, "model_version", "9"),
        grpc.StatusCode.NOT_FOUND,
        "version 9 of model 'digits' is not served",
    ),
    (
        lambda r: setattr(r.inputs[0], "datatype", "FP64"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': datatype FP64 does not match model 'digits', which expects FP32",
    ),
    (
        lambda r: setattr(r.inputs[0], "datatype", "FLOAT"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': datatype FLOAT does not match model 'digits', which expects FP32",
    ),
    (
        lambda r: setattr(r.inputs[0], "name", "pixels"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs: unknown input 'pixels'; model 'digits' takes 'image'",
    ),
    (
        lambda r: r.inputs[0].shape.__setitem__(0, 2),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': raw contents hold 256 bytes but shape [2, 8, 8, 1] of FP32 needs 512",
    ),
    (
        lambda r: r.inputs[0].shape.__setitem__(0, -1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': shape [-1, 8, 8, 1] has a negative dimension",
    ),
    (
        lambda r: r.raw_input_contents.__setitem__(0, bytes(255)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': raw contents hold 255 bytes but shape [1, 8, 8, 1] of FP32 needs 256",
    ),
    (
        lambda r: (r.inputs[0].shape.__delitem__(slice(None)), r.inputs[0].shape.extend([1, 64])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': shape [1, 64] does not match the model's FLOAT32 [-1, 8, 8, 1]",
    ),
    (
        lambda r: r.raw_input_contents.append(b"x"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents: 2 entries for 1 inputs; give one per input, in order",
    ),
    (_both, grpc.StatusCode.INVALID_ARGUMENT, "input 'image': set raw_input_contents or contents, not both"),
    (
        _wrong_field,
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': FP32 values go in contents.fp32_contents, not contents.fp64_contents",
    ),
    (
        _short_contents,
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'image': contents.fp32_contents holds 63 values but shape [1, 8, 8, 1] needs 64",
    ),
    (_second_input, grpc.StatusCode.INVALID_ARGUMENT, "input 'image': given twice"),
    (
        lambda r: (r.inputs.pop(), r.raw_input_contents.pop()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "inputs: none given; model 'digits' takes 'image' (FP32 [-1, 8, 8, 1])",
    ),
    (
        lambda r: r.outputs.add(name="logits"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "outputs: unknown output 'logits'; model 'digits' returns 'probabilities'",
    ),
    (
        _text_classification,
        grpc.StatusCode.INVALID_ARGUMENT,
        "output 'probabilities': the classification parameter must be an integer",
    ),
]


@pytest.mark.parametrize("edit, code, message", GRPC_ERRORS)
def test_grpc_errors_name_what_is_wrong(v2: Served, edit, code, message) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        v2.stub.ModelInfer(_bad(edit), timeout=30, metadata=AUTH)
    assert raised.value.code() == code
    assert raised.value.details().startswith(message), raised.value.details()


def test_grpc_contents_must_be_the_datatypes_field(v2: Served) -> None:
    request = pb.ModelInferRequest(model_name="digits_decoder")
    tensor = request.inputs.add(name="digit", datatype="INT32", shape=[1])
    tensor.contents.int64_contents.append(2**40)
    with pytest.raises(grpc.RpcError) as raised:
        v2.stub.ModelInfer(request, timeout=30, metadata=AUTH)
    assert (
        raised.value.details() == "input 'digit': INT32 values go in contents.int_contents, not contents.int64_contents"
    )


# -- REST ------------------------------------------------------------------------------------


def test_rest_probes_and_metadata(v2: Served) -> None:
    assert (v2.get("/v2/health/live", key=None).status_code, v2.get("/v2/health/live", key=None).json()) == (
        200,
        {"live": True},
    )
    assert v2.get("/v2/health/ready", key=None).json() == {"ready": True}
    assert v2.get("/v2").json() == {
        "name": "tf-grpc-serving",
        "version": metadata.version("tf-grpc-serving"),
        "extensions": ["classification", "binary_tensor_data", "model_repository", "model_configuration", "statistics"],
    }
    assert v2.get("/v2/models/digits").json() == {
        "name": "digits",
        "versions": ["1"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert v2.get("/v2/models/digits/versions/1").json()["name"] == "digits"
    ready = v2.get("/v2/models/digits/versions/1/ready")
    assert (ready.status_code, ready.json()) == (200, {"name": "digits", "ready": True})
    unknown = v2.get("/v2/models/nope/ready")
    assert (unknown.status_code, unknown.json()) == (400, {"name": "nope", "ready": False})


def test_rest_infer_json_nested_and_flat_data(v2: Served) -> None:
    rows = digits_rows(3, seed=43)
    want = v2.own_api("digits", {"image": rows})["probabilities"]
    for data in (rows.tolist(), rows.ravel().tolist()):
        body = {"id": "rest-1", "inputs": [{"name": "image", "shape": [3, 8, 8, 1], "datatype": "FP32", "data": data}]}
        response = v2.post("/v2/models/digits/infer", body)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert {k: answer[k] for k in ("model_name", "model_version", "id")} == {
            "model_name": "digits",
            "model_version": "1",
            "id": "rest-1",
        }
        (output,) = answer["outputs"]
        assert (output["name"], output["datatype"], output["shape"]) == ("probabilities", "FP32", [3, 10])
        np.testing.assert_array_equal(np.asarray(output["data"], np.float32).reshape(3, 10), want)


def test_rest_infer_binary_tensor_data(v2: Served) -> None:
    rows = digits_rows(2, seed=44)
    want = v2.own_api("digits", {"image": rows})["probabilities"]
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2, 8, 8, 1],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": rows.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()
    response = v2.post(
        "/v2/models/digits/versions/1/infer",
        header + rows.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/octet-stream"
    length = int(response.headers["Inference-Header-Content-Length"])
    answer = json.loads(response.content[:length])
    assert answer["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [2, 10], "parameters": {"binary_data_size": 80}}
    ]
    np.testing.assert_array_equal(np.frombuffer(response.content[length:], "<f4").reshape(2, 10), want)


def test_rest_classification_and_integer_inputs(v2: Served) -> None:
    body: dict[str, Any] = {"inputs": [{"name": "digit", "shape": [2], "datatype": "INT32", "data": [3, 7]}]}
    answer = v2.post("/v2/models/digits_decoder/infer", body).json()
    want = v2.own_api("digits_decoder", {"digit": np.array([3, 7], np.int32)})["image"]
    np.testing.assert_array_equal(np.asarray(answer["outputs"][0]["data"], np.float32).reshape(want.shape), want)

    rows = digits_rows(1, seed=45)
    scores = v2.own_api("digits", {"image": rows})["probabilities"][0]
    best = int(np.argmax(scores))
    body = {
        "inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": rows.ravel().tolist()}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
    }
    (output,) = v2.post("/v2/models/digits/infer", body).json()["outputs"]
    assert output == {
        "name": "probabilities",
        "datatype": "BYTES",
        "shape": [1, 1],
        "data": [f"{scores[best]:.6f}:{best}:{best}"],
    }


ONE_ROW = {"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": [0.5] * 64}
REST_ERRORS = [
    ("POST", "/v2/models/digits/infer", "{not json", 400, "request body: not JSON"),
    ("POST", "/v2/models/digits/infer", [1], 400, 'request body: expected a JSON object with "inputs"'),
    ("POST", "/v2/models/digits/infer", {"inputs": []}, 400, "inputs: expected a non-empty list"),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [ONE_ROW], "extra": 1},
        400,
        "request body: unknown field 'extra'; expected id, parameters, inputs, outputs",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**ONE_ROW, "data": [0.5] * 63}]},
        400,
        "input 'image': data holds 63 values but shape [1, 8, 8, 1] needs 64",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**ONE_ROW, "data": ["a"] * 64}]},
        400,
        "input 'image': FP32 data must be numbers",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**ONE_ROW, "data": [1e39] * 64}]},
        400,
        "input 'image': a value is outside the range of FP32",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**ONE_ROW, "shape": "1,8,8,1"}]},
        400,
        "input 'image': shape must be a list of integers",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{k: v for k, v in ONE_ROW.items() if k != "datatype"}]},
        400,
        "input 'image': datatype is required (e.g. \"FP32\")",
    ),
    (
        "POST",
        "/v2/models/digits_decoder/infer",
        {"inputs": [{"name": "digit", "shape": [1], "datatype": "INT32", "data": [2**31]}]},
        400,
        "input 'digit': a value is outside the range of INT32",
    ),
    (
        "POST",
        "/v2/models/digits_decoder/infer",
        {"inputs": [{"name": "digit", "shape": [1], "datatype": "INT32", "data": [1.5]}]},
        400,
        "input 'digit': INT32 data must be integers",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [ONE_ROW], "outputs": [{"name": "logits"}]},
        400,
        "outputs: unknown output 'logits'; model 'digits' returns 'probabilities'",
    ),
    ("POST", "/v2/models/digits/infer", {"inputs": [ONE_ROW], "id": 7}, 400, "id: expected a string"),
    ("POST", "/v2/models/nope/infer", {"inputs": [ONE_ROW]}, 404, "model 'nope' not found"),
    (
        "POST",
        "/v2/models/digits/versions/9/infer",
        {"inputs": [ONE_ROW]},
        404,
        "version 9 of model 'digits' is not served",
    ),
    (
        "POST",
        "/v2/models/digits/versions/x/infer",
        {"inputs": [ONE_ROW]},
        404,
        "model 'digits' has no version label 'x'; its labels: none (set version_labels in its serving.json)",
    ),
    (
        "POST",
        "/v2/models/digits/versions/-1/infer",
        {"inputs": [ONE_ROW]},
        400,
        "version: expected a version number such as '1' or a version label such as 'stable', got '-1'",
    ),
    (
        "GET",
        "/v2/models/digits/infer",
        None,
        405,
        "method GET is not allowed for /v2/models/digits/infer; allowed: POST",
    ),
    ("POST", "/v2/models/digits", {}, 405, "method POST is not allowed for /v2/models/digits; allowed: GET"),
    (
        "POST",
        "/v2/repository/models/digits/load",
        {},
        400,
        "model control is off (MODEL_CONTROL_MODE=none serves the models found at start): "
        "set MODEL_CONTROL_MODE=explicit or poll to load models by API",
    ),
    (
        "GET",
        "/v2/repository/models/digits/unload",
        None,
        405,
        "method GET is not allowed for /v2/repository/models/digits/unload; allowed: POST",
    ),
    ("GET", "/v2/models/nope", None, 404, "model 'nope' not found"),
    (
        "GET",
        "/v2/models/digits/versions/%C2%B2",
        None,
        400,
        "version: expected a version number such as '1' or a version label such as 'stable', got '²'",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [ONE_ROW], "model_name": "other"},
        400,
        "model_name: the body names model 'other' but the path 'digits'",
    ),
    (
        "POST",
        "/v2/models/digits/versions/1/infer",
        {"inputs": [ONE_ROW], "model_version": "2"},
        400,
        "model_version: the body names version 2 but the path 1",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [ONE_ROW], "outputs": [{"name": "probabilities"}] * 2},
        400,
        "output 'probabilities': requested twice",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**ONE_ROW, "shape": [1] * 65, "data": [0.5]}]},
        400,
        "input 'image': shape has 65 dimensions; at most 32 are taken",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**ONE_ROW, "shape": [0, 2**62, 2**62], "data": []}]},
        400,
        "input 'image': shape is too large: its FP32 values would take more than 4611686018427387904 bytes",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**ONE_ROW, "shape": [0, 2**62], "data": []}]},
        400,
        "input 'image': shape is too large: its FP32 values would take more than 4611686018427387904 bytes",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**ONE_ROW, "shape": [10**1000] * 5}]},
        400,
        "input 'image': shape is too large: its FP32 values would take more than 4611686018427387904 bytes",
    ),
    (
        "POST",
        "/v2/models/digits/infer",
        {"inputs": [{**ONE_ROW, "shape": [1, 8, 8]}]},
        400,
        "input 'image': shape [1, 8, 8] does not match the model's FLOAT32 [-1, 8, 8, 1]",
    ),
]


@pytest.mark.parametrize("method, path, body, status, message", REST_ERRORS)
def test_rest_errors_name_what_is_wrong(v2: Served, method, path, body, status, message) -> None:
    response = v2.get(path) if method == "GET" else v2.post(path, body)
    assert response.status_code == status, response.text
    assert response.json()["error"].startswith(message), response.json()
    if status == 405:  # RFC 9110: the methods the path takes
        assert response.headers["Allow"] == message.rsplit("allowed: ", 1)[1]


def test_rest_takes_kserve_style_bodies(v2: Served) -> None:
    """KServe's client names the model in the body, and nulls stand for fields not given."""
    rows = digits_rows(1, seed=47)
    want = v2.own_api("digits", {"image": rows})["probabilities"]
    body = {
        "model_name": "digits",
        "model_version": "1",
        "id": None,
        "parameters": None,
        "outputs": None,
        "inputs": [
            {
                "name": "image",
                "shape": [1, 8, 8, 1],
                "datatype": "FP32",
                "parameters": None,
                "data": rows.ravel().tolist(),
            }
        ],
    }
    response = v2.post("/v2/models/digits/infer", body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert "id" not in answer and answer["model_version"] == "1"
    np.testing.assert_array_equal(np.asarray(answer["outputs"][0]["data"], np.float32).reshape(1, 10), want)


def test_rest_binary_data_output_for_every_output(v2: Served) -> None:
    rows = digits_rows(1, seed=48)
    want = v2.own_api("digits", {"image": rows})["probabilities"]
    body = {
        "parameters": {"binary_data_output": True},
        "inputs": [{"name": "image", "shape": [1, 8, 8, 1], "datatype": "FP32", "data": rows.ravel().tolist()}],
    }
    response = v2.post("/v2/models/digits/infer", body)
    length = int(response.headers["Inference-Header-Content-Length"])
    assert json.loads(response.content[:length])["outputs"][0]["parameters"] == {"binary_data_size": 40}
    np.testing.assert_array_equal(np.frombuffer(response.content[length:], "<f4").reshape(1, 10), want)


@pytest.mark.parametrize("value", ["²", "9" * 5000, "-1", "1e3"])
def test_rest_header_length_must_be_a_byte_count(v2: Served, value: str) -> None:
    response = v2.post(
        "/v2/models/digits/infer",
        {"inputs": [ONE_ROW]},
        headers={"Inference-Header-Content-Length": value.encode().decode("latin-1")},
    )
    assert (response.status_code, response.json()["error"]) == (
        400,
        "header Inference-Header-Content-Length: expected the JSON part's length in bytes",
    )


def test_grpc_shapes_numpy_cannot_take_are_refused(v2: Served) -> None:
    def send(shape: list[int], raw: bytes, datatype: str = "FP32") -> grpc.RpcError:
        request = pb.ModelInferRequest(model_name="digits", raw_input_contents=[raw])
        request.inputs.add(name="image", datatype=datatype, shape=shape)
        with pytest.raises(grpc.RpcError) as raised:
            v2.stub.ModelInfer(request, timeout=30, metadata=AUTH)
        return raised.value

    assert send([1] * 65, bytes(4)).details() == "input 'image': shape has 65 dimensions; at most 32 are taken"
    assert send([0, 2**62, 2**62], b"").details() == (
        "input 'image': shape is too large: its FP32 values would take more than 4611686018427387904 bytes"
    )
    assert send([1, 8, 8, 1], bytes(256)[:-4], "FP32").code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as raised:
        v2.stub.ModelMetadata(pb.ModelMetadataRequest(name="digits", version="²"), timeout=10, metadata=AUTH)
    assert raised.value.details() == (
        "version: expected a version number such as '1' or a version label such as 'stable', got '²'"
    )


def test_rest_binary_parts_must_add_up(v2: Served) -> None:
    def send(size: int, extra: bytes = b""):
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1, 8, 8, 1],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": size},
                    }
                ]
            }
        ).encode()
        body = header + bytes(256) + extra
        return v2.post("/v2/models/digits/infer", body, headers={"Inference-Header-Content-Length": str(len(header))})

    assert send(256).status_code == 200
    assert (
        send(300).json()["error"] == "input 'image': binary_data_size 300 runs past the end of the body's binary part"
    )
    assert send(256, b"xx").json()["error"] == "request body: 2 bytes of binary data belong to no input"
    assert (
        send(252).json()["error"]
        == "input 'image': raw contents hold 252 bytes but shape [1, 8, 8, 1] of FP32 needs 256"
    )
    too_long = v2.post("/v2/models/digits/infer", b"{}", headers={"Inference-Header-Content-Length": "50"})
    assert too_long.json()["error"] == "header Inference-Header-Content-Length: 50 is longer than the 2-byte body"


def test_rest_needs_a_key_and_reads_no_body_without_one(v2: Served) -> None:
    oversized = b"x" * 1_000_001  # over max_http_body_bytes
    without = v2.post("/v2/models/digits/infer", oversized, key=None)
    assert (without.status_code, without.json()["error"]) == (
        401,
        "missing API key: send the metadata 'authorization: Bearer <key>'",
    )
    assert v2.post("/v2/models/digits/infer", oversized).status_code == 413
    assert v2.get("/v2/models/digits", key=None).status_code == 401
    assert v2.get("/v2/health/ready", key=None).status_code == 200


def test_rest_and_grpc_calls_are_logged(v2: Served) -> None:
    body = {"inputs": [ONE_ROW]}
    assert v2.post("/v2/models/digits/infer", body, headers={"x-request-id": "v2-log-1"}).status_code == 200
    request = infer_request("digits", digits_rows(1))
    v2.stub.ModelInfer(request, timeout=30, metadata=[*AUTH, ("x-request-id", "v2-log-2")])

    def logged() -> list[tuple[str, str, str, str]]:
        lines = [json.loads(line) for line in v2.access_log.read_text().splitlines()] if v2.access_log.exists() else []
        found = [
            (e["request_id"], e["method"], e["status"], e["model"])
            for e in lines
            if e["request_id"] in ("v2-log-1", "v2-log-2")
        ]
        return sorted(found) if len(found) == 2 else []

    wait_for(logged, 10, "the access-log lines")
    assert logged() == [
        ("v2-log-1", "/serving.v1.InferenceV2Rest/Infer", "OK", "digits"),
        ("v2-log-2", "/inference.GRPCInferenceService/ModelInfer", "OK", "digits"),
    ]


def test_not_ready_until_the_models_are_loaded(make_app) -> None:
    app = make_app(listen_only=True)
    with grpc.insecure_channel(app.address) as channel:
        stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live is True
        assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready is False
        assert stub.ModelReady(pb.ModelReadyRequest(name="digits"), timeout=10).ready is False
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelInfer(infer_request("digits", digits_rows(1)), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    ready = requests.get(f"http://{app.http_address}/v2/health/ready", timeout=10)
    assert (ready.status_code, ready.json()) == (400, {"ready": False})


def test_switched_off_with_inference_v2_false(make_app) -> None:
    app = make_app(inference_v2=False)
    with grpc.insecure_channel(app.address) as channel:
        stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.ServerLive(pb.ServerLiveRequest(), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert requests.get(f"http://{app.http_address}/v2/health/live", timeout=10).status_code == 404


# -- Triton's own clients ------------------------------------------------------------------------


def test_triton_clients_work_unchanged(make_app, tmp_path: Path) -> None:
    app = make_app()
    rows = digits_rows(3, seed=46)
    digits = np.array([3, 7], np.int32)
    np.save(tmp_path / "rows.npy", rows)
    np.save(tmp_path / "digits.npy", digits)
    seen = triton.run("infer", app.address, app.http_address, str(tmp_path / "rows.npy"), str(tmp_path / "digits.npy"))
    with grpc.insecure_channel(app.address) as channel:
        want = own_api(channel, "digits", {"image": rows})["probabilities"]
        image = own_api(channel, "digits_decoder", {"digit": digits})["image"]
    best = np.argsort(-want, axis=1, kind="stable")[:, :2]
    top = [[f"{want[r, i]:.6f}:{i}:{i}" for i in best[r]] for r in range(3)]

    grpc_seen, http_seen = seen["grpc"], seen["http"]
    stream = grpc_seen["stream"]
    assert sorted(stream) == ["error", "stream-0", "stream-1", "stream-2"]
    for index in range(3):
        np.testing.assert_allclose(np.asarray(stream[f"stream-{index}"], np.float32), want, rtol=1e-5, atol=1e-6)
    assert stream["error"].startswith("model 'nope' not found")
    assert (grpc_seen["live"], grpc_seen["ready"], grpc_seen["model_ready"], grpc_seen["unknown_model_ready"]) == (
        True,
        True,
        True,
        False,
    )
    assert grpc_seen["server"] == {
        "name": "tf-grpc-serving",
        "version": metadata.version("tf-grpc-serving"),
        "extensions": ["classification", "binary_tensor_data", "model_repository", "model_configuration", "statistics"],
    }
    assert grpc_seen["metadata"]["inputs"] == [{"name": "image", "datatype": "FP32", "shape": ["-1", "8", "8", "1"]}]
    assert grpc_seen["index"] == {
        "models": [
            {"name": "digits", "version": "1", "state": "READY"},
            {"name": "digits_decoder", "version": "1", "state": "READY"},
            {"name": "digits_keras", "version": "1", "state": "READY"},
        ]
    }
    assert http_seen["index"] == [
        {"name": "digits", "version": "1", "state": "READY", "reason": ""},
        {"name": "digits_decoder", "version": "1", "state": "READY", "reason": ""},
        {"name": "digits_keras", "version": "1", "state": "READY", "reason": ""},
    ]
    assert grpc_seen["id"] == "triton-grpc-1"
    np.testing.assert_array_equal(np.asarray(grpc_seen["probabilities"], np.float32), want)
    np.testing.assert_array_equal(np.asarray(grpc_seen["decoded"], np.float32), image)
    assert grpc_seen["top"] == top
    assert grpc_seen["wrong_datatype"] == {
        "status": "StatusCode.INVALID_ARGUMENT",
        "message": "input 'image': datatype FP64 does not match model 'digits', which expects FP32",
    }
    assert grpc_seen["unknown_model"]["status"] == "StatusCode.NOT_FOUND"

    assert (http_seen["live"], http_seen["ready"], http_seen["model_ready"]) == (True, True, True)
    assert http_seen["metadata"]["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 8, 8, 1]}]
    for binary in (True, False):
        assert http_seen[f"binary={binary}"]["id"] == f"triton-http-{binary}"
        np.testing.assert_array_equal(np.asarray(http_seen[f"binary={binary}"]["probabilities"], np.float32), want)
    np.testing.assert_array_equal(np.asarray(http_seen["decoded"], np.float32), image)
    assert http_seen["top"] == top
    assert http_seen["wrong_datatype"]["status"] == "400"
    assert http_seen["unknown_model"]["status"] == "404"

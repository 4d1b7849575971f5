"""The shim in front of the real App: the demo model, real Task and Upload services, probes, files."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import digits_rows
from tests.support.http_fixtures import Served
from tests.support.servers import MODEL_DIR, wait_for

pytestmark = pytest.mark.integration

SAMPLES = MODEL_DIR / "digits" / "samples"


def tensor_json(x: np.ndarray) -> dict:
    return {"dtype": "DATA_TYPE_FLOAT32", "shape": [str(d) for d in x.shape], "floatVal": x.ravel().tolist()}


def probabilities(reply: dict) -> np.ndarray:
    tensor = reply["outputs"]["probabilities"]
    return np.array(tensor["floatVal"], dtype=np.float32).reshape([int(d) for d in tensor["shape"]])


def test_every_route_of_the_app_is_served(served: Served) -> None:
    for route in served.app.gateway.routes:
        path = route.template.template
        for variable in route.template.variables:
            path = path.replace(f"{{{variable}}}", "digits" if "model" in variable else "no-such-id")
        reply = requests.request(route.http_method, served.url + path, data=b"{}" if route.body else None, timeout=30)
        assert reply.status_code < 500 and reply.status_code != 405, (route.rpc, reply.status_code, reply.text)
        assert not reply.text.startswith('{"code":5,"message":"no route'), route.rpc


def test_json_predict_answers_readable_numbers(served: Served, digits_reference) -> None:
    x = digits_rows(3, seed=4)
    reply = requests.post(
        f"{served.url}/v1/models/digits:predict",
        json={"inputs": {"image": {"tensor": tensor_json(x)}}, "topK": 2},
        headers={"X-Request-Id": "http-req-1"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["requestId"] == "http-req-1"
    assert body["model"] == {"name": "digits", "version": "1"}
    assert body["outputs"]["probabilities"]["dtype"] == "DATA_TYPE_FLOAT32"
    np.testing.assert_allclose(probabilities(body), digits_reference(x), rtol=1e-5, atol=1e-6)
    assert [len(row["classes"]) for row in body["classifications"]] == [2, 2, 2]
    best = digits_reference(x).argmax(axis=1)
    assert [row["classes"][0]["label"] for row in body["classifications"]] == [str(i) for i in best]


def test_original_field_names_raw_encoding_and_base64_bytes(served: Served, digits_reference) -> None:
    x = digits_rows(1, seed=5)
    raw_input = {"dtype": "DATA_TYPE_FLOAT32", "shape": [1, 8, 8, 1], "raw": base64.b64encode(x.tobytes()).decode()}
    reply = requests.post(
        f"{served.url}/v1/models/digits:predict",
        json={
            "inputs": {"image": {"tensor": raw_input}},
            "output_encoding": "TENSOR_ENCODING_RAW",
            "top_k": -1,
            "output_filter": ["probabilities"],
            "request_id": "snake",
        },
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["requestId"] == "snake" and "classifications" not in body
    raw = np.frombuffer(base64.b64decode(body["outputs"]["probabilities"]["raw"]), dtype="<f4").reshape(1, 10)
    np.testing.assert_allclose(raw, digits_reference(x), rtol=1e-5, atol=1e-6)


def test_json_images_travel_as_base64(served: Served) -> None:
    png = (SAMPLES / "digit_7.png").read_bytes()
    reply = requests.post(
        f"{served.url}/v1/models/digits:predict",
        json={"inputs": {"image": {"images": {"images": [base64.b64encode(png).decode()]}}}},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["classifications"][0]["classes"][0]["label"] == "7"


def test_predict_errors_name_the_field(served: Served) -> None:
    url = f"{served.url}/v1/models/digits:predict"
    unknown = requests.post(url, json={"inputs": {}, "temperature": 0.5}, timeout=30)
    assert unknown.status_code == 400
    assert unknown.json()["message"] == (
        'request body: Message type "serving.v1.PredictRequest" has no field named "temperature" at "PredictRequest".'
    )
    wrong_shape = requests.post(
        url, json={"inputs": {"image": {"tensor": tensor_json(np.zeros((2, 3), np.float32))}}}, timeout=30
    )
    assert wrong_shape.status_code == 400 and "input 'image'" in wrong_shape.json()["message"]
    missing = requests.post(f"{served.url}/v1/models/nope:predict", json={"inputs": {}}, timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == 5
    huge = requests.post(url, data=b" " * (4 * 1024 * 1024 + 1), timeout=30)
    assert huge.status_code == 413 and huge.json()["code"] == 8


def test_multipart_predict_on_images(served: Served) -> None:
    url = f"{served.url}/v1/models/digits:predict"
    with open(SAMPLES / "digit_3_64.png", "rb") as image:
        reply = requests.post(url, files={"file": image}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["classifications"][0]["classes"][0]["label"] == "3"
    assert "floatVal" in reply.json()["outputs"]["probabilities"]
    files = [("file", (name, (SAMPLES / name).read_bytes(), "image/png")) for name in ("digit_1.png", "digit_8_64.png")]
    reply = requests.post(url, files=files, data={"topK": "1", "input": "image"}, timeout=30)
    assert [row["classes"][0]["label"] for row in reply.json()["classifications"]] == ["1", "8"]
    named = requests.post(url, files={"image": ("d.png", (SAMPLES / "digit_5.png").read_bytes())}, timeout=30)
    assert named.json()["classifications"][0]["classes"][0]["label"] == "5"
    corrupt = requests.post(url, files={"file": ("x.png", b"not an image")}, timeout=30)
    assert corrupt.status_code == 400 and "input 'image'" in corrupt.json()["message"]
    no_images = requests.post(
        f"{served.url}/v1/models/digits_decoder:predict", files={"file": ("x.png", b"x")}, timeout=30
    )
    assert no_images.status_code == 400
    assert no_images.json()["message"] == "multipart form: model 'digits_decoder' has no input that accepts images"


def test_stream_predict_takes_and_answers_ndjson(served: Served, digits_reference) -> None:
    x = digits_rows(2, seed=6)
    lines = [
        {"inputs": {"image": {"tensor": tensor_json(x[:1])}}, "requestId": "plain"},
        {"request": {"inputs": {"image": {"tensor": tensor_json(x[1:])}}, "requestId": "wrapped"}},
        {"inputs": {}, "requestId": "empty"},
    ]
    body = b"\n".join(json.dumps(line).encode() for line in lines) + b"\n"
    reply = requests.post(f"{served.url}/v1/models/digits:streamPredict", data=body, timeout=30)
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "application/x-ndjson"
    results = {r["result"]["requestId"]: r["result"] for r in map(json.loads, reply.text.splitlines())}
    assert set(results) == {"plain", "wrapped", "empty"}
    np.testing.assert_allclose(
        probabilities(results["plain"]["response"]), digits_reference(x[:1]), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        probabilities(results["wrapped"]["response"]), digits_reference(x[1:]), rtol=1e-5, atol=1e-6
    )
    assert results["empty"]["error"]["code"] == 3


def test_a_malformed_stream_line_ends_the_stream_with_an_error(served: Served) -> None:
    good = json.dumps({"inputs": {"image": {"tensor": tensor_json(digits_rows(1))}}, "requestId": "first"}).encode()
    reply = requests.post(f"{served.url}/v1/models/digits:streamPredict", data=good + b"\n{not json\n", timeout=30)
    assert reply.status_code == 200
    lines = [json.loads(line) for line in reply.text.splitlines()]
    assert lines[0]["result"]["requestId"] == "first" and "response" in lines[0]["result"]
    assert lines[-1]["error"]["code"] == 3
    assert lines[-1]["error"]["message"].startswith("request line 2: malformed JSON")


def test_models_are_described(served: Served) -> None:
    model = requests.get(f"{served.url}/v1/models/digits", timeout=30).json()["model"]
    assert model["inputs"] == [{"name": "image", "dtype": "DATA_TYPE_FLOAT32", "shape": ["-1", "8", "8", "1"]}]
    assert model["imageInputs"] == ["image"] and model["state"] == "MODEL_STATE_READY"
    names = [m["name"] for m in requests.get(f"{served.url}/v1/models", timeout=30).json()["models"]]
    assert "digits" in names
    missing = requests.get(f"{served.url}/v1/models/nope?version=3", timeout=30)
    assert missing.status_code == 404 and missing.json()["code"] == 5


def test_multipart_upload_stores_the_file_and_files_serves_it(served: Served) -> None:
    data = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32 + 7)
    reply = requests.post(
        f"{served.url}/v1/uploads",
        files={"file": ("big.bin", data, "application/octet-stream")},
        data={"key_prefix": "gateway-test"},
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    stored = reply.json()
    assert stored["size"] == str(len(data)) and stored["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored["key"].startswith("gateway-test") and stored["key"].endswith("big.bin")
    assert stored["url"] == f"/files/{stored['key']}"
    fetched = requests.get(served.url + stored["url"], timeout=30)
    assert fetched.status_code == 200 and fetched.content == data
    for hidden in ("/files/../access.log", "/files/%2E%2E/access.log", "/files/.incoming/x", "/files/nothing-here"):
        reply = requests.get(served.url + hidden, timeout=30)
        assert reply.status_code == 404 and reply.json()["code"] == 5, hidden
    deleted = requests.delete(served.url + stored["url"], timeout=30)
    assert deleted.status_code == 405 and deleted.headers["Allow"] == "GET, HEAD"


def test_files_need_a_key_when_keys_are_configured(make_app) -> None:
    app = make_app(api_keys="files:files-key")
    url = f"http://{app.http_address}"
    auth = {"Authorization": "Bearer files-key"}
    stored = requests.post(f"{url}/v1/uploads", files={"file": ("a.txt", b"secret rows")}, headers=auth, timeout=30)
    assert stored.status_code == 200, stored.text
    path = stored.json()["url"]
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = requests.get(url + path, headers=headers, timeout=30)
        assert (refused.status_code, refused.headers.get("WWW-Authenticate"), refused.json()["message"]) == (
            401,
            "Bearer",
            "a valid API key is needed for /files: send the header 'Authorization: Bearer <key>'",
        )
    assert requests.get(url + "/files/nothing-here", timeout=30).status_code == 401  # nothing learnt without a key
    fetched = requests.get(url + path, headers=auth, timeout=30)
    assert (fetched.status_code, fetched.content) == (200, b"secret rows")


def test_probes_openapi_and_metrics(served: Served) -> None:
    assert requests.get(f"{served.url}/healthz", timeout=30).json() == {"status": "SERVING"}
    ready = requests.get(f"{served.url}/readyz", timeout=30)
    assert (ready.status_code, ready.json()) == (200, {"status": "SERVING"})
    document = requests.get(f"{served.url}/openapi.json", timeout=30).json()
    assert document["openapi"].startswith("3.")
    operations = {op["operationId"] for item in document["paths"].values() for op in item.values()}
    assert len([o for o in operations if "_" in o]) == 19  # every annotated RPC of serving.v1
    assert document["components"]["schemas"]["google.rpc.Status"]["properties"]["code"] == {
        "type": "integer",
        "format": "int32",
    }
    metrics = requests.get(f"{served.url}/metrics", timeout=30)
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")
    assert 'method="/serving.v1.PredictService/GetModel",transport="http"' in metrics.text


def test_http_calls_reach_the_access_log(served: Served) -> None:
    requests.get(f"{served.url}/v1/models/digits", headers={"X-Request-Id": "logged-1"}, timeout=30)

    def logged() -> dict | None:
        if not served.access_log.exists():
            return None
        entries = [json.loads(line) for line in served.access_log.read_text().splitlines() if line]
        return next((e for e in entries if e.get("method") == "/serving.v1.PredictService/GetModel"), None)

    entry = wait_for(logged, 10, "the access-log line of an HTTP call")
    assert entry["transport"] == "http" and entry["route"] == "GET /v1/models/{model}"
    assert entry["peer"].startswith("ipv4:127.0.0.1:")


def test_readyz_follows_health_and_the_shim_stops_with_the_app(make_app, tmp_path: Path) -> None:
    app = make_app(listen_only=True, access_log_path="", upload_dir=tmp_path / "uploads")
    url = f"http://{app.http_address}"
    not_ready = requests.get(f"{url}/readyz", timeout=30)
    assert (not_ready.status_code, not_ready.json()) == (503, {"status": "NOT_SERVING"})
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
    app.load_models()
    assert requests.get(f"{url}/readyz", timeout=30).status_code == 200
    app.stop(grace=1)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/healthz", timeout=5)


def test_a_watch_whose_deadline_passes_ends_with_deadline_exceeded(served: Served) -> None:
    """WatchTask over HTTP with Grpc-Timeout on a task that does not change: the stream's last line is
    always the DEADLINE_EXCEEDED error, as gRPC answers (it used to end cleanly in most tries)."""
    created = requests.post(f"{served.url}/v1/tasks", json={"id": "still", "model": "digits"}, timeout=30)
    assert created.status_code == 200, created.text
    for _ in range(4):
        reply = requests.get(f"{served.url}/v1/tasks/still:watch", headers={"Grpc-Timeout": "1S"}, timeout=30)
        lines = [json.loads(line) for line in reply.iter_lines() if line]
        assert reply.status_code == 200
        assert lines[0]["result"]["task"]["status"] == "TASK_STATUS_QUEUED"
        assert lines[-1] == {"error": {"code": 4, "message": "deadline exceeded", "details": []}}, lines

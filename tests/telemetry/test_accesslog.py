"""The access log: one JSON line per call with the documented fields, rotation, close."""

from __future__ import annotations

import contextlib
import json
import re
import threading
import urllib.request
from datetime import UTC, datetime

import grpc
import numpy as np
import pytest

from server.telemetry.accesslog import AccessLog
from serving.v1 import predict_pb2, predict_pb2_grpc, stream_pb2, stream_pb2_grpc, tensor_pb2
from tests.conftest import digits_rows
from wire.codec import from_numpy

pytestmark = pytest.mark.integration

PREDICT = "/serving.v1.PredictService/Predict"
STREAM = "/serving.v1.StreamPredictService/StreamPredict"
GET_MODEL = "/serving.v1.PredictService/GetModel"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def predict_request(x: np.ndarray, request_id: str = "") -> predict_pb2.PredictRequest:
    return predict_pb2.PredictRequest(
        model="digits", request_id=request_id, inputs={"image": tensor_pb2.Input(tensor=from_numpy(x))}
    )


def test_unary_stream_and_failed_calls_are_logged_with_every_field(telemetry_app, read_access_log):
    app = telemetry_app(api_keys="mobile:k-1")
    auth = (("authorization", "Bearer k-1"),)
    request = predict_request(digits_rows(3), request_id="req-42")
    with grpc.insecure_channel(app.address) as channel:
        predict = predict_pb2_grpc.PredictServiceStub(channel)
        response = predict.Predict(request, metadata=auth, timeout=30)
        predict.Predict(
            predict_request(digits_rows(1)), metadata=(*auth, ("x-request-id", "from-metadata")), timeout=30
        )
        try:
            predict.GetModel(predict_pb2.GetModelRequest(model="nope"), metadata=auth, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
        messages = [stream_pb2.StreamPredictRequest(request=predict_request(digits_rows(1), f"s{i}")) for i in range(2)]
        replies = list(
            stream_pb2_grpc.StreamPredictServiceStub(channel).StreamPredict(iter(messages), metadata=auth, timeout=30)
        )

    first, second = read_access_log(2, PREDICT)
    assert set(first) == {
        "time",
        "key",
        "peer",
        "transport",
        "method",
        "status",
        "latency_ms",
        "request_bytes",
        "response_bytes",
        "request_id",
        "trace_id",
        "model",
    }
    logged_at = datetime.fromisoformat(first["time"].replace("Z", "+00:00"))
    assert first["time"].endswith("Z") and abs((datetime.now(UTC) - logged_at).total_seconds()) < 60
    assert first["key"] == "mobile"
    assert re.fullmatch(r"ipv[46]:.+:\d+", first["peer"])
    assert (first["transport"], first["status"], first["model"]) == ("grpc", "OK", "digits")
    assert first["latency_ms"] > 0
    assert first["request_bytes"] == request.ByteSize()
    assert first["response_bytes"] == response.ByteSize()
    assert first["request_id"] == "req-42"
    assert re.fullmatch(r"[0-9a-f]{32}", first["trace_id"])
    assert second["request_id"] == "from-metadata"
    assert second["trace_id"] != first["trace_id"]

    (missing,) = read_access_log(1, GET_MODEL)
    assert (missing["status"], missing["model"], missing["key"]) == ("NOT_FOUND", "nope", "mobile")
    (stream,) = read_access_log(1, STREAM)
    assert (stream["status"], stream["model"], stream["request_id"]) == ("OK", "digits", "s0")
    assert stream["request_bytes"] == sum(m.ByteSize() for m in messages)
    assert stream["response_bytes"] == sum(r.ByteSize() for r in replies)


def test_http_requests_are_logged_and_counted_like_grpc_calls(telemetry_app, read_access_log):
    app = telemetry_app(api_keys="web:k-2", http_server_address="127.0.0.1:0")
    request = urllib.request.Request(
        f"http://{app.http_address}/v1/models/digits",
        headers={"Authorization": "Bearer k-2", "X-Request-Id": "http-1", "Traceparent": TRACEPARENT},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    (entry,) = read_access_log(1, GET_MODEL)
    assert (entry["transport"], entry["key"], entry["status"], entry["model"]) == ("http", "web", "OK", "digits")
    assert (entry["request_id"], entry["trace_id"]) == ("http-1", TRACEPARENT.split("-")[1])
    assert re.fullmatch(r"ipv4:127\.0\.0\.1:\d+", entry["peer"])
    body, _ = app.telemetry.metrics.exposition()
    assert (
        'serving_requests_total{code="OK",method="/serving.v1.PredictService/GetModel",transport="http"} 1.0'
        in body.decode()
    )


def test_key_is_never_logged(telemetry_app, access_log_path, read_access_log):
    app = telemetry_app(listen_only=True, api_keys="team:very-secret-value")
    with grpc.insecure_channel(app.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        for key in ("very-secret-value", "very-secret-valuX"):
            with contextlib.suppress(grpc.RpcError):
                stub.ListModels(
                    predict_pb2.ListModelsRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10
                )
    read_access_log(2)
    assert "very-secret" not in access_log_path.read_text()


def test_concurrent_calls_each_get_one_line(telemetry_app, read_access_log):
    app = telemetry_app()
    with grpc.insecure_channel(app.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        stub.ListModels(predict_pb2.ListModelsRequest(), timeout=10)

        def call(i: int) -> None:
            stub.Predict(predict_request(digits_rows(1, seed=i), request_id=f"c{i}"), timeout=30)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    entries = read_access_log(16, PREDICT)
    assert sorted(e["request_id"] for e in entries) == sorted(f"c{i}" for i in range(16))
    assert {e["status"] for e in entries} == {"OK"}


def test_rotation_keeps_backup_count_files(tmp_path):
    path = tmp_path / "nested" / "access.log"
    log = AccessLog(path, max_bytes=2048, backup_count=2)
    for i in range(200):
        log.write({"n": i, "padding": "x" * 40})
    log.close()
    log.write({"n": "after close"})  # dropped, no error
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["access.log", "access.log.1", "access.log.2"]
    kept = [json.loads(line)["n"] for name in reversed(files) for line in (path.parent / name).read_text().splitlines()]
    assert kept == list(range(200 - len(kept), 200))  # the newest lines, in order, none lost from the kept files
    assert all((path.parent / name).stat().st_size <= 2048 for name in files)


def test_writers_do_not_wait_for_the_file(tmp_path):
    """While the file handler is held (a stalled disk), write() still returns at once."""
    path = tmp_path / "access.log"
    log = AccessLog(path, max_bytes=10 * 1024 * 1024, backup_count=1)
    log._file.acquire()  # what a write stuck on the disk holds
    try:
        done = threading.Event()

        def write_all() -> None:
            for i in range(500):
                log.write({"n": i})
            done.set()

        writer = threading.Thread(target=write_all)
        writer.start()
        assert done.wait(10), "write() waited for the file"
        writer.join(10)
        assert path.read_text() == ""
    finally:
        log._file.release()
    log.close()
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == list(range(500))

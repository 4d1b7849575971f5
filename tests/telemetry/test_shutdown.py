"""Shutdown order: calls in flight at SIGTERM finish and are in the access log after the process exits."""

from __future__ import annotations

import json
import signal
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.v1 import predict_pb2, predict_pb2_grpc, tensor_pb2
from tests.conftest import digits_rows
from tests.support.servers import ServerProcess, free_port, wait_for
from wire.codec import from_numpy

pytestmark = pytest.mark.integration

PREDICT = "/serving.v1.PredictService/Predict"
CALLS = 6


def in_flight(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "serving_requests_in_flight" and sample.labels == {"transport": "grpc"}:
                return sample.value
    return 0.0


def test_calls_in_flight_at_sigterm_are_logged_before_exit(tmp_path):
    access_log = tmp_path / "access.log"
    metrics_port = free_port()
    proc = ServerProcess(
        tmp_path / "server.log",
        env={
            "ACCESS_LOG_PATH": str(access_log),
            "HTTP_SERVER_ADDRESS": "",
            "METRICS_ADDRESS": f"127.0.0.1:{metrics_port}",
            "MAX_BATCH_DELAY_MS": "3000",  # holds the calls in the batch queue
            "GRACE_PERIOD_SECONDS": "20",
            "API_KEYS": "",
        },
    )
    try:
        proc.wait_serving()
        with grpc.insecure_channel(proc.target) as channel:
            stub = predict_pb2_grpc.PredictServiceStub(channel)
            futures = [
                stub.Predict.future(
                    predict_pb2.PredictRequest(
                        model="digits",
                        request_id=f"inflight-{i}",
                        inputs={"image": tensor_pb2.Input(tensor=from_numpy(digits_rows(1, seed=i)))},
                    ),
                    timeout=30,
                )
                for i in range(CALLS)
            ]
            url = f"http://127.0.0.1:{metrics_port}/metrics"
            wait_for(lambda: in_flight(url) == CALLS, 10, f"{CALLS} calls in flight")
            proc.signal(signal.SIGTERM)
            assert [f.result().request_id for f in futures] == [f"inflight-{i}" for i in range(CALLS)]
        assert proc.process.wait(30) == 0
    finally:
        proc.stop()
    entries = [json.loads(line) for line in access_log.read_text().splitlines()]
    predicts = [e for e in entries if e["method"] == PREDICT]
    assert sorted(e["request_id"] for e in predicts) == [f"inflight-{i}" for i in range(CALLS)]
    assert {e["status"] for e in predicts} == {"OK"}
    log = proc.log()
    assert log.index("shutting down") < log.index("stopped")

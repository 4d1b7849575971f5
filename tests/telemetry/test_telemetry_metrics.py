"""Prometheus metrics: scraped from the metrics port and parsed, with exact counts after known calls."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.models.codec import from_numpy
from serving.v1 import predict_pb2, predict_pb2_grpc, tensor_pb2
from tests.conftest import digits_rows
from tests.servers import wait_for
from tests.telemetry.rpcs import scrape

PREDICT = "/serving.v1.PredictService/Predict"
GET_MODEL = "/serving.v1.PredictService/GetModel"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from the exposition format."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


def test_calls_batches_and_models_are_counted(telemetry_app):
    app = telemetry_app(api_keys="ci:k")
    auth = (("authorization", "Bearer k"),)
    request = predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_pb2.Input(tensor=from_numpy(digits_rows(3)))})
    with grpc.insecure_channel(app.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        for _ in range(4):
            stub.Predict(request, metadata=auth, timeout=30)
        for metadata in (auth, ()):
            with pytest.raises(grpc.RpcError):
                stub.GetModel(predict_pb2.GetModelRequest(model="nope"), metadata=metadata, timeout=10)

    parsed = samples(scrape(app))
    grpc_labels = {"transport": "grpc"}
    assert value(parsed, "serving_requests_total", method=PREDICT, code="OK", **grpc_labels) == 4
    assert value(parsed, "serving_requests_total", method=GET_MODEL, code="NOT_FOUND", **grpc_labels) == 1
    assert value(parsed, "serving_requests_total", method=GET_MODEL, code="UNAUTHENTICATED", **grpc_labels) == 1
    assert value(parsed, "serving_request_duration_seconds_count", method=PREDICT, **grpc_labels) == 4
    assert value(parsed, "serving_request_duration_seconds_sum", method=PREDICT, **grpc_labels) > 0
    assert value(parsed, "serving_requests_in_flight", **grpc_labels) == 0
    # one caller at a time: every Predict is a batch of its 3 rows
    assert value(parsed, "serving_batch_size_count", model="digits") == 4
    assert value(parsed, "serving_batch_size_sum", model="digits") == 12
    assert value(parsed, "serving_batch_size_bucket", model="digits", le="2.0") == 0
    assert value(parsed, "serving_batch_size_bucket", model="digits", le="4.0") == 4
    assert value(parsed, "serving_model_execution_seconds_count", model="digits") == 4
    assert value(parsed, "serving_queue_wait_seconds_count", model="digits") == 4
    assert value(parsed, "serving_model_queue_depth", model="digits") == 0
    assert value(parsed, "serving_model_rejected_requests_total", model="digits") == 0
    assert value(parsed, "serving_model_expired_requests_total", model="digits") == 0


def test_full_queue_rejections_are_counted_per_model(telemetry_app):
    app = telemetry_app(max_queue_size=1, max_batch_delay_ms=2000, max_batch_size=64)
    request = predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_pb2.Input(tensor=from_numpy(digits_rows(1)))})
    with grpc.insecure_channel(app.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        held = stub.Predict.future(request, timeout=30)  # waits in the queue for the batch delay
        wait_for(lambda: value(samples(scrape(app)), "serving_model_queue_depth", model="digits") == 1, 10, "a queued call")
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        parsed = samples(scrape(app))
        assert value(parsed, "serving_requests_in_flight", transport="grpc") == 1
        held.result()
    parsed = samples(scrape(app))
    assert value(parsed, "serving_model_rejected_requests_total", model="digits") == 3
    assert value(parsed, "serving_requests_total", method=PREDICT, code="RESOURCE_EXHAUSTED", transport="grpc") == 3
    assert value(parsed, "serving_model_queue_depth", model="digits") == 0
    assert value(parsed, "serving_requests_in_flight", transport="grpc") == 0


def test_task_webhook_and_upload_metrics_for_other_parts(telemetry_app):
    app = telemetry_app(listen_only=True)
    metrics = app.telemetry.metrics
    metrics.task_finished("succeeded")
    metrics.task_finished("succeeded")
    metrics.task_finished("failed")
    metrics.webhook_delivered("delivered")
    metrics.uploaded(1000)
    metrics.uploaded(24)
    metrics.set_task_queue_length(7)
    parsed = samples(scrape(app))
    assert value(parsed, "serving_tasks_total", outcome="succeeded") == 2
    assert value(parsed, "serving_tasks_total", outcome="failed") == 1
    assert value(parsed, "serving_webhook_deliveries_total", outcome="delivered") == 1
    assert value(parsed, "serving_upload_bytes_total") == 1024
    assert value(parsed, "serving_task_queue_length") == 7
    metrics.watch_task_queue_length(lambda: 3)
    assert value(samples(scrape(app)), "serving_task_queue_length") == 3


def test_exposition_for_the_http_shim_and_separate_registries(telemetry_app):
    first = telemetry_app(listen_only=True, metrics_address="")
    second = telemetry_app(listen_only=True, metrics_address="")
    assert first.telemetry.metrics_server is None
    first.telemetry.metrics.uploaded(5)
    body, content_type = first.telemetry.metrics.exposition()
    assert content_type.startswith("text/plain; version=")
    assert value(samples(body.decode()), "serving_upload_bytes_total") == 5
    body, _ = second.telemetry.metrics.exposition()
    assert value(samples(body.decode()), "serving_upload_bytes_total") == 0

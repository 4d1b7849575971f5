"""Prometheus metrics: scraped from the metrics port and parsed, with exact counts after known calls."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.v1 import predict_pb2, predict_pb2_grpc, tensor_pb2
from tests.conftest import digits_rows
from tests.support.rpcs import scrape
from tests.support.servers import wait_for
from wire.codec import from_numpy

pytestmark = pytest.mark.integration

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
    request = predict_pb2.PredictRequest(
        model="digits", inputs={"image": tensor_pb2.Input(tensor=from_numpy(digits_rows(3)))}
    )
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
    assert value(parsed, "serving_model_version", model="digits") == 1
    assert value(parsed, "serving_model_queue_depth", model="digits") == 0
    assert value(parsed, "serving_model_rejected_requests_total", model="digits") == 0
    assert value(parsed, "serving_model_expired_requests_total", model="digits") == 0


def test_full_queue_rejections_are_counted_per_model(telemetry_app):
    app = telemetry_app(max_queue_size=1, max_batch_delay_ms=2000, max_batch_size=64)
    request = predict_pb2.PredictRequest(
        model="digits", inputs={"image": tensor_pb2.Input(tensor=from_numpy(digits_rows(1)))}
    )
    with grpc.insecure_channel(app.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        held = stub.Predict.future(request, timeout=30)  # waits in the queue for the batch delay
        wait_for(
            lambda: value(samples(scrape(app)), "serving_model_queue_depth", model="digits") == 1, 10, "a queued call"
        )
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                stub.Predict(request, timeout=10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A refused call's client can see its status before the server's interceptor has counted it out.
        wait_for(
            lambda: value(samples(scrape(app)), "serving_requests_in_flight", transport="grpc") == 1,
            10,
            "only the queued call in flight",
        )
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


def _outcomes(parsed: dict, name: str) -> dict[str, float]:
    return {dict(labels)["outcome"]: v for (sample, labels), v in parsed.items() if sample == name}


def test_tasks_webhooks_and_uploads_of_a_real_app_are_counted(telemetry_app, tmp_path):
    from serving.v1 import task_pb2, task_pb2_grpc, upload_pb2, upload_pb2_grpc
    from tests.support.task_helpers import async_request
    from tests.support.webhook_receiver import WebhookReceiver

    receiver = WebhookReceiver().start()
    try:
        app = telemetry_app(webhook_allow_private=True, upload_dir=str(tmp_path / "uploads"))
        with grpc.insecure_channel(app.address) as channel:
            submitted = (
                predict_pb2_grpc.PredictServiceStub(channel).PredictAsync(async_request(receiver.url), timeout=10).task
            )
            receiver.wait_count(1, 30)
            wait_for(
                lambda: _outcomes(samples(scrape(app)), "serving_webhook_deliveries_total").get("delivered"),
                10,
                "the webhook delivery to be counted",
            )
            tasks = task_pb2_grpc.TaskServiceStub(channel)
            assert (
                tasks.GetTask(task_pb2.GetTaskRequest(id=submitted.id), timeout=10).task.status
                == task_pb2.TASK_STATUS_SUCCEEDED
            )
            chunks = [b"x" * 1000, b"y" * 234]
            messages = [upload_pb2.UploadRequest(metadata=upload_pb2.UploadMetadata(file_name="a.bin"))]
            messages += [upload_pb2.UploadRequest(chunk=chunk) for chunk in chunks]
            uploaded = upload_pb2_grpc.UploadServiceStub(channel).Upload(iter(messages), timeout=10)
            assert uploaded.size == 1234
            with pytest.raises(grpc.RpcError):  # refused before storing: not counted
                bad = [upload_pb2.UploadRequest(metadata=upload_pb2.UploadMetadata(file_name="b.bin", size=-1))]
                upload_pb2_grpc.UploadServiceStub(channel).Upload(iter(bad), timeout=10)
    finally:
        receiver.stop()

    parsed = samples(scrape(app))
    assert _outcomes(parsed, "serving_tasks_total") == {"succeeded": 1}
    assert _outcomes(parsed, "serving_webhook_deliveries_total") == {"delivered": 1}
    assert value(parsed, "serving_upload_bytes_total") == 1234
    assert value(parsed, "serving_task_queue_length") == 0


def test_cancelled_tasks_and_the_queue_length_are_counted(telemetry_app):
    from serving.v1 import task_pb2, task_pb2_grpc
    from tests.support.task_helpers import async_request

    app = telemetry_app(task_workers=0)  # nothing takes the entries: they stay queued
    with grpc.insecure_channel(app.address) as channel:
        predict = predict_pb2_grpc.PredictServiceStub(channel)
        first = predict.PredictAsync(async_request(), timeout=10).task
        predict.PredictAsync(async_request(), timeout=10)
        assert value(samples(scrape(app)), "serving_task_queue_length") == 2
        tasks = task_pb2_grpc.TaskServiceStub(channel)
        cancelled = tasks.CancelTask(task_pb2.CancelTaskRequest(id=first.id), timeout=10).task
        assert cancelled.status == task_pb2.TASK_STATUS_CANCELLED
        with pytest.raises(grpc.RpcError) as info:  # cancelling twice finishes nothing
            tasks.CancelTask(task_pb2.CancelTaskRequest(id=first.id), timeout=10)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        app.tasks.queue.delay("later", b"", 2e9)  # a delayed retry counts as waiting too
    parsed = samples(scrape(app))
    assert _outcomes(parsed, "serving_tasks_total") == {"cancelled": 1}
    assert _outcomes(parsed, "serving_webhook_deliveries_total") == {}
    assert value(parsed, "serving_upload_bytes_total") == 0
    # the cancelled task's entry stays in the queue until a worker acknowledges it
    assert value(parsed, "serving_task_queue_length") == 3


def test_refusals_keep_counting_across_version_swaps():
    from types import SimpleNamespace

    from server.telemetry.metrics import Metrics

    metrics = Metrics()
    served = [SimpleNamespace(name="m", version=1, batcher=SimpleNamespace(queue_depth=0))]
    metrics.watch_models(lambda: served)
    parsed = samples(metrics.exposition()[0].decode())
    assert value(parsed, "serving_model_rejected_requests_total", model="m") == 0
    assert value(parsed, "serving_model_expired_requests_total", model="m") == 0
    metrics.request_refused("m", "rejected")
    metrics.request_refused("m", "rejected")
    metrics.request_refused("m", "expired")
    served[0] = SimpleNamespace(name="m", version=2, batcher=SimpleNamespace(queue_depth=0))  # a new Batcher
    metrics.request_refused("m", "rejected")
    parsed = samples(metrics.exposition()[0].decode())
    assert value(parsed, "serving_model_version", model="m") == 2
    assert value(parsed, "serving_model_rejected_requests_total", model="m") == 3
    assert value(parsed, "serving_model_expired_requests_total", model="m") == 1

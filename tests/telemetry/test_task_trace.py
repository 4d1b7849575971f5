"""An async task's trace end to end: PredictAsync -> task.run (-> batch spans) and webhook.deliver -> webhook."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serving.v1 import predict_pb2_grpc, upload_pb2, upload_pb2_grpc
from tests.support.task_helpers import async_request
from tests.support.webhook_receiver import WebhookReceiver
from tests.telemetry.test_tracing import spans_named

pytestmark = pytest.mark.integration

PREDICT_ASYNC = "/serving.v1.PredictService/PredictAsync"
UPLOAD = "/serving.v1.UploadService/Upload"


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    started = WebhookReceiver().start()
    yield started
    started.stop()


@pytest.fixture
def traced_task_app(telemetry_app, tmp_path):
    """A traced App with in-process workers, loopback webhooks allowed, spans in an in-memory exporter."""
    app = telemetry_app(task_workers=1, webhook_allow_private=True, upload_dir=tmp_path / "uploads")
    exporter = InMemorySpanExporter()
    app.telemetry.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return app, exporter


def test_an_async_task_is_one_trace_from_predict_async_to_the_webhook(traced_task_app, receiver):
    app, exporter = traced_task_app
    with grpc.insecure_channel(app.address) as channel:
        task = predict_pb2_grpc.PredictServiceStub(channel).PredictAsync(async_request(receiver.url), timeout=30).task
    headers, _ = receiver.wait_count(1, 30)[0]

    (server_span,) = spans_named(exporter, PREDICT_ASYNC, 1)
    trace_id = server_span.context.trace_id
    assert server_span.kind == trace.SpanKind.SERVER and server_span.parent is None
    assert task.id == task.trace_id == f"{trace_id:032x}"
    assert task.traceparent.startswith(f"00-{task.id}-{server_span.context.span_id:016x}-")

    (run,) = spans_named(exporter, "task.run", 1)
    (deliver,) = spans_named(exporter, "webhook.deliver", 1)
    assert run.context.trace_id == deliver.context.trace_id == trace_id
    assert run.parent.span_id == server_span.context.span_id
    assert deliver.parent.span_id == server_span.context.span_id
    assert run.attributes["task.id"] == task.id and run.end_time <= deliver.start_time
    assert deliver.attributes["task.id"] == task.id and deliver.attributes["webhook.attempt"] == 1
    assert deliver.attributes["server.address"] == "127.0.0.1"
    assert deliver.attributes["http.response.status_code"] == 200

    # The webhook request continues the trace from its delivery span.
    assert headers["traceparent"].startswith(f"00-{task.id}-{deliver.context.span_id:016x}-")

    # The worker's prediction is batched under task.run.
    (execute,) = spans_named(exporter, "batch.execute", 1)
    (wait,) = spans_named(exporter, "batch.queue_wait", 1)
    assert execute.context.trace_id == wait.context.trace_id == trace_id
    assert execute.parent.span_id == wait.parent.span_id == run.context.span_id
    assert execute.attributes["serving.batch.size"] == 2


def test_two_tasks_submitted_in_one_callers_trace_get_distinct_ids(traced_task_app):
    app, _exporter = traced_task_app
    incoming = "4bf92f3577b34da6a3ce929d0e0e4736"
    metadata = (("traceparent", f"00-{incoming}-00f067aa0ba902b7-01"),)
    with grpc.insecure_channel(app.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        first = stub.PredictAsync(async_request(), metadata=metadata, timeout=30).task
        second = stub.PredictAsync(async_request(), metadata=metadata, timeout=30).task
        given = stub.PredictAsync(async_request(task_id="my-task"), metadata=metadata, timeout=30).task
    assert first.id == first.trace_id == incoming  # the first takes the caller's trace id
    assert second.id != incoming and second.traceparent.startswith(f"00-{second.id}-")  # the next a trace of its own
    assert given.id == "my-task" and given.trace_id != incoming


def test_uploads_have_a_span_with_key_and_size(traced_task_app):
    app, exporter = traced_task_app
    requests = iter(
        [
            upload_pb2.UploadRequest(metadata=upload_pb2.UploadMetadata(file_name="a.bin")),
            upload_pb2.UploadRequest(chunk=b"x" * 1000),
            upload_pb2.UploadRequest(chunk=b"y" * 234),
        ]
    )
    with grpc.insecure_channel(app.address) as channel:
        reply = upload_pb2_grpc.UploadServiceStub(channel).Upload(requests, timeout=30)
    (server_span,) = spans_named(exporter, UPLOAD, 1)
    (span,) = spans_named(exporter, "upload", 1)
    assert span.parent.span_id == server_span.context.span_id
    assert span.attributes["upload.key"] == reply.key and span.attributes["upload.bytes"] == 1234 == reply.size


def test_without_tracing_the_task_keeps_a_trace_of_its_own(telemetry_app, receiver):
    app = telemetry_app(tracing_enabled=False, task_workers=1, webhook_allow_private=True)
    with grpc.insecure_channel(app.address) as channel:
        task = predict_pb2_grpc.PredictServiceStub(channel).PredictAsync(async_request(receiver.url), timeout=30).task
    headers, _ = receiver.wait_count(1, 30)[0]
    assert task.trace_id == task.id and task.traceparent.startswith(f"00-{task.id}-")
    assert headers["traceparent"] == task.traceparent

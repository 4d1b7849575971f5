"""Tracing: server spans with queue-wait and batch-execution children, propagation, task helpers."""

from __future__ import annotations

import threading

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server.config import Settings
from server.telemetry.tracing import Tracing, current_traceparent, traceparent_for_task
from serving.v1 import predict_pb2, predict_pb2_grpc, tensor_pb2
from tests.conftest import digits_rows
from tests.support.servers import wait_for
from wire.codec import from_numpy

pytestmark = pytest.mark.integration

PREDICT = "/serving.v1.PredictService/Predict"
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_PARENT = "00f067aa0ba902b7"


@pytest.fixture
def traced_app(telemetry_app):
    """An App whose spans land in an in-memory exporter."""
    app = telemetry_app(max_batch_delay_ms=300)
    exporter = InMemorySpanExporter()
    app.telemetry.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return app, exporter


def predict_request(rows: int, seed: int = 0) -> predict_pb2.PredictRequest:
    return predict_pb2.PredictRequest(
        model="digits", inputs={"image": tensor_pb2.Input(tensor=from_numpy(digits_rows(rows, seed)))}
    )


def spans_named(exporter: InMemorySpanExporter, name: str, count: int) -> list[ReadableSpan]:
    return wait_for(
        lambda: (
            (found := [s for s in exporter.get_finished_spans() if s.name == name]) and len(found) >= count and found
        ),
        10,
        f"{count} spans named {name}",
    )


def children_of(exporter: InMemorySpanExporter, parent: ReadableSpan) -> dict[str, ReadableSpan]:
    return {
        s.name: s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    }


def test_predict_has_a_server_span_with_queue_wait_and_batch_execution(traced_app, read_access_log):
    app, exporter = traced_app
    traceparent = f"00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"
    with grpc.insecure_channel(app.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        stub.Predict(predict_request(2), metadata=(("traceparent", traceparent),), timeout=30)

    (server_span,) = spans_named(exporter, PREDICT, 1)
    assert server_span.kind == trace.SpanKind.SERVER
    assert f"{server_span.context.trace_id:032x}" == INCOMING_TRACE
    assert f"{server_span.parent.span_id:016x}" == INCOMING_PARENT
    children = wait_for(lambda: len(c := children_of(exporter, server_span)) == 2 and c, 10, "two child spans")
    wait, execute = children["batch.queue_wait"], children["batch.execute"]
    assert wait.context.trace_id == execute.context.trace_id == server_span.context.trace_id
    assert wait.start_time < wait.end_time == execute.start_time < execute.end_time
    assert wait.end_time - wait.start_time >= 250_000_000  # held open by the 300 ms batch delay
    assert execute.attributes["serving.batch.size"] == 2
    assert execute.attributes["serving.model"] == "digits"
    slack = 1_000_000  # monotonic -> wall clock conversion
    assert server_span.start_time - slack <= wait.start_time and execute.end_time <= server_span.end_time + slack
    (entry,) = read_access_log(1, PREDICT)
    assert entry["trace_id"] == INCOMING_TRACE


def test_requests_merged_into_one_batch_each_get_their_spans(traced_app):
    app, exporter = traced_app
    with grpc.insecure_channel(app.address) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        stub.ListModels(predict_pb2.ListModelsRequest(), timeout=10)
        barrier = threading.Barrier(3)

        def call(i: int) -> None:
            barrier.wait(10)
            stub.Predict(predict_request(1, seed=i), timeout=30)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    servers = spans_named(exporter, PREDICT, 3)
    executes = spans_named(exporter, "batch.execute", 3)
    assert {s.parent.span_id for s in executes} == {s.context.span_id for s in servers}
    assert {s.context.trace_id for s in servers} == {s.context.trace_id for s in executes}
    assert len({s.context.trace_id for s in servers}) == 3
    assert sum(s.attributes["serving.batch.size"] for s in executes) >= 3  # type: ignore[misc]  # an int attribute


def test_task_trace_helpers_continue_the_task_trace():
    task_id = "0af7651916cd43dd8448eb211c80319c"
    traceparent = traceparent_for_task(task_id)
    version, trace_id, span_id, flags = traceparent.split("-")
    assert (version, trace_id, flags) == ("00", task_id, "01")
    assert len(span_id) == 16 and int(span_id, 16) != 0

    tracing = Tracing(Settings(_env_file=None))
    exporter = InMemorySpanExporter()
    tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    with tracing.start_span_from_traceparent("task.process", traceparent, {"serving.task_id": task_id}) as span:
        assert f"{span.get_span_context().trace_id:032x}" == task_id
        outgoing = current_traceparent()
        with tracing.tracer.start_as_current_span("webhook.deliver") as child:
            assert child.get_span_context().trace_id == span.get_span_context().trace_id
    assert outgoing == f"00-{task_id}-{span.get_span_context().span_id:016x}-01"
    assert current_traceparent() is None
    task_span = next(s for s in exporter.get_finished_spans() if s.name == "task.process")
    assert f"{task_span.parent.span_id:016x}" == span_id
    tracing.shutdown()


@pytest.mark.parametrize("bad", ["", "0af7651916cd43dd", "0" * 32, "0AF7651916CD43DD8448EB211C80319C", "x" * 32])
def test_traceparent_for_task_needs_a_uuid4_hex(bad):
    with pytest.raises(ValueError, match="is not 32 lowercase hex digits"):
        traceparent_for_task(bad)


def test_spans_are_off_without_an_exporter_but_the_access_log_keeps_incoming_trace_ids(telemetry_app, read_access_log):
    app = telemetry_app(tracing_enabled=None)
    assert not app.telemetry.tracing.enabled
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with grpc.insecure_channel(app.address) as channel:
        predict_pb2_grpc.PredictServiceStub(channel).Predict(
            predict_request(1), metadata=[("traceparent", f"00-{trace_id}-00f067aa0ba902b7-01")], timeout=10
        )
        predict_pb2_grpc.PredictServiceStub(channel).Predict(predict_request(1), timeout=10)
    with_parent, without = read_access_log(2, "/serving.v1.PredictService/Predict")
    assert with_parent["trace_id"] == trace_id
    assert without["trace_id"] is None


def test_client_spans_continue_on_the_server(traced_app):
    from opentelemetry.sdk.trace import TracerProvider

    from client import Client

    app, exporter = traced_app
    client_provider = TracerProvider()
    client_exporter = InMemorySpanExporter()
    client_provider.add_span_processor(SimpleSpanProcessor(client_exporter))
    with Client(app.address, timeout=10, tracer_provider=client_provider) as client:
        client.predict("digits", {"image": digits_rows(1)})
    (client_span,) = [s for s in client_exporter.get_finished_spans() if s.name == PREDICT]
    assert client_span.kind == trace.SpanKind.CLIENT
    (server_span,) = spans_named(exporter, PREDICT, 1)
    assert server_span.kind == trace.SpanKind.SERVER
    assert server_span.context.trace_id == client_span.context.trace_id
    assert server_span.parent.span_id == client_span.context.span_id
    client_provider.shutdown()

"""The per-call interceptor: in-flight gauge, request metrics and the access-log line.

It runs inside the tracing interceptor (so the trace id is known) and outside
auth (which writes the key name into the call's record). It handles the four
handler kinds: request streams are counted as they are read, response streams
as they are sent, and the call ends when its last response went out, it
failed, or the caller went away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from server.telemetry.accesslog import AccessLog
from server.telemetry.calls import (
    Behavior,
    CallRecord,
    is_async,
    run_in_call,
    run_in_call_async,
    transport_of,
    wrap_handler,
)
from server.telemetry.metrics import Metrics
from server.telemetry.tracing import current_trace_id


class CallTelemetryInterceptor(grpc.ServerInterceptor):
    """Records every call in the metrics and, when enabled, the access log."""

    def __init__(self, metrics: Metrics, access_log: AccessLog | None) -> None:
        self.metrics = metrics
        self.access_log = access_log

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        return wrap_handler(continuation(handler_call_details), lambda b, rs, ss: self._observed(method, b, rs, ss))

    def _observed(self, method: str, behavior: Behavior, request_streaming: bool, response_streaming: bool) -> Behavior:
        if is_async(behavior):
            return self._observed_async(method, behavior, request_streaming, response_streaming)

        def observed(request: Any, context: grpc.ServicerContext) -> Any:
            record = self._begin(method, context)
            if request_streaming:
                request = record.counted(request)
            else:
                record.add_request(request)
            try:
                result = run_in_call(record, behavior, request, context)
            except BaseException as exc:
                record.error = exc
                self._end(record, context)
                raise
            if response_streaming:
                return self._responses(record, context, iter(result))
            record.add_response(result)
            self._end(record, context)
            return result

        return observed

    def _responses(self, record: CallRecord, context: grpc.ServicerContext, responses: Iterator[Any]) -> Iterator[Any]:
        try:
            while True:
                try:
                    response = run_in_call(record, next, responses)
                except StopIteration:
                    return
                record.add_response(response)
                yield response
        except BaseException as exc:  # GeneratorExit: the caller went away
            record.error = exc
            close = getattr(responses, "close", None)
            if close is not None:
                close()
            raise
        finally:
            self._end(record, context)

    def _observed_async(
        self, method: str, behavior: Behavior, request_streaming: bool, response_streaming: bool
    ) -> Behavior:
        """`_observed` for a behavior on the event loop."""

        def begin(request: Any, context: grpc.ServicerContext) -> tuple[CallRecord, Any]:
            record = self._begin(method, context)
            if request_streaming:
                request = record.counted_async(request)
            else:
                record.add_request(request)
            return record, request

        if response_streaming:

            async def observed_stream(request: Any, context: grpc.ServicerContext) -> AsyncIterator[Any]:
                record, request = begin(request, context)
                try:
                    async for response in _in_call(record, behavior(request, context)):
                        record.add_response(response)
                        yield response
                except BaseException as exc:  # GeneratorExit, CancelledError: the caller went away
                    record.error = exc
                    raise
                finally:
                    self._end(record, context)

            return observed_stream

        async def observed(request: Any, context: grpc.ServicerContext) -> Any:
            record, request = begin(request, context)
            try:
                result = await run_in_call_async(record, behavior, request, context)
            except BaseException as exc:
                record.error = exc
                self._end(record, context)
                raise
            record.add_response(result)
            self._end(record, context)
            return result

        return observed

    def _begin(self, method: str, context: grpc.ServicerContext) -> CallRecord:
        transport = transport_of(context)
        record = CallRecord(
            method=method,
            transport=transport,
            peer=context.peer(),
            route=getattr(context, "route", None),
            trace_id=current_trace_id() or _incoming_trace_id(context),
        )
        self.metrics.call_started(transport)
        return record

    def _end(self, record: CallRecord, context: grpc.ServicerContext) -> None:
        code = record.status(context)
        self.metrics.call_finished(record.method, record.transport, code.name, record.elapsed_ms() / 1000)
        if self.access_log is not None:
            request_id = record.request_field("request_id") or _metadata_value(context, "x-request-id")
            target = getattr(context, "model_target", None)  # set by in-process transports naming the model elsewhere
            model = record.model_name() or (target[0] if target else None)
            self.access_log.write_call(record, code, request_id, model)


async def _in_call(record: CallRecord, responses: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The responses of an async stream, each produced with `record` as the current call."""
    try:
        while True:
            try:
                response = await run_in_call_async(record, responses.__anext__)
            except StopAsyncIteration:
                return
            yield response
    finally:
        await responses.aclose()  # type: ignore[attr-defined]


def _incoming_trace_id(context: grpc.ServicerContext) -> str | None:
    """The trace id of an incoming W3C `traceparent` (used when spans are off)."""
    traceparent = _metadata_value(context, "traceparent")
    parts = traceparent.split("-") if traceparent else []
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def _metadata_value(context: grpc.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == name:
            return (value.decode() if isinstance(value, bytes) else value) or None
    return None

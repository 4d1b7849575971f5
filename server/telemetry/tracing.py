"""OpenTelemetry tracing of one App: provider, server interceptor, task trace helpers.

The provider is configured from the standard `OTEL_*` environment variables
(service name, resource attributes, sampler, OTLP endpoint, headers, TLS);
spans are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
Server spans are made only when tracing is enabled (`TRACING_ENABLED`; by
default exactly when an OTLP endpoint is set), since the instrumentation costs
about 0.2 ms of GIL time per call; without them the access log takes trace ids
from incoming `traceparent` headers.

Server spans come from opentelemetry-instrumentation-grpc's interceptor, for
gRPC calls and for HTTP requests dispatched in process alike. An async task's
trace id is its task id: `traceparent_for_task()` builds the W3C `traceparent`
to store with the task, `Tracing.start_span_from_traceparent()` continues the
trace in a worker, and `current_traceparent()` is the header for an outgoing
request (a webhook).
"""

from __future__ import annotations

import collections
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, server_interceptor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from server.config import Settings
from server.telemetry.calls import Behavior, behavior_of, is_async, transport_of, wrap_handler

_PROPAGATOR = TraceContextTextMapPropagator()
_TASK_ID = re.compile(r"^[0-9a-f]{32}$")
_Metadatum = collections.namedtuple("_Metadatum", ("key", "value"))


class Tracing:
    """The App's tracer provider and what the server does with it."""

    def __init__(self, settings: Settings) -> None:
        resource = Resource.create({SERVICE_NAME: settings.otel_service_name})
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        if settings.otel_exporter_otlp_endpoint:
            # The exporter reads the OTEL_EXPORTER_OTLP_* variables itself (endpoint, headers, TLS).
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("server")
        enabled = settings.tracing_enabled
        self.enabled = bool(settings.otel_exporter_otlp_endpoint) if enabled is None else enabled

    def server_interceptor(self) -> grpc.ServerInterceptor:
        """A SERVER span around every call, parented by an incoming `traceparent`."""
        return _AnyTransportInterceptor(
            server_interceptor(tracer_provider=self.provider), aio_server_interceptor(tracer_provider=self.provider)
        )

    @contextmanager
    def start_span_from_traceparent(
        self, name: str, traceparent: str, attributes: Mapping[str, Any] | None = None
    ) -> Iterator[trace.Span]:
        """A current span continuing the trace of `traceparent` (e.g. a task's)."""
        context = _PROPAGATOR.extract({"traceparent": traceparent})
        with self.tracer.start_as_current_span(name, context=context, attributes=attributes) as span:
            yield span

    def shutdown(self) -> None:
        """Export what is buffered, then stop."""
        self.provider.shutdown()


def traceparent_for_task(task_id: str) -> str:
    """A W3C `traceparent` whose trace id is the task id (32 lowercase hex digits)."""
    if not _TASK_ID.match(task_id) or int(task_id, 16) == 0:
        raise ValueError(f"task id {task_id!r} is not 32 lowercase hex digits (uuid4().hex)")
    span_id = secrets.randbits(64) or 1
    return f"00-{task_id}-{span_id:016x}-01"


def current_traceparent() -> str | None:
    """The `traceparent` of the current span, for an outgoing request; None outside a trace."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def current_trace_id() -> str | None:
    """The current trace id as 32 hex digits, or None."""
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


class _AnyTransportInterceptor(grpc.ServerInterceptor):
    """The instrumentation's interceptors for both kinds of behavior, with a gRPC-shaped view of
    contexts from other transports.

    Plain behaviors get the instrumentation's sync wrapper, those on the event
    loop its asyncio one. The instrumentation reads `metadatum.key`/`.value`
    and parses `peer()` as `ipv4:host:port`; an in-process transport may give
    plain pairs and addresses.
    """

    def __init__(self, inner: Any, inner_aio: Any) -> None:
        self._inner = inner
        self._inner_aio = inner_aio

    def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if not is_async(_behavior_of(handler)):
            traced = self._inner.intercept_service(lambda _details: handler, handler_call_details)
            return wrap_handler(traced, _with_grpc_shaped_context)

        def traced_async(behavior: Behavior, _request_streaming: bool, response_streaming: bool) -> Behavior:
            traced: Behavior
            if response_streaming:
                traced = self._inner_aio._intercept_aio_server_stream(behavior, handler_call_details)
            else:
                traced = self._inner_aio._intercept_aio_server_unary(behavior, handler_call_details)
            return traced

        return wrap_handler(wrap_handler(handler, traced_async), _with_grpc_shaped_context)


def _behavior_of(handler: grpc.RpcMethodHandler) -> Behavior:
    return behavior_of(handler)


def _with_grpc_shaped_context(behavior: Behavior, _request_streaming: bool, response_streaming: bool) -> Behavior:
    if is_async(behavior) and response_streaming:

        async def stream_wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            async for response in behavior(request, _shaped(context)):
                yield response

        return stream_wrapper
    if is_async(behavior):

        async def async_wrapper(request: Any, context: grpc.ServicerContext) -> Any:
            return await behavior(request, _shaped(context))

        return async_wrapper

    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        return behavior(request, _shaped(context))

    return wrapper


def _shaped(context: grpc.ServicerContext) -> Any:
    return context if transport_of(context) == "grpc" else _GrpcShapedContext(context)


class _GrpcShapedContext:
    """A non-gRPC context whose metadata and peer look like grpc's; all else is the original's."""

    def __init__(self, context: grpc.ServicerContext) -> None:
        self._context = context

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    def invocation_metadata(self) -> tuple[_Metadatum, ...]:
        return tuple(_Metadatum(key, value) for key, value in self._context.invocation_metadata() or ())

    def peer(self) -> str:
        peer = self._context.peer() or "unknown:0"
        if peer.startswith(("ipv4:", "ipv6:", "unix:")):
            return peer
        host, _, port = peer.rpartition(":")
        if not host:
            return f"unix:{peer}"  # no port: the instrumentation skips parsing it
        return f"ipv6:{peer}" if host.startswith("[") else f"ipv4:{host}:{port}"

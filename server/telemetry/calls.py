"""What the telemetry interceptors share about one call, and how they wrap handlers.

`CallRecord` is made by the outermost telemetry interceptor for every call
(gRPC or HTTP) and is reachable from inner interceptors through
`current_call()` while any part of the call runs: auth writes the API key name
into it, and the access log reads it when the call ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from server.errors import ServingError

Behavior = Callable[..., Any]
# wrap(behavior, request_streaming, response_streaming) -> new behavior
BehaviorWrapper = Callable[[Behavior, bool, bool], Behavior]

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
_CURRENT: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar("serving_call", default=None)


def replace_handler(handler: grpc.RpcMethodHandler, **fields: Any) -> grpc.RpcMethodHandler:
    """`handler` with `fields` replaced (grpc's `*_rpc_method_handler()` handlers are named tuples)."""
    replaced: grpc.RpcMethodHandler = handler._replace(**fields)  # type: ignore[attr-defined]  # the stubs omit it
    return replaced


def behavior_of(handler: grpc.RpcMethodHandler) -> Behavior:
    """The handler's behavior: exactly one of its four is set."""
    behavior = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    return cast(Behavior, behavior)


def wrap_handler(handler: grpc.RpcMethodHandler | None, wrap: BehaviorWrapper) -> grpc.RpcMethodHandler | None:
    """The handler with its behavior (whichever of the four kinds it has) wrapped."""
    if handler is None:
        return None
    for kind in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is not None:
            wrapped = wrap(behavior, handler.request_streaming, handler.response_streaming)
            return replace_handler(handler, **{kind: wrapped})
    return handler


def is_async(behavior: Callable[..., Any] | None) -> bool:
    """A behavior that runs on the event loop: a coroutine function, or an async generator of responses
    (None, a handler's unset behavior, is not)."""
    return inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def transport_of(context: grpc.ServicerContext) -> str:
    """ "grpc", or what an in-process transport's context says it is (e.g. "http")."""
    return getattr(context, "transport", "grpc")


@dataclass
class CallRecord:
    """One call as the access log and the metrics see it."""

    method: str
    transport: str
    peer: str
    route: str | None = None
    started: float = field(default_factory=time.monotonic)
    key_name: str | None = None
    trace_id: str | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    first_request: Message | None = None
    error: BaseException | None = None

    def add_request(self, message: Message | bytes) -> None:
        """Count a request; gRPC's unary requests arrive as bytes, parsed further in (`parsed_request`)."""
        if isinstance(message, bytes):
            self.request_bytes += len(message)
            return
        if self.first_request is None:
            self.first_request = message
        self.request_bytes += message.ByteSize()

    def parsed(self, message: Message) -> None:
        """The request a call's bytes were parsed into, for the access log (`dispatch.parsing`)."""
        if self.first_request is None:
            self.first_request = message

    def add_response(self, message: Any) -> None:
        if isinstance(message, Message):
            self.response_bytes += message.ByteSize()

    def counted(self, requests: Iterable[Message]) -> Iterator[Message]:
        """A request stream that counts what passes through it."""
        for message in requests:
            self.add_request(message)
            yield message

    async def counted_async(self, requests: AsyncIterable[Message]) -> AsyncIterator[Message]:
        """`counted` for a request stream read on the event loop."""
        async for message in requests:
            self.add_request(message)
            yield message

    def status(self, context: grpc.ServicerContext) -> grpc.StatusCode:
        """The call's status: what was aborted with, else derived from the error, else OK."""
        code: grpc.StatusCode | None = context.code()  # type: ignore[attr-defined]  # grpc's contexts have it; the stubs omit it
        if code is not None and code != grpc.StatusCode.OK:
            return code
        if self.error is None:
            return grpc.StatusCode.OK
        if isinstance(self.error, ServingError):
            return self.error.code
        if isinstance(self.error, (GeneratorExit, grpc.RpcError, asyncio.CancelledError)):  # the caller went away
            remaining = context.time_remaining()
            if isinstance(self.error, asyncio.CancelledError) and remaining is not None and remaining <= 0:
                return grpc.StatusCode.DEADLINE_EXCEEDED  # grpc.aio cancels a call whose deadline passed
            return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.UNKNOWN

    def request_field(self, name: str) -> str | None:
        """A string field of the (first) request, or of its `request` message."""
        message = self.first_request
        if message is None:
            return None
        value = _string_field(message, name)
        if value is None and _message_field(message, "request"):
            value = _string_field(cast(Any, message).request, name)  # any message with such a field
        return value or None

    def model_name(self) -> str | None:
        """The model a call names: `model` (or `request.model`), the Open Inference Protocol's
        `model_name`, or TensorFlow Serving's `model_spec.name`."""
        name = self.request_field("model") or self.request_field("model_name")
        message = self.first_request
        if name is None and message is not None and _message_field(message, "model_spec"):
            name = _string_field(cast(Any, message).model_spec, "name") or None
        return name

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000


def current_call() -> CallRecord | None:
    """The record of the call being served in this thread, if any."""
    return _CURRENT.get()


def run_in_call(record: CallRecord, function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` with `record` as the current call."""
    token = _CURRENT.set(record)
    try:
        return function(*args)
    finally:
        _CURRENT.reset(token)


async def run_in_call_async(record: CallRecord, function: Callable[..., Any], *args: Any) -> Any:
    """`await function(*args)` with `record` as the current call."""
    token = _CURRENT.set(record)
    try:
        return await function(*args)
    finally:
        _CURRENT.reset(token)


def _string_field(message: Message, name: str) -> str | None:
    field_ = message.DESCRIPTOR.fields_by_name.get(name)
    if field_ is None or field_.type != FieldDescriptor.TYPE_STRING or field_.is_repeated:
        return None
    value: str = getattr(message, name)
    return value


def _message_field(message: Message, name: str) -> bool:
    field_ = message.DESCRIPTOR.fields_by_name.get(name)
    return field_ is not None and field_.type == FieldDescriptor.TYPE_MESSAGE and not field_.is_repeated

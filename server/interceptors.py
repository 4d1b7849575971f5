"""Server interceptors. `ErrorInterceptor` is the one place exceptions become statuses.

Every interceptor wraps a method's behavior once (see `dispatch.InterceptorChain`)
and keeps its kind: a coroutine function (a servicer method run on the event
loop) gets a coroutine wrapper, an async generator an async generator, a plain
function (run in a worker thread) a plain wrapper.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from server.errors import status_of
from server.telemetry.calls import is_async, wrap_handler


class ErrorInterceptor(grpc.ServerInterceptor):
    """Turns exceptions raised by servicers into gRPC statuses via `errors.status_of`."""

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        return wrap_handler(continuation(handler_call_details), _wrapped)


def _wrapped(behavior: Callable, _request_streaming: bool, response_streaming: bool) -> Callable:
    if is_async(behavior):
        return _wrap_async_stream(behavior) if response_streaming else _wrap_async_unary(behavior)
    return _wrap_stream(behavior) if response_streaming else _wrap_unary(behavior)


def _abort(context: grpc.ServicerContext, exc: Exception) -> Any:
    code, message = status_of(exc)
    return context.abort(code, message)  # grpc.aio's is a coroutine; the others raise


def _wrap_unary(behavior: Callable) -> Callable:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as exc:
            if _aborted(context, exc):
                raise
            _abort(context, exc)

    return wrapper


def _wrap_stream(behavior: Callable) -> Callable:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as exc:
            if _aborted(context, exc):
                raise
            _abort(context, exc)

    return wrapper


def _wrap_async_unary(behavior: Callable) -> Callable:
    async def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return await behavior(request, context)
        except Exception as exc:
            if _aborted(context, exc):
                raise
            outcome = _abort(context, exc)
            if inspect.isawaitable(outcome):
                await outcome

    return wrapper


def _wrap_async_stream(behavior: Callable) -> Callable:
    async def wrapper(request: Any, context: grpc.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for response in behavior(request, context):
                yield response
        except Exception as exc:
            if _aborted(context, exc):
                raise
            outcome = _abort(context, exc)
            if inspect.isawaitable(outcome):
                await outcome

    return wrapper


def _aborted(context: grpc.ServicerContext, exc: Exception) -> bool:
    """True when the servicer already called context.abort (its exception passes through). Generated
    base servicers set UNIMPLEMENTED and raise NotImplementedError: that is answered here, not re-raised
    (grpc would answer it UNKNOWN)."""
    code = getattr(context, "code", lambda: None)()
    return code is not None and code != grpc.StatusCode.OK and not isinstance(exc, NotImplementedError)

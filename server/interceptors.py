"""Server interceptors. `ErrorInterceptor` is the one place exceptions become statuses."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import grpc

from server.errors import status_of


class ErrorInterceptor(grpc.ServerInterceptor):
    """Turns exceptions raised by servicers into gRPC statuses via `errors.status_of`."""

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary:
            return handler._replace(unary_unary=_wrap_unary(handler.unary_unary))
        if handler.stream_unary:
            return handler._replace(stream_unary=_wrap_unary(handler.stream_unary))
        if handler.unary_stream:
            return handler._replace(unary_stream=_wrap_stream(handler.unary_stream))
        return handler._replace(stream_stream=_wrap_stream(handler.stream_stream))


def _abort(context: grpc.ServicerContext, exc: Exception) -> None:
    code, message = status_of(exc)
    context.abort(code, message)


def _wrap_unary(behavior: Callable) -> Callable:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as exc:
            if _aborted(context):
                raise
            _abort(context, exc)

    return wrapper


def _wrap_stream(behavior: Callable) -> Callable:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behavior(request, context)
        except Exception as exc:
            if _aborted(context):
                raise
            _abort(context, exc)

    return wrapper


def _aborted(context: grpc.ServicerContext) -> bool:
    """True when the servicer already called context.abort (its exception passes through)."""
    code = getattr(context, "code", lambda: None)()
    return code is not None and code != grpc.StatusCode.OK

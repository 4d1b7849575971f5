"""One call path for every transport: the registered handlers behind the interceptor chain.

The HTTP shim (and tests) call servicers in process: `Dispatcher.handler()`
runs the server's interceptor chain (errors, auth, logging, metrics, tracing)
as the gRPC server does and returns the `RpcMethodHandler` to invoke, so no
transport needs its own copy of those concerns. The grpc.aio server gets the
same chain through `GrpcHandlers`, with plain (blocking) behaviors moved to
worker threads (server/threaded.py); coroutine behaviors run on the loop.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, NamedTuple, cast

import grpc

from server.errors import InvalidArgument
from server.metadata import Metadata
from server.telemetry.calls import behavior_of, current_call, is_async, replace_handler
from server.threaded import threaded_handler


class _CallDetails(NamedTuple):
    method: str
    invocation_metadata: Metadata


class CallDetails(_CallDetails, grpc.HandlerCallDetails):
    """`grpc.HandlerCallDetails` for an in-process call (a named tuple, as grpc's own)."""


class HandlerRegistry:
    """Collects what the generated `add_*Servicer_to_server` functions register.

    Pass it where those functions expect a server; then `install(server)`
    registers everything on the real gRPC server.
    """

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.methods: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        self.in_process: dict[str, grpc.RpcMethodHandler] = {}  # full method name -> handler; never on gRPC

    def as_server(self) -> grpc.Server:
        """The registry where an `add_*_to_server` function wants a server: they call only the two
        `add_*_handlers` methods below."""
        return cast(grpc.Server, self)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.methods[service] = handlers

    def add_in_process(self, method: str, handler: grpc.RpcMethodHandler) -> None:
        """A method only in-process transports dispatch (through the same interceptors); gRPC never serves it."""
        self.in_process[method] = handler

    @property
    def services(self) -> list[str]:
        """Full names of every registered service (generated code of older grpcio-tools registers
        generic handlers; those that say which service they serve are named too)."""
        named = [h.service_name() for h in self.generic if isinstance(h, grpc.ServiceRpcHandler)]
        return [*self.methods, *(name for name in named if name not in self.methods)]

    def install(self, server: grpc.Server) -> None:
        server.add_generic_rpc_handlers(tuple(self.generic))
        for service, handlers in self.methods.items():
            server.add_registered_method_handlers(service, handlers)

    def find(self, details: grpc.HandlerCallDetails, in_process: bool = True) -> grpc.RpcMethodHandler | None:
        """The handler for a full method name (`/package.Service/Method`); `in_process=False`: as gRPC
        serves it (no in-process-only methods)."""
        handler = self.in_process.get(details.method) if in_process else None
        if handler is not None:
            return handler
        service, _, method = details.method.lstrip("/").rpartition("/")
        handler = self.methods.get(service, {}).get(method)
        if handler is not None:
            return handler
        for generic in self.generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None


class InterceptorChain(grpc.ServerInterceptor):
    """The server's interceptors as one, composed once per method instead of on every call.

    grpc runs every interceptor's `intercept_service` for every call, and each
    of ours wraps the handler anew (closures, a namedtuple copy). What they
    return depends only on the method name: per-call data (metadata, peer,
    deadline) is read from the context when the wrapped behavior runs. So the
    chain is composed the first time a method is called and reused after.
    Interceptors added here must keep to that rule.
    """

    def __init__(self, interceptors: Sequence[grpc.ServerInterceptor]) -> None:
        self.interceptors = tuple(interceptors)
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._lock = threading.Lock()

    def intercept_service(self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            # Composed from the method name alone: no caller's metadata (API keys) is kept with it.
            handler = self._compose(0, continuation)(CallDetails(method, ()))
            if handler is not None:  # unknown names are not kept: callers choose them
                with self._lock:
                    handler = self._handlers.setdefault(method, handler)
        return handler

    def _compose(self, index: int, last: Callable) -> Callable[[grpc.HandlerCallDetails], Any]:
        if index == len(self.interceptors):
            return last
        interceptor = self.interceptors[index]
        inner = self._compose(index + 1, last)
        return lambda details: interceptor.intercept_service(inner, details)


class Dispatcher:
    """Looks up handlers through the interceptor chain, outermost first (as grpc does)."""

    def __init__(self, registry: HandlerRegistry, interceptors: Sequence[grpc.ServerInterceptor]) -> None:
        self.registry = registry
        self.chain = InterceptorChain(interceptors)

    def handler(self, method: str, metadata: Metadata = ()) -> grpc.RpcMethodHandler | None:
        handler: grpc.RpcMethodHandler | None = self.chain.intercept_service(
            self.registry.find, CallDetails(method, tuple(metadata))
        )
        return handler


class GrpcHandlers(grpc.GenericRpcHandler):
    """What the grpc.aio server serves: `registries`' handlers through the chain, composed once per method.

    Plain behaviors run in `executor` (server/threaded.py); coroutine and
    async-generator behaviors run on the event loop.
    """

    def __init__(self, registries: Sequence[HandlerRegistry], chain: InterceptorChain, executor: Executor) -> None:
        self.registries = tuple(registries)
        self.chain = chain
        self.executor = executor
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self.chain.intercept_service(self._find, CallDetails(method, ()))
            if handler is None:
                return None
            if not is_async(_behavior(handler)):
                handler = threaded_handler(handler, self.executor)
            handler = self._handlers.setdefault(method, handler)
        return handler

    def _find(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        for registry in self.registries:
            handler = registry.find(details, in_process=False)
            if handler is not None:
                return parsing(handler)
        return None


def parsing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` taking a unary request as the bytes that came, parsed by its behavior inside the
    interceptor chain: bytes that are no message are INVALID_ARGUMENT, logged and counted like any
    call (grpc's own parsing answers INTERNAL before any interceptor runs). Request streams are
    parsed by grpc as read; `server/threaded.py` turns their failures into INVALID_ARGUMENT."""
    parse = handler.request_deserializer
    if parse is None or handler.request_streaming:
        return handler
    behavior = _behavior(handler)
    wrapped: Callable[..., Any]
    if inspect.isasyncgenfunction(behavior):

        async def parsed_stream(raw: bytes, context: Any) -> Any:
            async for response in behavior(_parsed(parse, raw), context):
                yield response

        wrapped = parsed_stream
    elif is_async(behavior):

        async def parsed_async(raw: bytes, context: Any) -> Any:
            return await behavior(_parsed(parse, raw), context)

        wrapped = parsed_async
    else:

        def parsed_plain(raw: bytes, context: Any) -> Any:
            return behavior(_parsed(parse, raw), context)

        wrapped = parsed_plain
    kind = "unary_stream" if handler.response_streaming else "unary_unary"
    return replace_handler(handler, request_deserializer=None, **{kind: wrapped})


def _parsed(parse: Callable[[bytes], Any], raw: bytes) -> Any:
    try:
        message = parse(raw)
    except Exception as exc:  # DecodeError, or whatever a deserializer raises
        raise InvalidArgument(f"request: the bytes are not a valid message of this method ({exc})") from None
    record = current_call()
    if record is not None:
        record.parsed(message)
    return message


def _behavior(handler: grpc.RpcMethodHandler) -> Callable[..., Any]:
    return behavior_of(handler)

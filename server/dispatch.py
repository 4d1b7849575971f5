"""In-process dispatch of RPCs through the same handlers and interceptors as the gRPC server.

The HTTP shim (and tests) call servicers this way: `Dispatcher.handler()`
runs the server's interceptor chain (errors, auth, logging, metrics, tracing)
exactly as grpc does and returns the `RpcMethodHandler` to invoke, so no
transport needs its own copy of those concerns.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import grpc


class CallDetails(NamedTuple):
    """`grpc.HandlerCallDetails` for an in-process call."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


class HandlerRegistry:
    """Collects what the generated `add_*Servicer_to_server` functions register.

    Pass it where those functions expect a server; then `install(server)`
    registers everything on the real gRPC server.
    """

    def __init__(self) -> None:
        self.generic: list[grpc.GenericRpcHandler] = []
        self.methods: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.methods[service] = handlers

    def install(self, server: grpc.Server) -> None:
        server.add_generic_rpc_handlers(tuple(self.generic))
        for service, handlers in self.methods.items():
            server.add_registered_method_handlers(service, handlers)

    def find(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """The handler for a full method name (`/package.Service/Method`)."""
        service, _, method = details.method.lstrip("/").rpartition("/")
        handler = self.methods.get(service, {}).get(method)
        if handler is not None:
            return handler
        for generic in self.generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None


class Dispatcher:
    """Looks up handlers through the interceptor chain, outermost first (as grpc does)."""

    def __init__(self, registry: HandlerRegistry, interceptors: Sequence[grpc.ServerInterceptor]) -> None:
        self.registry = registry
        self.interceptors = tuple(interceptors)

    def handler(self, method: str, metadata: Sequence[tuple[str, str]] = ()) -> grpc.RpcMethodHandler | None:
        details = CallDetails(method, tuple(metadata))
        return self._continue(0)(details)

    def _continue(self, index: int) -> Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None]:
        if index == len(self.interceptors):
            return self.registry.find
        interceptor = self.interceptors[index]
        return lambda details: interceptor.intercept_service(self._continue(index + 1), details)

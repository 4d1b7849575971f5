"""The interceptor chain is composed once per method and still runs per call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from server.dispatch import CallDetails, Dispatcher, HandlerRegistry, InterceptorChain
from server.telemetry.calls import wrap_handler

METHOD = "/serving.v1.PredictService/ListModels"


class Counting(grpc.ServerInterceptor):
    """Wraps every behavior so each call appends `name`; counts how often it composed."""

    def __init__(self, name: str, seen: list[str]) -> None:
        self.name, self.seen, self.composed = name, seen, 0

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        self.composed += 1
        return wrap_handler(continuation(details), self._wrap)

    def _wrap(self, behavior: Callable, _request_streaming: bool, _response_streaming: bool) -> Callable:
        def wrapped(request: Any, context: Any) -> Any:
            self.seen.append(self.name)
            return behavior(request, context)

        return wrapped


def registry() -> HandlerRegistry:
    found = HandlerRegistry()
    handler: grpc.RpcMethodHandler = grpc.unary_unary_rpc_method_handler(
        lambda request, context: f"answer to {request}"
    )
    found.add_registered_method_handlers("serving.v1.PredictService", {"ListModels": handler})
    return found


def test_the_chain_is_composed_once_per_method_and_runs_in_order_on_every_call() -> None:
    seen: list[str] = []
    outer, inner = Counting("outer", seen), Counting("inner", seen)
    dispatcher = Dispatcher(registry(), [outer, inner])
    answers = [dispatcher.handler(METHOD, (("k", "v"),)).unary_unary(i, None) for i in range(3)]
    assert answers == ["answer to 0", "answer to 1", "answer to 2"]
    assert seen == ["outer", "inner"] * 3
    assert (outer.composed, inner.composed) == (1, 1)


def test_unknown_methods_are_not_kept() -> None:
    interceptor = Counting("only", [])
    chain = InterceptorChain([interceptor])
    found = registry()
    for _ in range(2):
        assert chain.intercept_service(found.find, CallDetails("/serving.v1.PredictService/Nope", ())) is None
    assert interceptor.composed == 2
    assert chain._handlers == {}


def test_registry_names_generic_services_and_keeps_in_process_methods_off_the_server() -> None:
    registry = HandlerRegistry()
    echo: grpc.RpcMethodHandler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    registry.add_registered_method_handlers("pkg.Registered", {"Call": echo})
    registry.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("pkg.Generic", {"Call": echo}),))
    registry.add_in_process("/pkg.Local/Call", echo)

    assert registry.services == ["pkg.Registered", "pkg.Generic"]
    for method in ("/pkg.Registered/Call", "/pkg.Generic/Call", "/pkg.Local/Call"):
        assert registry.find(CallDetails(method, ())) is not None, method
    assert registry.find(CallDetails("/pkg.Local/Other", ())) is None

    class Server:
        def __init__(self) -> None:
            self.services: list[str] = []

        def add_generic_rpc_handlers(self, handlers: tuple) -> None:
            self.services += [h.service_name() for h in handlers]

        def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
            self.services.append(service)

    server = Server()
    registry.install(server)  # type: ignore[arg-type]
    assert sorted(server.services) == ["pkg.Generic", "pkg.Registered"]  # not pkg.Local

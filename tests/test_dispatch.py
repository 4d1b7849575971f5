"""The interceptor chain is composed once per method and still runs per call."""

from __future__ import annotations

from typing import Any, Callable

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
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: f"answer to {request}")
    found.add_registered_method_handlers("serving.v1.PredictService", {"ListModels": handler})
    return found


def test_the_chain_is_composed_once_per_method_and_runs_in_order_on_every_call() -> None:
    seen: list[str] = []
    outer, inner = Counting("outer", seen), Counting("inner", seen)
    dispatcher = Dispatcher(registry(), [outer, inner])
    answers = [dispatcher.handler(METHOD, [("k", "v")]).unary_unary(i, None) for i in range(3)]
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

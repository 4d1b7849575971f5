"""Telemetry benchmark: what auth, the access log, metrics and tracing add to each call.

    .venv/bin/python -m benchmarks.telemetry

1. Per-call cost of the interceptor chain, in process: a trivial unary handler
   dispatched through `Dispatcher` with only the ErrorInterceptor, then adding
   the API-key check, the access log (to a temporary file) and metrics, and
   tracing (no exporter). Rounds are interleaved; medians.
2. Per-batch cost of the batch observer on the Batcher's thread (metrics, and
   handing the batch to the thread that makes two spans per traced request)
   for batches of 1, 8 and 64 requests.

Prints a Markdown report for docs/benchmarks.md.
"""

from __future__ import annotations

import collections
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import cast

import grpc
from opentelemetry import trace

from server.batching import BatchObservation
from server.config import Settings
from server.dispatch import Dispatcher, HandlerRegistry
from server.interceptors import ErrorInterceptor
from server.telemetry.telemetry import Telemetry
from serving.v1 import predict_pb2

METHOD = "/serving.v1.PredictService/ListModels"
Metadatum = collections.namedtuple("Metadatum", ("key", "value"))  # as grpc hands metadata over
METADATA = (Metadatum("authorization", "Bearer bench-key"), Metadatum("x-request-id", "bench"))


class _Context:
    """The ServicerContext surface the interceptors use, shaped like grpc's."""

    def invocation_metadata(self) -> tuple[Metadatum, ...]:
        return METADATA

    def peer(self) -> str:
        return "ipv4:127.0.0.1:40000"

    def code(self) -> None:
        return None

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise RuntimeError(f"{code.name}: {details}")

    def time_remaining(self) -> None:
        return None


def _dispatcher(interceptors: list[grpc.ServerInterceptor]) -> Dispatcher:
    registry = HandlerRegistry()
    response = predict_pb2.ListModelsResponse()
    handler: grpc.RpcMethodHandler = grpc.unary_unary_rpc_method_handler(lambda request, context: response)
    registry.add_registered_method_handlers("serving.v1.PredictService", {"ListModels": handler})
    return Dispatcher(registry, interceptors)


def per_call_us(dispatcher: Dispatcher, calls: int) -> float:
    request, context = predict_pb2.ListModelsRequest(), cast(grpc.ServicerContext, _Context())
    started = time.perf_counter()
    for _ in range(calls):
        dispatcher.handler(METHOD, METADATA).unary_unary(request, context)
    return (time.perf_counter() - started) / calls * 1e6


def observer_us(telemetry: Telemetry, requests: int, repeats: int) -> float:
    with telemetry.tracing.tracer.start_as_current_span("caller"):
        token = telemetry.batch_observer.request_queued()
    now = time.monotonic()
    observation = BatchObservation(
        "digits", requests, 0, now, now + 0.001, tuple((token, now) for _ in range(requests))
    )
    started = time.perf_counter()
    for _ in range(repeats):
        telemetry.batch_observer.batch_done(observation)
    return (time.perf_counter() - started) / repeats * 1e6


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(
            _env_file=None,
            api_keys="bench:bench-key",
            access_log_path=str(Path(folder) / "access.log"),
            tracing_enabled=True,
        )
        telemetry = Telemetry(settings)
        tracing, calls, auth = telemetry.interceptors
        chains = {
            "errors only": _dispatcher([ErrorInterceptor()]),
            "+ auth": _dispatcher([auth, ErrorInterceptor()]),
            "+ access log and metrics": _dispatcher([calls, auth, ErrorInterceptor()]),
            "+ tracing (the full chain)": _dispatcher([tracing, calls, auth, ErrorInterceptor()]),
        }
        results: dict[str, list[float]] = {name: [] for name in chains}
        for dispatcher in chains.values():
            per_call_us(dispatcher, 2000)  # warm up
        for _ in range(7):
            for name, dispatcher in chains.items():
                results[name].append(per_call_us(dispatcher, 5000))
        batches = {n: observer_us(telemetry, n, 300) for n in (1, 8, 64)}
        telemetry.close()
    base = statistics.median(results["errors only"])
    print(
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}\n"
    )
    print("| interceptor chain | µs per call (median of 7 x 5000) | added |")
    print("| --- | --- | --- |")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median - base:+.1f} |")
    print("\n| batch observer (Batcher thread), requests per batch | µs per batch | µs per request |")
    print("| --- | --- | --- |")
    for n, us in batches.items():
        print(f"| {n} | {us:.1f} | {us / n:.1f} |")
    assert trace.get_current_span() is trace.INVALID_SPAN


if __name__ == "__main__":
    main()

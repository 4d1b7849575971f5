"""HTTP/JSON shim benchmark: JSON Predict through the shim beside gRPC unary, on one server,
and TensorFlow Serving's and the Open Inference Protocol's REST and gRPC APIs beside them.

    .venv/bin/python -m benchmarks.http [--rounds 3] [--duration 5]

One `python -m server` (default settings plus TFSERVING_REST_ADDRESS, the
demo model `digits`) serves every transport. At each concurrency (8 and 64)
and in each round, these take turns, each a closed loop of 1-row requests:
the gRPC load generator (`python -m client bench`, a separate process, raw
tensors); this module's HTTP load generator (aiohttp client in this process,
one keep-alive connection per caller) with JSON `floatVal` input and typed
output through the shim, and with TF Serving's `{"instances": ...}` body; and
a `grpc.aio` loop in this process calling TF Serving's
`PredictionService/Predict` (TensorProto input); the Open Inference
Protocol's `ModelInfer` the same way (raw input contents), and its REST infer
through the shim (flat JSON `data`). Medians over the rounds are reported. Only loopback is
targeted; every run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import numpy as np

from benchmarks.core import client_bench
from client.bench_result import latency_summary
from tests.support.servers import ServerProcess, free_port

CONCURRENCY = [8, 64]
TRANSPORTS = ("gRPC unary", "HTTP JSON", "TF Serving gRPC", "TF Serving REST", "V2 gRPC", "V2 REST")
REQUEST_TIMEOUT_S = 10.0


def predict_body(seed: int = 0) -> bytes:
    """One 8x8x1 row as a JSON PredictRequest (typed floats, the JSON caller's way)."""
    x = np.random.default_rng(seed).random((1, 8, 8, 1), dtype=np.float32)
    tensor = {"dtype": "DATA_TYPE_FLOAT32", "shape": list(x.shape), "floatVal": [round(float(v), 6) for v in x.ravel()]}
    return json.dumps({"inputs": {"image": {"tensor": tensor}}}).encode()


def tfserving_body(seed: int = 0) -> bytes:
    """The same row as TensorFlow Serving's REST predict body."""
    x = np.random.default_rng(seed).random((1, 8, 8, 1), dtype=np.float32)
    return json.dumps({"instances": np.round(x, 6).tolist()}).encode()


def v2_body(seed: int = 0) -> bytes:
    """The same row as an Open Inference Protocol REST infer body (flat data)."""
    x = np.random.default_rng(seed).random((1, 8, 8, 1), dtype=np.float32)
    tensor = {"name": "image", "shape": list(x.shape), "datatype": "FP32", "data": np.round(x, 6).ravel().tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


async def closed_loop(send: Callable[[], Awaitable[str]], concurrency: int, duration: float, warmup: float) -> dict:
    """`concurrency` callers each awaiting `send()` (its outcome: "OK" or an error name) in a loop."""
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    stop_at = measure_from + duration
    latencies: list[float] = []
    errors: Counter[str] = Counter()

    async def caller() -> None:
        while (started := loop.time()) < stop_at:
            outcome = await send()
            if started >= measure_from:
                if outcome == "OK":
                    latencies.append((loop.time() - started) * 1000)
                else:
                    errors[outcome] += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    measured = len(latencies) + sum(errors.values())
    return {"requests_per_s": measured / duration, "errors": dict(errors), **latency_summary(latencies)}


async def tfserving_grpc_bench(target: str, concurrency: int, duration: float, warmup: float = 1.0) -> dict:
    """Closed-loop TF Serving gRPC Predict (one grpc.aio channel); requests/s and latency."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["image"].CopyFrom(
        tf.make_tensor_proto(np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32))
    )
    return await grpc_aio_bench(
        target,
        lambda channel: prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict,
        request,
        concurrency,
        duration,
        warmup,
    )


async def grpc_aio_bench(
    target: str, method: Callable, request: object, concurrency: int, duration: float, warmup: float
) -> dict:
    """Closed-loop calls of `method(channel)` with `request` on one grpc.aio channel."""
    import grpc

    async with grpc.aio.insecure_channel(target) as channel:
        call = method(channel)

        async def send() -> str:
            try:
                await call(request, timeout=REQUEST_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            return "OK"

        return await closed_loop(send, concurrency, duration, warmup)


async def v2_grpc_bench(target: str, concurrency: int, duration: float, warmup: float = 1.0) -> dict:
    """Closed-loop Open Inference Protocol ModelInfer (one grpc.aio channel, raw input contents)."""
    from inference import open_inference_pb2, open_inference_pb2_grpc

    x = np.random.default_rng(0).random((1, 8, 8, 1), dtype=np.float32)
    request = open_inference_pb2.ModelInferRequest(model_name="digits", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="image", datatype="FP32", shape=x.shape)
    return await grpc_aio_bench(
        target,
        lambda channel: open_inference_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer,
        request,
        concurrency,
        duration,
        warmup,
    )


async def http_bench(
    url: str, concurrency: int, duration: float, warmup: float = 1.0, body: bytes | None = None
) -> dict:
    """Closed-loop JSON Predict at `concurrency`; requests/s and latency over the measured window."""
    body = predict_body() if body is None else body
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send() -> str:
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as reply:
                    await reply.read()
                    return "OK" if reply.status == 200 else str(reply.status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                return type(exc).__name__

        return await closed_loop(send, concurrency, duration, warmup)


def runs(rounds: int, duration: float) -> dict[tuple[str, int], list[dict]]:
    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tfserving_port = free_port()
        env = {
            "UPLOAD_DIR": str(Path(tmp) / "uploads"),
            "ACCESS_LOG_PATH": str(Path(tmp) / "access.log"),
            "TFSERVING_REST_ADDRESS": f"127.0.0.1:{tfserving_port}",
        }
        server = ServerProcess(Path(tmp) / "server.log", env=env)
        try:
            server.wait_serving()
            url = f"{server.http_url}/v1/models/digits:predict"
            tfserving_url = f"http://127.0.0.1:{tfserving_port}/v1/models/digits:predict"
            v2_url = f"{server.http_url}/v2/models/digits/infer"
            for _ in range(rounds):
                for concurrency in CONCURRENCY:
                    results.setdefault(("gRPC unary", concurrency), []).append(
                        client_bench(server.target, concurrency, duration)
                    )
                    results.setdefault(("HTTP JSON", concurrency), []).append(
                        asyncio.run(http_bench(url, concurrency, duration))
                    )
                    results.setdefault(("TF Serving gRPC", concurrency), []).append(
                        asyncio.run(tfserving_grpc_bench(server.target, concurrency, duration))
                    )
                    results.setdefault(("TF Serving REST", concurrency), []).append(
                        asyncio.run(http_bench(tfserving_url, concurrency, duration, body=tfserving_body()))
                    )
                    results.setdefault(("V2 gRPC", concurrency), []).append(
                        asyncio.run(v2_grpc_bench(server.target, concurrency, duration))
                    )
                    results.setdefault(("V2 REST", concurrency), []).append(
                        asyncio.run(http_bench(v2_url, concurrency, duration, body=v2_body()))
                    )
        finally:
            server.stop()
    return results


def report(results: dict[tuple[str, int], list[dict]], rounds: int, duration: float) -> str:
    def median(key: tuple[str, int], field: str) -> float:
        return statistics.median(r[field] for r in results[key])

    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, CPU only. "
        f"One server (default settings), {rounds} interleaved rounds of {duration:.0f} s per cell, medians shown; "
        "load generators on the same machine.",
        "",
        "| concurrency | transport | requests/s | p50 ms | p99 ms | non-OK |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for concurrency in CONCURRENCY:
        for transport in TRANSPORTS:
            key = (transport, concurrency)
            errors = sum(sum(r["errors"].values()) for r in results[key])
            lines.append(
                f"| {concurrency} | {transport} | {median(key, 'requests_per_s'):,.0f} | "
                f"{median(key, 'p50_ms'):.2f} | {median(key, 'p99_ms'):.2f} | {errors} |"
            )
    ratios = ", ".join(
        f"{median(('HTTP JSON', c), 'requests_per_s') / median(('gRPC unary', c), 'requests_per_s'):.2f}x "
        f"at concurrency {c}"
        for c in CONCURRENCY
    )
    lines += ["", f"HTTP JSON / gRPC unary requests/s (same run): {ratios} (target: at least 0.5x)."]
    for transport in ("TF Serving gRPC", "TF Serving REST", "V2 gRPC", "V2 REST"):
        ratios = ", ".join(
            f"{median((transport, c), 'requests_per_s') / median(('gRPC unary', c), 'requests_per_s'):.2f}x "
            f"at concurrency {c}"
            for c in CONCURRENCY
        )
        lines.append(f"{transport} / gRPC unary requests/s (same run): {ratios}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    args = parser.parse_args()
    started = time.monotonic()
    results = runs(args.rounds, args.duration)
    print(report(results, args.rounds, args.duration))
    print(f"\n(benchmark took {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()

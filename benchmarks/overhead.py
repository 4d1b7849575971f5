"""Where a unary Predict's server CPU goes: the same load against servers built up a piece at a time.

    .venv/bin/python -m benchmarks.overhead [--rounds 3] [--duration 3] [--concurrency 64]

Servers, each a subprocess on a free loopback port, driven in interleaved
rounds by `python -m client bench` (1 row per request); the server's CPU time
is read from /proc/<pid>/stat around each run:

1. echo: a `grpc.server` (128 threads) whose Predict returns a fixed response;
2. batcher, fake model: Predict decodes the tensor, runs it through a real
   Batcher whose model sleeps 0.5 ms (GIL released), and encodes the rows;
3. the server (`python -m server`, default settings);
4. the server with MAX_BATCH_SIZE=1 (no batching).

Prints a Markdown table (medians) for docs/benchmarks.md. Loopback only,
bounded in time. `serve echo|fake ADDRESS` runs one of the first two servers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.core import client_bench
from tests.support.servers import ServerProcess, free_port, health_status, wait_for

FAKE_MODEL_SECONDS = 0.0005
TICKS = os.sysconf("SC_CLK_TCK")


def serve(kind: str, address: str) -> None:
    """Serve PredictService (Predict, GetModel) and health on `address` until killed."""
    import grpc
    import numpy as np
    from grpc_health.v1 import health, health_pb2_grpc

    from server.batching import Batcher, BatchingConfig
    from serving.v1 import model_pb2, predict_pb2, predict_pb2_grpc, tensor_pb2
    from wire import codec

    metadata = model_pb2.ModelMetadata(
        name="digits",
        version=1,
        inputs=[tensor_pb2.TensorSpec(name="image", dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[-1, 8, 8, 1])],
    )
    fixed = predict_pb2.PredictResponse(request_id="x" * 32, model=model_pb2.ModelRef(name="digits", version=1))

    def fake_model(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(FAKE_MODEL_SECONDS)
        return {"probabilities": np.zeros((batch["image"].shape[0], 10), np.float32)}

    batcher = Batcher(fake_model, BatchingConfig(), "digits")

    class Servicer(predict_pb2_grpc.PredictServiceServicer):
        def Predict(self, request, context):  # gRPC's method name
            if kind == "echo":
                return fixed
            rows = batcher.run({"image": codec.to_numpy(request.inputs["image"].tensor, "image")})
            response = predict_pb2.PredictResponse(request_id="x" * 32, model=fixed.model)
            response.outputs["probabilities"].CopyFrom(codec.from_numpy(rows["probabilities"], raw=True))
            return response

        def GetModel(self, request, context):
            return predict_pb2.GetModelResponse(model=metadata)

    server = grpc.server(ThreadPoolExecutor(128, thread_name_prefix="rpc"))
    predict_pb2_grpc.add_PredictServiceServicer_to_server(Servicer(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_insecure_port(address)
    server.start()
    server.wait_for_termination()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    if not Path("/proc/self/stat").exists():
        raise SystemExit("needs /proc (Linux) to read the server's CPU time")

    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, tuple[subprocess.Popen, str, ServerProcess | None]] = {}
        try:
            for kind in ("echo", "fake"):
                target = f"127.0.0.1:{free_port()}"
                proc = subprocess.Popen(
                    [sys.executable, "-m", "benchmarks.overhead", "serve", kind, target],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                servers[kind] = (proc, target, None)
            for name, env in (("server", {}), ("server, MAX_BATCH_SIZE=1", {"MAX_BATCH_SIZE": "1"})):
                server = ServerProcess(Path(tmp) / f"{len(servers)}.log", env=env)
                servers[name] = (server.process, server.target, server)
            for name, (_proc, target, server) in servers.items():
                if server is not None:
                    server.wait_serving()
                else:
                    wait_for(lambda target=target: health_status(target) == "SERVING", 60, f"the {name} server")
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
            for _ in range(args.rounds):
                for name, (proc, target, _server) in servers.items():
                    before = cpu_seconds(proc.pid)
                    run = client_bench(target, args.concurrency, args.duration, warmup=0)  # every request counted
                    used = cpu_seconds(proc.pid) - before
                    results[name].append((run["requests_per_s"], used * 1000 / max(run["requests"], 1)))
        finally:
            for proc, _target, server in servers.values():
                if server is not None:
                    server.stop()
                else:
                    proc.terminate()
                    proc.wait(30)

    labels = {
        "echo": "echo servicer",
        "fake": "+ Batcher, fake 0.5 ms model",
        "server": "the server (default settings)",
        "server, MAX_BATCH_SIZE=1": "the server, MAX_BATCH_SIZE=1",
    }
    print(f"Concurrency {args.concurrency}, {args.rounds} interleaved rounds of {args.duration:g} s, medians.\n")
    print("| server | requests/s | server CPU ms per request |")
    print("| --- | ---: | ---: |")
    for name, runs in results.items():
        rps = statistics.median(r for r, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        print(f"| {labels[name]} | {rps:,.0f} | {cpu:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        main()

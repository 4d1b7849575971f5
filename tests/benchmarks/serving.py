"""Serving benchmark: the server against reference servers on the same model, load from h2load.

    make bench     (= .venv/bin/python -m tests.benchmarks.serving)

One run, everything side by side, on the digits demo model:

- servers, each started by this harness on free loopback ports, one at a time:
  `server` (`python -m server`, default settings: access log and metrics on),
  `echo` (grpc.aio, parses the request, answers a fixed real-sized response:
  the transport's ceiling) and `plain` (threaded grpcio calling the SavedModel
  once per request: what a user would write without us); see references.py;
- the load generator is h2load (Debian's nghttp2-client), which costs far less
  CPU per request than the servers it measures. It sees HTTP status only, so
  a correctness pass with a gRPC client checks each server's grpc-status and
  answer first;
- unary Predict over gRPC at concurrency 1, 8 and 64 (1 row per request), the
  server's V2 gRPC ModelInfer and V2 REST JSON (HTTP/1.1 keep-alive) at 64;
- requests/s, p50 and p99 (from h2load's per-request log), server CPU in
  cores (from /proc), and for the server the mean rows per model call (from
  its /metrics); several interleaved rounds, medians;
- the model's in-process limit: its samples/s at batch 1..512.

Prints a Markdown report (for docs/benchmarks.md) and writes
docs/bench-digits.png (requests/s and p99 against concurrency). Loopback only,
bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tests.benchmarks.core import model_throughput
from tests.servers import MODEL_DIR, ROOT, ServerProcess, free_port
from tests.tasks.redis_servers import RedisServer

CONCURRENCY = [1, 8, 64]
KINDS = ("server", "server x2", "echo", "plain")
SHAPE = [8, 8, 1]
DOCS = ROOT / "docs"


@dataclass
class Load:
    """One h2load measurement."""

    requests_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int
    cores: float
    rows_per_call: float | None = None


def grpc_frame(message: bytes) -> bytes:
    """A message as one gRPC length-prefixed frame (uncompressed)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def predict_body() -> bytes:
    from server.models import codec
    from serving.v1 import predict_pb2

    request = predict_pb2.PredictRequest(model="digits", top_k=-1)
    x = np.random.default_rng(0).random([1, *SHAPE], dtype=np.float32)
    request.inputs["image"].tensor.CopyFrom(codec.from_numpy(x, raw=True))
    return request.SerializeToString()


def v2_grpc_body() -> bytes:
    from inference import open_inference_pb2 as pb

    x = np.random.default_rng(0).random([1, *SHAPE], dtype=np.float32)
    request = pb.ModelInferRequest(model_name="digits")
    request.inputs.add(name="image", datatype="FP32", shape=[1, *SHAPE])
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def v2_json_body() -> bytes:
    x = np.random.default_rng(0).random([1, *SHAPE], dtype=np.float32)
    return json.dumps({"inputs": [{"name": "image", "shape": [1, *SHAPE], "datatype": "FP32",
                                   "data": x.ravel().round(6).tolist()}]}).encode()


def h2load(url: str, body: Path, concurrency: int, duration: float, headers: list[str], h1: bool,
           log: Path) -> tuple[float, int, list[float]]:
    """(requests/s, failed, per-request ms) of one timed h2load run."""
    connections = 1 if concurrency == 1 else min(concurrency, 4)
    command = [
        "h2load", "-D", f"{max(1, round(duration))}", "--warm-up-time", "1", "-c", str(connections), "-d", str(body),
        "--log-file", str(log), *(arg for h in headers for arg in ("-H", h)),
    ]
    command += ["--h1", "-c", str(concurrency)] if h1 else ["-m", str(max(1, concurrency // connections))]
    out = subprocess.run([*command, url], capture_output=True, text=True, timeout=duration + 60)
    text = out.stdout
    found = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    failed = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed", text)
    if found is None or failed is None:
        raise RuntimeError(f"h2load gave no result:\n{text}\n{out.stderr}")
    times = []
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            times.append(int(parts[2]) / 1000)
    return float(found.group(1)), int(failed.group(1)), times


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (SERVER_PROCESSES runs its servers as children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(cpu_seconds(int(child)) for child in children)


def batch_counters(http_url: str) -> tuple[float, float]:
    text = urllib.request.urlopen(http_url + "/metrics", timeout=10).read().decode()
    count = total = 0.0
    for name, value in re.findall(r'^serving_batch_size_(count|sum)\{model="digits"\} (\S+)$', text, re.M):
        if name == "count":
            count = float(value)
        else:
            total = float(value)
    return count, total


class Reference:
    """A reference server (references.py) in a subprocess."""

    def __init__(self, kind: str) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.benchmarks.references", kind, "--port", str(self.port),
             "--model-dir", str(MODEL_DIR), "--model", "digits", "--shape", ",".join(map(str, SHAPE))],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"reference server {kind} did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def check_predict(target: str) -> None:
    """The correctness pass: a Predict answers OK with ten probabilities (h2load cannot see grpc-status)."""
    import grpc

    from serving.v1 import predict_pb2

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/serving.v1.PredictService/Predict",
                                   request_serializer=lambda b: b, response_deserializer=predict_pb2.PredictResponse.FromString)
        response = call(predict_body(), timeout=10)
    shape = list(response.outputs["probabilities"].shape.dims if hasattr(response.outputs["probabilities"].shape, "dims")
                 else response.outputs["probabilities"].shape)
    if shape != [1, 10]:
        raise RuntimeError(f"{target}: unexpected Predict answer shape {shape}")


GRPC_HEADERS = ["content-type: application/grpc", "te: trailers"]


def measure(name: str, pid: int, url: str, body: Path, concurrency: int, duration: float, h1: bool,
            tmp: Path, http_url: str | None) -> Load:
    headers = ["content-type: application/json"] if h1 else GRPC_HEADERS
    before_cpu = cpu_seconds(pid)
    before_batches = batch_counters(http_url) if http_url else None
    started = time.monotonic()
    rate, failed, times = h2load(url, body, concurrency, duration, headers, h1, tmp / f"{name}-{concurrency}.log")
    wall = time.monotonic() - started
    cores = (cpu_seconds(pid) - before_cpu) / wall
    rows = None
    if before_batches is not None and http_url:
        count, total = batch_counters(http_url)
        rows = (total - before_batches[1]) / max(count - before_batches[0], 1)
    times.sort()
    return Load(rate, times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))], failed, cores, rows)


def run_rounds(rounds: int, duration: float) -> dict[tuple[str, int], list[Load]]:
    results: dict[tuple[str, int], list[Load]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        bodies = {"predict": tmp / "predict.bin", "v2": tmp / "v2.bin", "v2json": tmp / "v2.json"}
        bodies["predict"].write_bytes(grpc_frame(predict_body()))
        bodies["v2"].write_bytes(grpc_frame(v2_grpc_body()))
        bodies["v2json"].write_bytes(v2_json_body())
        redis = RedisServer(tmp / "redis")  # the task store that SERVER_PROCESSES=2 needs
        for number in range(rounds):
            for kind in KINDS:
                if kind.startswith("server"):
                    env = {"SERVER_PROCESSES": "2", "REDIS_ADDRESS": redis.address} if kind == "server x2" else {}
                    proc = ServerProcess(tmp / f"{kind}-{number}.log", env=env)
                    proc.wait_serving()
                    pid, target, http_url, stop = proc.process.pid, proc.target, proc.http_url, proc.stop
                else:
                    ref = Reference(kind)
                    pid, target, http_url, stop = ref.process.pid, ref.target, None, ref.stop
                try:
                    check_predict(target)
                    for concurrency in CONCURRENCY:
                        url = f"http://{target}/serving.v1.PredictService/Predict"
                        load = measure(kind, pid, url, bodies["predict"], concurrency, duration, False, tmp, http_url)
                        results.setdefault((kind, concurrency), []).append(load)
                    if kind == "server" and http_url:
                        url = f"http://{target}/inference.GRPCInferenceService/ModelInfer"
                        load = measure("v2grpc", pid, url, bodies["v2"], 64, duration, False, tmp, http_url)
                        results.setdefault(("server V2 gRPC", 64), []).append(load)
                        url = f"{http_url}/v2/models/digits/infer"
                        load = measure("v2rest", pid, url, bodies["v2json"], 64, duration, True, tmp, http_url)
                        results.setdefault(("server V2 REST", 64), []).append(load)
                finally:
                    stop()
        redis.stop()
    return results


def med(loads: list[Load], key: str) -> float:
    values = [getattr(load, key) for load in loads if getattr(load, key) is not None]
    return statistics.median(values) if values else float("nan")


def plot(results: dict[tuple[str, int], list[Load]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in KINDS:
        left.plot(CONCURRENCY, [med(results[(kind, c)], "requests_per_s") for c in CONCURRENCY], marker="o", label=kind)
        right.plot(CONCURRENCY, [med(results[(kind, c)], "p99_ms") for c in CONCURRENCY], marker="o", label=kind)
    for axis, title in ((left, "requests/s"), (right, "p99 ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency (h2load streams)")
        axis.set_title(f"digits, unary Predict: {title}")
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def report(model_rows: list[tuple[int, float, float]], results: dict[tuple[str, int], list[Load]],
           rounds: int, duration: float) -> str:
    lines = [
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()}: {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, CPU only. "
        f"h2load, {rounds} interleaved rounds of {duration:.0f} s per cell, medians shown. "
        "Command: `make bench`.",
        "",
        "| concurrency | server | requests/s | p50 ms | p99 ms | failed | server CPU cores | rows per model call |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (kind, concurrency), loads in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows = med(loads, "rows_per_call")
        lines.append(
            f"| {concurrency} | {kind} | {med(loads, 'requests_per_s'):,.0f} | {med(loads, 'p50_ms'):.2f} | "
            f"{med(loads, 'p99_ms'):.2f} | {sum(load.failed for load in loads)} | {med(loads, 'cores'):.2f} | "
            f"{'' if rows != rows else f'{rows:.1f}'} |"
        )
    rate = {key: med(loads, "requests_per_s") for key, loads in results.items()}
    p50 = {key: med(loads, "p50_ms") for key, loads in results.items()}
    p99 = {key: med(loads, "p99_ms") for key, loads in results.items()}
    lines += [
        "",
        "In-process model call (`LoadedModel.run_batch`), median of repeated calls: "
        + ", ".join(f"batch {b}: {ms:.3f} ms ({rps:,.0f} rows/s)" for b, ms, rps in model_rows) + ".",
        "",
        "Targets (same run):",
        f"- concurrency 64: {rate[('server', 64)] / rate[('plain', 64)]:.2f}x the once-per-request server "
        f"(target 2.5x), {rate[('server', 64)] / rate[('echo', 64)]:.2f}x the echo server (target 0.6x), "
        f"p99/p50 {p99[('server', 64)] / p50[('server', 64)]:.2f} (target at most 2).",
        f"- concurrency 1: p50 {p50[('server', 1)]:.2f} ms against the once-per-request server's "
        f"{p50[('plain', 1)]:.2f} ms (target: no higher).",
        f"- SERVER_PROCESSES=2 / one process: "
        + ", ".join(f"{rate[('server x2', c)] / rate[('server', c)]:.2f}x at concurrency {c}" for c in CONCURRENCY)
        + " (target above 1.3x at 64).",
        f"- V2 REST JSON / V2 gRPC at concurrency 64: "
        f"{rate[('server V2 REST', 64)] / rate[('server V2 gRPC', 64)]:.2f}x (target 0.8x).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--plot", type=Path, default=DOCS / "bench-digits.png")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    model_rows = model_throughput(args.repeats)
    results = run_rounds(args.rounds, args.duration)
    print(report(model_rows, results, args.rounds, args.duration))
    try:
        plot(results, args.plot)
        print(f"\nplot: {args.plot}")
    except ImportError:
        print("\n(no plot: matplotlib is not installed)")


if __name__ == "__main__":
    main()

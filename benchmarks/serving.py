"""Serving benchmark: the server against reference servers on the same model, load from h2load.

    make bench     (= .venv/bin/python -m benchmarks.serving)

One run, everything side by side, on two models: the digits demo model, and
MobileNetV2 built in code (`keras.applications.MobileNetV2(weights=None)`,
seed 0, exported as a SavedModel under .cache/bench-models/, never downloaded):

- servers, each started by this harness on free loopback ports, one at a time:
  `server` (`python -m server`, default settings: access log and metrics on),
  `echo` (grpc.aio, parses the request, answers a fixed real-sized response:
  the transport's ceiling) and `plain` (threaded grpcio calling the SavedModel
  once per request: what a user would write without us); see references.py;
- the load generator is h2load (Debian's nghttp2-client), which costs far less
  CPU per request than the servers it measures. It sees HTTP status only, so
  a correctness pass with a gRPC client checks each server's grpc-status and
  answer first;
- unary Predict over gRPC, 1 row per request, at concurrency 1, 8 and 64
  (digits) and 1, 16 and 32 (MobileNetV2); on digits also the server's V2
  gRPC ModelInfer and V2 REST JSON (HTTP/1.1 keep-alive) at 64;
- requests/s, p50 and p99 (from h2load's per-request log), server CPU in
  cores (from /proc), and for the server the mean rows per model call (from
  its /metrics); several interleaved rounds, medians;
- the model's in-process limit: its samples/s at batch 1..512 (digits) and
  1..32 (MobileNetV2), under the same TensorFlow settings as the servers.

`--env KEY=VALUE` sets a variable for every server, reference and the
in-process limit (e.g. TF_ENABLE_ONEDNN_OPTS=0), `--models` picks the models.
Prints a Markdown report (for docs/benchmarks.md) and writes
docs/bench-<model>.png (requests/s and p99 against concurrency). Loopback
only, bounded in time.
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tests.support.redis_servers import RedisServer
from tests.support.servers import MODEL_DIR, ROOT, ServerProcess, free_port

KINDS = ("server", "server x2", "echo", "plain")


@dataclass(frozen=True)
class BenchModel:
    """A model the benchmark serves: its repository, input, output and the load it is measured at."""

    name: str
    model_dir: Path
    input: str
    shape: tuple[int, ...]
    output: str
    outputs: int
    concurrency: tuple[int, ...]
    batches: tuple[int, ...]  # in-process limit
    v2: bool = False  # also V2 gRPC and V2 REST JSON at the highest concurrency


DIGITS = BenchModel(
    "digits",
    MODEL_DIR,
    "image",
    (8, 8, 1),
    "probabilities",
    10,
    (1, 8, 64),
    (1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
    v2=True,
)


def mobilenet() -> BenchModel:
    from benchmarks.models import mobilenet_v2

    return BenchModel(
        "mobilenet_v2",
        mobilenet_v2(),
        "keras_tensor",
        (224, 224, 3),
        "output_0",
        1000,
        (1, 16, 32),
        (1, 2, 4, 8, 16, 32),
    )


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


def predict_body(model: BenchModel = DIGITS) -> bytes:
    from serving.v1 import predict_pb2
    from wire import codec

    request = predict_pb2.PredictRequest(model=model.name, top_k=-1)
    x = np.random.default_rng(0).random([1, *model.shape], dtype=np.float32)
    request.inputs[model.input].tensor.CopyFrom(codec.from_numpy(x, raw=True))
    return request.SerializeToString()


def v2_grpc_body(model: BenchModel) -> bytes:
    from inference import open_inference_pb2 as pb

    x = np.random.default_rng(0).random([1, *model.shape], dtype=np.float32)
    request = pb.ModelInferRequest(model_name=model.name)
    request.inputs.add(name=model.input, datatype="FP32", shape=[1, *model.shape])
    request.raw_input_contents.append(x.tobytes())
    return request.SerializeToString()


def v2_json_body(model: BenchModel) -> bytes:
    x = np.random.default_rng(0).random([1, *model.shape], dtype=np.float32)
    return json.dumps(
        {
            "inputs": [
                {
                    "name": model.input,
                    "shape": [1, *model.shape],
                    "datatype": "FP32",
                    "data": x.ravel().round(6).tolist(),
                }
            ]
        }
    ).encode()


def model_limit(model: BenchModel, repeats: int) -> list[tuple[int, float, float]]:
    """(batch, median ms per call, samples/s) of the model called in process, as the server loads it."""
    from server.batching import BatchingConfig
    from server.models.device import choose_device
    from server.models.model import load_model

    loaded = load_model(model.name, 1, model.model_dir / model.name / "1", choose_device(0, 0), BatchingConfig())
    rows = []
    rng = np.random.default_rng(0)
    for batch in model.batches:
        x = {model.input: rng.random((batch, *model.shape), dtype=np.float32)}
        for _ in range(3):
            loaded.run_batch(x)
        times = []
        budget = time.monotonic() + 5.0
        for _ in range(repeats):
            start = time.perf_counter()
            loaded.run_batch(x)
            times.append(time.perf_counter() - start)
            if time.monotonic() > budget and len(times) >= 5:
                break
        ms = statistics.median(times) * 1000
        rows.append((batch, ms, batch / (ms / 1000)))
    loaded.close()
    return rows


def h2load(
    url: str, body: Path, concurrency: int, duration: float, headers: list[str], h1: bool, log: Path
) -> tuple[float, int, list[float]]:
    """(requests/s, failed, per-request ms) of one timed h2load run."""
    connections = 1 if concurrency == 1 else min(concurrency, 4)
    command = [
        "h2load",
        "-D",
        f"{max(1, round(duration))}",
        "--warm-up-time",
        "1",
        "-c",
        str(connections),
        "-d",
        str(body),
        "--log-file",
        str(log),
        *(arg for h in headers for arg in ("-H", h)),
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


def batch_counters(http_url: str, model: str) -> tuple[float, float]:
    text = urllib.request.urlopen(http_url + "/metrics", timeout=10).read().decode()
    count = total = 0.0
    for name, value in re.findall(r'^serving_batch_size_(count|sum)\{model="' + model + r'"\} (\S+)$', text, re.M):
        if name == "count":
            count = float(value)
        else:
            total = float(value)
    return count, total


class Reference:
    """A reference server (references.py) in a subprocess."""

    def __init__(self, kind: str, model: BenchModel, env: dict[str, str]) -> None:
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.references",
                kind,
                "--port",
                str(self.port),
                "--model-dir",
                str(model.model_dir),
                "--model",
                model.name,
                "--shape",
                ",".join(map(str, model.shape)),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=dict(os.environ, **env),
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


def check_predict(target: str, model: BenchModel) -> None:
    """The correctness pass: a Predict answers OK with the model's scores (h2load cannot see grpc-status)."""
    import grpc

    from serving.v1 import predict_pb2

    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        call = channel.unary_unary(
            "/serving.v1.PredictService/Predict",
            request_serializer=lambda b: b,
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )
        response = call(predict_body(model), timeout=60)
    shape = list(response.outputs[model.output].shape)
    if shape != [1, model.outputs]:
        raise RuntimeError(f"{target}: unexpected Predict answer shape {shape}")


GRPC_HEADERS = ["content-type: application/grpc", "te: trailers"]


def measure(
    name: str,
    pid: int,
    url: str,
    body: Path,
    concurrency: int,
    duration: float,
    h1: bool,
    tmp: Path,
    http_url: str | None,
    model: str = "digits",
) -> Load:
    headers = ["content-type: application/json"] if h1 else GRPC_HEADERS
    before_cpu = cpu_seconds(pid)
    before_batches = batch_counters(http_url, model) if http_url else None
    started = time.monotonic()
    rate, failed, times = h2load(url, body, concurrency, duration, headers, h1, tmp / f"{name}-{concurrency}.log")
    wall = time.monotonic() - started
    cores = (cpu_seconds(pid) - before_cpu) / wall
    rows = None
    if before_batches is not None and http_url:
        count, total = batch_counters(http_url, model)
        rows = (total - before_batches[1]) / max(count - before_batches[0], 1)
    times.sort()
    return Load(rate, times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))], failed, cores, rows)


def run_rounds(
    model: BenchModel, rounds: int, duration: float, env: dict[str, str]
) -> dict[tuple[str, int], list[Load]]:
    results: dict[tuple[str, int], list[Load]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        bodies = {"predict": tmp / "predict.bin", "v2": tmp / "v2.bin", "v2json": tmp / "v2.json"}
        bodies["predict"].write_bytes(grpc_frame(predict_body(model)))
        bodies["v2"].write_bytes(grpc_frame(v2_grpc_body(model)))
        bodies["v2json"].write_bytes(v2_json_body(model))
        redis = RedisServer(tmp / "redis")  # the task store that SERVER_PROCESSES=2 needs
        top = max(model.concurrency)
        try:
            for number in range(rounds):
                for kind in KINDS:
                    stop: Callable[..., object]
                    if kind.startswith("server"):
                        server_env = {"MODEL_DIR": str(model.model_dir), **env}
                        if kind == "server x2":
                            server_env |= {"SERVER_PROCESSES": "2", "REDIS_ADDRESS": redis.address}
                        proc = ServerProcess(tmp / f"{kind}-{number}.log", env=server_env)
                        proc.wait_serving(180)
                        pid, target, http_url, stop = proc.process.pid, proc.target, proc.http_url, proc.stop
                    else:
                        ref = Reference(kind, model, env)
                        pid, target, http_url, stop = ref.process.pid, ref.target, None, ref.stop
                    try:
                        check_predict(target, model)
                        for concurrency in model.concurrency:
                            url = f"http://{target}/serving.v1.PredictService/Predict"
                            load = measure(
                                kind,
                                pid,
                                url,
                                bodies["predict"],
                                concurrency,
                                duration,
                                False,
                                tmp,
                                http_url,
                                model.name,
                            )
                            results.setdefault((kind, concurrency), []).append(load)
                        if kind == "server" and model.v2 and http_url:
                            url = f"http://{target}/inference.GRPCInferenceService/ModelInfer"
                            load = measure(
                                "v2grpc", pid, url, bodies["v2"], top, duration, False, tmp, http_url, model.name
                            )
                            results.setdefault(("server V2 gRPC", top), []).append(load)
                            url = f"{http_url}/v2/models/{model.name}/infer"
                            load = measure(
                                "v2rest", pid, url, bodies["v2json"], top, duration, True, tmp, http_url, model.name
                            )
                            results.setdefault(("server V2 REST", top), []).append(load)
                    finally:
                        stop()
        finally:
            redis.stop()
    return results


def med(loads: list[Load], key: str) -> float:
    values = [getattr(load, key) for load in loads if getattr(load, key) is not None]
    return statistics.median(values) if values else float("nan")


def plot(model: BenchModel, results: dict[tuple[str, int], list[Load]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    levels = list(model.concurrency)
    for kind in KINDS:
        left.plot(levels, [med(results[(kind, c)], "requests_per_s") for c in levels], marker="o", label=kind)
        right.plot(levels, [med(results[(kind, c)], "p99_ms") for c in levels], marker="o", label=kind)
    for axis, title in ((left, "requests/s"), (right, "p99 ms")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency (h2load streams)")
        axis.set_title(f"{model.name}, unary Predict: {title}")
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def report(model: BenchModel, limit: list[tuple[int, float, float]], results: dict[tuple[str, int], list[Load]]) -> str:
    lines = [
        f"**{model.name}** ({'x'.join(map(str, model.shape))} float32 in, 1 row per request):",
        "",
        "| concurrency | server | requests/s | p50 ms | p99 ms | failed | server CPU cores | rows per model call |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (kind, concurrency), loads in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows = med(loads, "rows_per_call")
        lines.append(
            f"| {concurrency} | {kind} | {med(loads, 'requests_per_s'):,.1f} | {med(loads, 'p50_ms'):.2f} | "
            f"{med(loads, 'p99_ms'):.2f} | {sum(load.failed for load in loads)} | {med(loads, 'cores'):.2f} | "
            f"{'' if rows != rows else f'{rows:.1f}'} |"
        )
    rate = {key: med(loads, "requests_per_s") for key, loads in results.items()}
    p50 = {key: med(loads, "p50_ms") for key, loads in results.items()}
    p99 = {key: med(loads, "p99_ms") for key, loads in results.items()}
    best = max(limit, key=lambda row: row[2])
    lines += [
        "",
        "In-process model call (`LoadedModel.run_batch`, the server's TensorFlow settings), median: "
        + ", ".join(f"batch {b}: {ms:.3f} ms ({rps:,.0f} samples/s)" for b, ms, rps in limit)
        + ".",
        "",
        "Targets (same run):",
    ]
    levels = model.concurrency
    top = max(levels)
    gains = ", ".join(f"{rate[('server x2', c)] / rate[('server', c)]:.2f}x at concurrency {c}" for c in levels)
    if model.v2:
        lines += [
            f"- concurrency {top}: {rate[('server', top)] / rate[('plain', top)]:.2f}x the once-per-request server "
            f"(target 2.5x), {rate[('server', top)] / rate[('echo', top)]:.2f}x the echo server (target 0.6x), "
            f"p99/p50 {p99[('server', top)] / p50[('server', top)]:.2f} (target at most 2).",
            f"- concurrency 1: p50 {p50[('server', 1)]:.2f} ms against the once-per-request server's "
            f"{p50[('plain', 1)]:.2f} ms (target: no higher).",
            f"- V2 REST JSON / V2 gRPC at concurrency {top}: "
            f"{rate[('server V2 REST', top)] / rate[('server V2 gRPC', top)]:.2f}x (target 0.8x).",
            f"- SERVER_PROCESSES=2 / one process: {gains} (target above 1.3x at {top}).",
        ]
    else:
        for c in levels[1:]:
            lines.append(
                f"- concurrency {c}: {rate[('server', c)] / best[2]:.2f}x the in-process best batch "
                f"({best[2]:.1f} samples/s at batch {best[0]}; target 0.95x), "
                f"{rate[('server', c)] / rate[('plain', c)]:.2f}x the once-per-request server (target 1.3x)."
            )
        budget = 1.1 * limit[0][1] + p50[("echo", 1)]
        lines += [
            f"- concurrency 1: p50 {p50[('server', 1)]:.2f} ms against 1.1 x batch-1 call + echo p50"
            f" = {budget:.2f} ms.",
            f"- SERVER_PROCESSES=2 / one process: {gains}.",
        ]
    return "\n".join(lines)


def limit_in_subprocess(model: BenchModel, repeats: int, env: dict[str, str]) -> list[tuple[int, float, float]]:
    """`model_limit` in a fresh process, so TensorFlow reads `env` (e.g. TF_ENABLE_ONEDNN_OPTS) as the servers do."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.serving", "--limit-only", model.name, "--repeats", str(repeats)],
        cwd=ROOT,
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return [tuple(row) for row in json.loads(out.stdout.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--models", default="digits,mobilenet_v2", help="comma-separated: digits, mobilenet_v2")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="for every server, reference and the in-process limit, e.g. TF_ENABLE_ONEDNN_OPTS=1",
    )
    parser.add_argument("--plots", type=Path, default=DOCS, help="folder for bench-<model>.png")
    parser.add_argument("--limit-only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    models = {"digits": lambda: DIGITS, "mobilenet_v2": mobilenet}
    if args.limit_only:
        print(json.dumps(model_limit(models[args.limit_only](), args.repeats)))
        return
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    env = dict(item.split("=", 1) for item in args.env)
    print(
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: {os.cpu_count()} cores, "
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, CPU only. "
        f"h2load, {args.rounds} interleaved rounds of {args.duration:.0f} s per cell, medians shown. "
        f"Command: `make bench`{' with ' + ' '.join(args.env) if args.env else ''}.\n"
    )
    for name in args.models.split(","):
        model = models[name]()
        limit = limit_in_subprocess(model, args.repeats, env)
        results = run_rounds(model, args.rounds, args.duration, env)
        print(report(model, limit, results), flush=True)
        try:
            path = args.plots / f"bench-{model.name}.png"
            plot(model, results, path)
            print(f"\nplot: {path}\n", flush=True)
        except ImportError:
            print("\n(no plot: matplotlib is not installed)\n")


if __name__ == "__main__":
    main()

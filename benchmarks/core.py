"""Batching on and off: the digits model in-process, and unary Predict through the server.

    .venv/bin/python -m benchmarks.core    (`make bench` runs benchmarks.serving)

1. In-process model throughput: `LoadedModel.run_batch` at batch 1..512.
2. Unary Predict through a real server at concurrency 1, 8 and 64 with
   `python -m client bench` (a separate process), against a server with
   batching (default settings) and one with MAX_BATCH_SIZE=1 (no batching).
   Configurations are interleaved round by round and medians are reported, so
   the ratios come from the same run on a noisy machine.

Prints a Markdown report for docs/benchmarks.md. Only loopback is targeted;
every run is bounded in time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from tests.support.servers import MODEL_DIR, ServerProcess

BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
CONCURRENCY = [1, 8, 64]
CONFIGS = {"batching": {}, "no batching": {"MAX_BATCH_SIZE": "1"}}


def model_throughput(
    repeats: int, batches: Sequence[int] = BATCHES, intra: int = 0, inter: int = 0
) -> list[tuple[int, float, float]]:
    """(batch, median ms per call, rows/s) for the model called directly (TF threads: 0 = default)."""
    from server.batching import BatchingConfig
    from server.models.device import choose_device
    from server.models.model import load_model

    model = load_model("digits", 1, MODEL_DIR / "digits" / "1", choose_device(intra, inter), BatchingConfig())
    rows = []
    rng = np.random.default_rng(0)
    for batch in batches:
        x = {"image": rng.random((batch, 8, 8, 1), dtype=np.float32)}
        for _ in range(5):
            model.run_batch(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.run_batch(x)
            times.append(time.perf_counter() - start)
        ms = statistics.median(times) * 1000
        rows.append((batch, ms, batch / (ms / 1000)))
    model.close()
    return rows


def client_bench(target: str, concurrency: int, duration: float, warmup: float = 1.0) -> dict:
    """`python -m client bench` of the digits model, 1 row per request; its JSON result."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "client",
            "--target",
            target,
            "bench",
            "--model",
            "digits",
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    )
    return json.loads(out.stdout)


def batch_counters(proc: ServerProcess) -> dict[str, float]:
    """The digits model's batch and model-time counters, scraped from the server's /metrics."""
    text = urllib.request.urlopen(proc.http_url + "/metrics", timeout=10).read().decode()
    found = dict.fromkeys(("batch_size_count", "batch_size_sum", "model_execution_seconds_sum"), 0.0)
    for name, value in re.findall(r'^serving_(\w+)\{model="digits"\} (\S+)$', text, re.M):
        if name in found:
            found[name] = float(value)
    return found


def server_runs(rounds: int, duration: float) -> dict[tuple[str, int], list[dict]]:
    """Per (server, concurrency): the bench results, each with the batches it caused."""
    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, ServerProcess] = {}
        try:
            for i, (name, env) in enumerate(CONFIGS.items()):
                servers[name] = ServerProcess(Path(tmp) / f"{i}.log", env=env)
            for proc in servers.values():
                proc.wait_serving()
            for _ in range(rounds):
                for concurrency in CONCURRENCY:
                    for name, proc in servers.items():
                        before = batch_counters(proc)
                        run = client_bench(proc.target, concurrency, duration)
                        after = batch_counters(proc)
                        batches = after["batch_size_count"] - before["batch_size_count"]
                        run["rows_per_batch"] = (after["batch_size_sum"] - before["batch_size_sum"]) / max(batches, 1)
                        run["model_ms_per_batch"] = (
                            (after["model_execution_seconds_sum"] - before["model_execution_seconds_sum"])
                            * 1000
                            / max(batches, 1)
                        )
                        results.setdefault((name, concurrency), []).append(run)
        finally:
            for proc in servers.values():
                proc.stop()
    return results


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(model_rows, runs, rounds: int, duration: float) -> str:
    lines = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"CPU only. Server runs: {rounds} interleaved rounds of {duration:.0f} s per cell, medians shown.",
        "",
        "In-process model call (`LoadedModel.run_batch`), median of repeated calls:",
        "",
        "| batch | ms per call | rows/s |",
        "| ---: | ---: | ---: |",
    ]
    lines += [f"| {b} | {ms:.3f} | {rps:,.0f} |" for b, ms, rps in model_rows]
    lines += [
        "",
        "Unary Predict through the server, 1 row per request (`python -m client bench`):",
        "",
        "| concurrency | server | requests/s | p50 ms | p99 ms | non-OK | rows per model call | ms per model call |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for concurrency in CONCURRENCY:
        for name in CONFIGS:
            r = runs[(name, concurrency)]
            errors = sum(sum(x["errors"].values()) for x in r)
            lines.append(
                f"| {concurrency} | {name} | {median(r, 'requests_per_s'):,.0f} | "
                f"{median(r, 'p50_ms'):.2f} | {median(r, 'p99_ms'):.2f} | {errors} | "
                f"{median(r, 'rows_per_batch'):.2f} | {median(r, 'model_ms_per_batch'):.2f} |"
            )
    ratio = {
        c: median(runs[("batching", c)], "requests_per_s") / median(runs[("no batching", c)], "requests_per_s")
        for c in CONCURRENCY
    }
    batch1 = model_rows[0][1]
    p50 = median(runs[("batching", 1)], "p50_ms")
    lines += [
        "",
        "Ratios (same run): batching / no batching requests/s = "
        + ", ".join(f"{ratio[c]:.2f}x at concurrency {c}" for c in CONCURRENCY)
        + ".",
        f"Concurrency 1 p50 through the server {p50:.2f} ms vs in-process batch-1 call {batch1:.2f} ms: "
        f"{p50 - batch1:+.2f} ms.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    model_rows = model_throughput(args.repeats)
    runs = server_runs(args.rounds, args.duration)
    print(report(model_rows, runs, args.rounds, args.duration))


if __name__ == "__main__":
    main()

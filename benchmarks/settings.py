"""Server settings side by side: the same load against servers that differ in a few settings.

    .venv/bin/python -m benchmarks.settings [--rounds 4] [--duration 4]
        [--config 'NAME:KEY=VALUE,KEY=VALUE' ...]

Each configuration is a `python -m server` subprocess on a free loopback port
with the digits model (batching on). Rounds are interleaved (every
configuration once per round, at concurrency 1 then 64) and medians reported,
with the server's CPU per request read from /proc. Without `--config` it
compares the defaults with TensorFlow's thread pools at one thread each and
with fewer RPC threads. It also times the model in-process (batch 1, 64 and
512) under each configuration's TF_INTRA_OP_THREADS / TF_INTER_OP_THREADS,
each in a fresh process. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.core import client_bench, model_throughput
from benchmarks.overhead import cpu_seconds
from tests.support.servers import ServerProcess

CONCURRENCY = (1, 64)
IN_PROCESS_BATCHES = (1, 64, 512)
DEFAULT_CONFIGS = {
    "defaults": {},
    "TF threads 1+1": {"TF_INTRA_OP_THREADS": "1", "TF_INTER_OP_THREADS": "1"},
    "GRPC_MAX_WORKERS=16": {"GRPC_MAX_WORKERS": "16"},
}


def parse_config(text: str) -> tuple[str, dict[str, str]]:
    name, _, pairs = text.partition(":")
    return name, dict(pair.split("=", 1) for pair in pairs.split(",") if pair)


def in_process(env: dict[str, str]) -> dict[int, float]:
    """ms per call at each batch size, in a fresh process with the configuration's TF threads."""
    args = [env.get("TF_INTRA_OP_THREADS", "0"), env.get("TF_INTER_OP_THREADS", "0")]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.settings", "in-process", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--config", action="append", default=[], help="NAME:KEY=VALUE,KEY=VALUE")
    args = parser.parse_args()
    configs = dict(parse_config(c) for c in args.config) if args.config else DEFAULT_CONFIGS

    model_ms = {name: in_process(env) for name, env in configs.items()}
    results: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, ServerProcess] = {}
        try:
            for i, (name, env) in enumerate(configs.items()):
                servers[name] = ServerProcess(Path(tmp) / f"{i}.log", env=env)
            for proc in servers.values():
                proc.wait_serving()
            for _ in range(args.rounds):
                for concurrency in CONCURRENCY:
                    for name, proc in servers.items():
                        before = cpu_seconds(proc.process.pid)
                        run = client_bench(proc.target, concurrency, args.duration)
                        used = cpu_seconds(proc.process.pid) - before
                        cpu = used * 1000 / max(run["requests"], 1)  # warm-up requests excluded: an upper bound
                        results.setdefault((name, concurrency), []).append(
                            (run["requests_per_s"], run["p50_ms"], run["p99_ms"], cpu)
                        )
        finally:
            for proc in servers.values():
                proc.stop()

    print(f"{args.rounds} interleaved rounds of {args.duration:g} s per cell, medians; batching on.\n")
    print("| settings | concurrency | requests/s | p50 ms | p99 ms | server CPU ms per request |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for concurrency in CONCURRENCY:
        for name in configs:
            runs = results[(name, concurrency)]
            rps, p50, p99, cpu = (statistics.median(r[i] for r in runs) for i in range(4))
            print(f"| {name} | {concurrency} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {cpu:.2f} |")
    print("\nIn-process model call (ms, median), each configuration's TensorFlow threads:\n")
    print("| settings | " + " | ".join(f"batch {b}" for b in IN_PROCESS_BATCHES) + " |")
    print("| --- |" + " ---: |" * len(IN_PROCESS_BATCHES))
    for name, times in model_ms.items():
        print(f"| {name} | " + " | ".join(f"{times[b]:.3f}" for b in IN_PROCESS_BATCHES) + " |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "in-process":
        rows = model_throughput(200, batches=IN_PROCESS_BATCHES, intra=int(sys.argv[2]), inter=int(sys.argv[3]))
        print(json.dumps({batch: ms for batch, ms, _ in rows}))
    else:
        main()

"""Bench reporting, input generation and short runs against the fake server."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fake_serving import DIGITS, FakeServer

from client.bench import random_inputs, run_bench
from client.bench_result import BenchResult, latency_summary
from client.cli import main
from serving.v1 import model_pb2, tensor_pb2


def test_latency_summary() -> None:
    summary = latency_summary([float(ms) for ms in range(1, 101)])
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p95_ms"] == pytest.approx(95.05)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == 100.0
    assert latency_summary([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}


def make_result(**overrides: object) -> BenchResult:
    """A result of 110 requests (100 OK) of 4 rows in 2 s."""
    values: dict[str, object] = {
        "target": "127.0.0.1:1",
        "model": "digits",
        "mode": "unary",
        "concurrency": 8,
        "channels": 2,
        "rows": 4,
        "elapsed_s": 2.0,
        "requests": 110,
        "ok": 100,
        "errors": {"UNAVAILABLE": 10},
        "p50_ms": 1.5,
        "p95_ms": 3.25,
        "p99_ms": 4.0,
        "max_ms": 9.0,
    }
    return BenchResult(**(values | overrides))  # type: ignore[arg-type]


def test_bench_result_rates_and_formats() -> None:
    result = make_result()
    assert result.requests_per_s == 55.0
    assert result.samples_per_s == 200.0
    text = result.format()
    assert "8 threads, 2 channel(s), 4 row(s) per request" in text
    assert "requests/s   55.0" in text and "samples/s    200.0" in text
    assert "p50 1.50  p95 3.25  p99 4.00  max 9.00" in text
    assert "errors       UNAVAILABLE 10" in text
    data = json.loads(json.dumps(result.to_dict()))
    assert data["requests_per_s"] == 55.0 and data["errors"] == {"UNAVAILABLE": 10}


def test_bench_result_without_requests() -> None:
    empty = make_result(
        elapsed_s=0.0, requests=0, ok=0, errors={}, p50_ms=None, p95_ms=None, p99_ms=None,
        max_ms=None,
    )
    assert empty.requests_per_s == 0.0 and empty.samples_per_s == 0.0
    assert "p50 -  p95 -  p99 -  max -" in empty.format()
    assert "errors       none" in empty.format()


def test_random_inputs_follow_the_spec() -> None:
    metadata = model_pb2.ModelMetadata(
        inputs=[
            tensor_pb2.TensorSpec(name="x", dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=[-1, 2, 3]),
            tensor_pb2.TensorSpec(name="ids", dtype=tensor_pb2.DATA_TYPE_INT64, shape=[-1]),
            tensor_pb2.TensorSpec(name="on", dtype=tensor_pb2.DATA_TYPE_BOOL, shape=[-1, 1]),
        ]
    )
    arrays = random_inputs(metadata, rows=5)
    assert arrays["x"].shape == (5, 2, 3) and arrays["x"].dtype == np.float32
    assert arrays["ids"].shape == (5,) and arrays["ids"].dtype == np.int64
    assert arrays["on"].dtype == np.bool_
    strings = model_pb2.ModelMetadata(
        inputs=[tensor_pb2.TensorSpec(name="s", dtype=tensor_pb2.DATA_TYPE_STRING, shape=[-1])]
    )
    with pytest.raises(ValueError, match="input 's'"):
        random_inputs(strings, rows=1)


@pytest.mark.parametrize(
    "settings",
    [{"mode": "grpc"}, {"concurrency": 0}, {"count": 0}, {"duration": 0}, {"warmup": -1}],
)
def test_bad_settings_are_rejected(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        run_bench("127.0.0.1:1", **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_run_bench_by_count(fake_server: FakeServer, mode: str) -> None:
    result = run_bench(
        fake_server.target, mode=mode, concurrency=4, channels=2, count=40, rows=3, warmup=0.2
    )
    assert (result.requests, result.ok, result.errors) == (40, 40, {})
    assert (result.rows, result.channels, result.mode) == (3, 2, mode)
    assert result.p50_ms is not None and result.max_ms is not None
    assert 0 < result.p50_ms <= result.max_ms
    assert result.elapsed_s > 0
    assert result.samples_per_s == pytest.approx(3 * result.ok / result.elapsed_s)


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_run_bench_counts_errors_and_stops_on_time(fake_server: FakeServer, mode: str) -> None:
    started = time.monotonic()
    result = run_bench(
        fake_server.target,
        model="bad",
        mode=mode,
        concurrency=2,
        duration=0.5,
        warmup=0.0,
        inputs={"image": np.zeros((2, 4), np.float32)},
    )
    assert time.monotonic() - started < 5
    assert result.ok == 0 and result.requests > 0
    assert result.errors == {"INVALID_ARGUMENT": result.requests}
    assert result.p50_ms is None and result.rows == 2


def test_bench_command_json(fake_server: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--target", fake_server.target, "bench", "--count", "10", "--warmup", "0", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["requests"], data["ok"], data["model"]) == (10, 10, DIGITS.name)
    assert data["requests_per_s"] > 0 and data["p99_ms"] >= data["p50_ms"]

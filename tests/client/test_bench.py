"""Bench reporting, input generation and short runs against real gRPC servers."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from client.bench import Mode, random_inputs, run_bench
from client.bench_result import BenchResult, latency_summary
from client.bench_senders import UnarySender
from client.cli import main
from serving.v1 import (
    model_pb2,
    predict_pb2,
    predict_pb2_grpc,
    stream_pb2,
    stream_pb2_grpc,
    tensor_pb2,
)
from tests.support.certs import CertificateAuthority
from tests.support.fake_serving import DIGITS, FakePredict, FakeServer, FakeStream

pytestmark = pytest.mark.integration

IMAGE = {"image": np.zeros((1, 4), np.float32)}


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
    assert "8 workers, 2 channel(s), 4 row(s) per request" in text
    assert "requests/s   55.0" in text and "samples/s    200.0" in text
    assert "p50 1.50  p95 3.25  p99 4.00  max 9.00" in text
    assert "errors       UNAVAILABLE 10" in text
    data = json.loads(json.dumps(result.to_dict()))
    assert data["requests_per_s"] == 55.0 and data["errors"] == {"UNAVAILABLE": 10}


def test_bench_result_without_requests() -> None:
    empty = make_result(
        elapsed_s=0.0,
        requests=0,
        ok=0,
        errors={},
        p50_ms=None,
        p95_ms=None,
        p99_ms=None,
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
def test_run_bench_by_count(fake_server: FakeServer, mode: Mode) -> None:
    result = run_bench(fake_server.target, mode=mode, concurrency=4, channels=2, count=40, rows=3, warmup=0.2)
    assert (result.requests, result.ok, result.errors) == (40, 40, {})
    assert (result.rows, result.channels, result.mode) == (3, 2, mode)
    assert result.p50_ms is not None and result.max_ms is not None
    assert 0 < result.p50_ms <= result.max_ms
    assert result.elapsed_s > 0
    assert result.samples_per_s == pytest.approx(3 * result.ok / result.elapsed_s)


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_run_bench_counts_errors_and_stops_on_time(fake_server: FakeServer, mode: Mode) -> None:
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


def test_run_bench_sends_api_key_and_metadata(fake_server: FakeServer) -> None:
    result = run_bench(fake_server.target, count=3, warmup=0.0, api_key="k", metadata=[("X-Team", "a")])
    assert (result.requests, result.ok) == (3, 3)
    assert fake_server.predict.get_model_calls == 1
    assert len(fake_server.predict.metadata) == 3
    for sent in fake_server.predict.metadata:
        assert (sent["authorization"], sent["x-team"]) == ("Bearer k", "a")


def test_run_bench_from_a_thread_without_event_loop(fake_server: FakeServer) -> None:
    with futures.ThreadPoolExecutor(1) as pool:
        result = pool.submit(run_bench, fake_server.target, mode="stream", concurrency=3, count=7, warmup=0.0).result()
    assert (result.requests, result.ok, result.errors) == (7, 7, {})


def _until_cancelled(context: grpc.ServicerContext) -> None:
    """Block until the call ends (the client cancels it or its deadline passes)."""
    ended = threading.Event()
    if context.add_callback(ended.set):
        ended.wait()


class PeerPredict(predict_pb2_grpc.PredictServiceServicer):
    """Records the peer (the client's connection) of each call; model `mute` never answers."""

    def __init__(self) -> None:
        self.peers: list[str] = []

    def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> predict_pb2.PredictResponse:
        self.peers.append(context.peer())
        if request.model == "mute":
            _until_cancelled(context)
        return predict_pb2.PredictResponse()


class FlakyStream(stream_pb2_grpc.StreamPredictServiceServicer):
    """Answers a call's first message and fails the call with UNAVAILABLE on the second.

    Model `mute` gets no answer.
    """

    def __init__(self) -> None:
        self.calls = 0

    def StreamPredict(
        self, requests: Iterator[stream_pb2.StreamPredictRequest], context: grpc.ServicerContext
    ) -> Iterator[stream_pb2.StreamPredictResponse]:
        self.calls += 1
        for n, message in enumerate(requests):
            if message.request.model == "mute":
                _until_cancelled(context)
                return
            if n == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "gone")
            yield stream_pb2.StreamPredictResponse(response=predict_pb2.PredictResponse())


@contextmanager
def serving(
    predict: predict_pb2_grpc.PredictServiceServicer,
    stream: stream_pb2_grpc.StreamPredictServiceServicer,
    credentials: grpc.ServerCredentials | None = None,
) -> Iterator[str]:
    """A server with these services on a free loopback port; yields its target."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    predict_pb2_grpc.add_PredictServiceServicer_to_server(predict, server)
    stream_pb2_grpc.add_StreamPredictServiceServicer_to_server(stream, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


@pytest.mark.parametrize("channels", [1, 3])
def test_each_channel_has_its_own_connection(channels: int) -> None:
    predict = PeerPredict()
    with serving(predict, FlakyStream()) as target:
        result = run_bench(target, concurrency=3, channels=channels, count=30, warmup=0.0, inputs=IMAGE)
    assert (result.requests, result.ok, result.channels) == (30, 30, channels)
    assert len(predict.peers) == 30 and len(set(predict.peers)) == channels


def test_broken_streams_are_counted_and_reopened() -> None:
    stream = FlakyStream()
    with serving(PeerPredict(), stream) as target:
        result = run_bench(target, mode="stream", count=6, warmup=0.0, inputs=IMAGE)
    assert (result.requests, result.ok, result.errors) == (6, 3, {"UNAVAILABLE": 3})
    assert stream.calls == 3


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_unanswered_requests_time_out(mode: Mode) -> None:
    with serving(PeerPredict(), FlakyStream()) as target:
        result = run_bench(
            target,
            model="mute",
            mode=mode,
            concurrency=2,
            count=4,
            warmup=0.0,
            timeout=0.2,
            inputs=IMAGE,
        )
    assert (result.requests, result.ok, result.errors) == (4, 0, {"DEADLINE_EXCEEDED": 4})
    assert result.elapsed_s >= 0.4 and result.p50_ms is None


@pytest.mark.parametrize("mode", ["unary", "stream"])
def test_run_bench_over_tls(tmp_path: Path, mode: Mode) -> None:
    ca = CertificateAuthority(tmp_path)
    issued = ca.issue("localhost", server=True)
    credentials = grpc.ssl_server_credentials([(issued.key_pem, issued.cert_pem)])
    with serving(FakePredict(), FakeStream(), credentials) as target:
        result = run_bench(
            target,
            mode=mode,
            channels=2,
            concurrency=2,
            count=5,
            warmup=0.0,
            root_certificates=ca.pem.read_bytes(),
        )
    assert (result.requests, result.ok, result.errors) == (5, 5, {})


def test_ctrl_c_cancels_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[UnarySender] = []
    cancelled: list[UnarySender] = []
    send = UnarySender.__call__

    async def interrupted(self: UnarySender) -> grpc.StatusCode:
        started.append(self)
        if len(started) == 1:
            signal.raise_signal(signal.SIGINT)
        try:
            return await send(self)
        except asyncio.CancelledError:
            cancelled.append(self)
            raise

    monkeypatch.setattr(UnarySender, "__call__", interrupted)
    with serving(PeerPredict(), FlakyStream()) as target, pytest.raises(KeyboardInterrupt):
        run_bench(target, model="mute", concurrency=3, count=10, warmup=0.0, inputs=IMAGE)
    assert len(started) == 3 and cancelled == started

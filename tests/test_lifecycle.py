"""Start-up, health, batching under real load, back-pressure, reflection and graceful SIGTERM."""

from __future__ import annotations

import signal
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving.v1 import predict_pb2, predict_pb2_grpc, tensor_pb2
from tests.conftest import digits_rows
from tests.support.servers import ServerProcess, health_status, wait_for
from wire.codec import from_numpy, to_numpy

pytestmark = pytest.mark.integration


def request(x: np.ndarray) -> predict_pb2.PredictRequest:
    return predict_pb2.PredictRequest(model="digits", inputs={"image": tensor_pb2.Input(tensor=from_numpy(x))})


def fire_together(target: str, n: int, rows: int) -> list[grpc.StatusCode]:
    """n callers released at once by a barrier; returns their status codes."""
    barrier = threading.Barrier(n)
    codes: list[grpc.StatusCode] = []
    lock = threading.Lock()
    x = digits_rows(rows)

    with grpc.insecure_channel(target) as channel:
        stub = predict_pb2_grpc.PredictServiceStub(channel)
        stub.ListModels(predict_pb2.ListModelsRequest(), timeout=10)  # connect first

        def call() -> None:
            barrier.wait(10)
            try:
                stub.Predict(request(x), timeout=30)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            with lock:
                codes.append(code)

        threads = [threading.Thread(target=call) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    return codes


def test_health_is_not_serving_until_models_are_loaded(make_app):
    app = make_app(listen_only=True)
    assert health_status(app.address) == "NOT_SERVING"
    assert health_status(app.address, "serving.v1.PredictService") == "NOT_SERVING"
    assert health_status(app.address, "liveness") == "SERVING"
    with grpc.insecure_channel(app.address) as channel, pytest.raises(grpc.RpcError) as info:
        predict_pb2_grpc.PredictServiceStub(channel).Predict(request(digits_rows(1)), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "still loading" in info.value.details()
    app.load_models()
    for service in ("", "readiness", "serving.v1.PredictService", "serving.v1.StreamPredictService"):
        assert health_status(app.address, service) == "SERVING", service
    assert health_status(app.address, "no.such.Service") == "NOT_FOUND"


def test_concurrent_callers_are_coalesced_into_batches(make_app):
    app = make_app()
    batcher = app.repository.get("digits").batcher

    def coalesced() -> bool:
        codes = fire_together(app.address, 32, 4)
        assert codes == [grpc.StatusCode.OK] * 32
        return max(batcher.stats.batch_sizes) > 4

    wait_for(coalesced, 60, "a batch holding more than one request", interval=0)
    assert batcher.stats.rows >= 32 * 4


def test_full_queue_answers_resource_exhausted(make_app):
    app = make_app(max_queue_size=1)
    batcher = app.repository.get("digits").batcher

    def rejected() -> bool:
        codes = fire_together(app.address, 24, 512)
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        return grpc.StatusCode.RESOURCE_EXHAUSTED in codes

    wait_for(rejected, 60, "a RESOURCE_EXHAUSTED answer", interval=0)
    assert batcher.stats.rejected >= 1
    with grpc.insecure_channel(app.address) as channel:
        # the model still serves after rejecting
        reply = predict_pb2_grpc.PredictServiceStub(channel).Predict(request(digits_rows(1)), timeout=10)
    assert to_numpy(reply.outputs["probabilities"]).shape == (1, 10)


def test_full_queue_message(make_app):
    app = make_app(max_queue_size=1)
    codes_seen: list[str] = []

    def message() -> bool:
        x = digits_rows(512)
        with grpc.insecure_channel(app.address) as channel:
            stub = predict_pb2_grpc.PredictServiceStub(channel)
            futures = [stub.Predict.future(request(x), timeout=30) for _ in range(16)]
            for f in futures:
                if f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    codes_seen.append(f.details())
        return bool(codes_seen)

    wait_for(message, 60, "a RESOURCE_EXHAUSTED answer", interval=0)
    assert codes_seen[0] == "model 'digits' queue is full (1 requests); retry later"


def test_reflection_lists_every_service(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(  # type: ignore[operator]  # types-grpcio-reflection types it as binascii.Incomplete
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {
        "serving.v1.PredictService",
        "serving.v1.StreamPredictService",
        "serving.v1.TaskService",
        "serving.v1.UploadService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names


def test_sigterm_under_load_fails_no_in_flight_call(tmp_path):
    """Calls in flight when SIGTERM arrives all finish OK; the process then exits 0."""
    sigterm_under_load(tmp_path, {})


def sigterm_under_load(tmp_path, env: dict[str, str]) -> None:
    """SIGTERM while 16 callers keep Predicts in flight: every call accepted before it finishes OK, and
    the process exits 0 (also used with SERVER_PROCESSES, tests/test_processes.py)."""
    # A 300 ms batch delay keeps every call in the server for at least 300 ms,
    # so calls are surely in flight (accepted by the server) when SIGTERM comes.
    env = {"GRACE_PERIOD_SECONDS": "20", "MAX_BATCH_DELAY_MS": "300", **env}
    proc = ServerProcess(tmp_path / "server.log", env=env)
    try:
        proc.wait_serving()
        x = digits_rows(8)
        calls: list[tuple[float, float, grpc.StatusCode]] = []
        started: dict[int, float] = {}  # thread -> start of its call in progress
        lock = threading.Lock()
        stop = threading.Event()

        def hammer() -> None:
            with grpc.insecure_channel(proc.target) as channel:
                stub = predict_pb2_grpc.PredictServiceStub(channel)
                while not stop.is_set():
                    start = time.monotonic()
                    started[threading.get_ident()] = start
                    try:
                        stub.Predict(request(x), timeout=20)
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as exc:
                        code = exc.code()
                    started.pop(threading.get_ident(), None)
                    with lock:
                        calls.append((start, time.monotonic(), code))
                    if code != grpc.StatusCode.OK:
                        return

        threads = [threading.Thread(target=hammer) for _ in range(16)]
        for t in threads:
            t.start()
        wait_for(lambda: len(calls) >= 50, 30, "50 calls under load")
        # Signal while calls have been in the server for a while (not just sent).
        wait_for(lambda: any(time.monotonic() - t > 0.15 for t in list(started.values())), 10, "calls in flight")
        sigterm_at = time.monotonic()
        proc.signal(signal.SIGTERM)
        assert proc.process.wait(30) == 0
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        proc.stop()
    # Every call that began well before the signal (it reached the server:
    # 100 ms of margin for the request to travel on a loaded machine) finishes
    # OK, including those still waiting in a batch when it arrived.
    accepted = [c for c in calls if c[0] < sigterm_at - 0.1]
    in_flight = [c for c in accepted if c[1] > sigterm_at]
    assert in_flight, "no call was in flight at SIGTERM"
    assert [c[2] for c in accepted] == [grpc.StatusCode.OK] * len(accepted)
    later = {c[2] for c in calls if c[0] >= sigterm_at - 0.1}
    # UNAVAILABLE: refused by the closed listener; CANCELLED: accepted by the
    # transport while the server was already stopping.
    assert later <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
    assert "shutting down" in proc.log() and "stopped" in proc.log()


STUCK_AFTER_STOP = """
import logging, sys, threading
from pathlib import Path
from server.app import App, stop_and_exit
from server.config import Settings
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
app = App(Settings(_env_file=None, grpc_server_address="127.0.0.1:0", http_server_address="", metrics_address="",
                   access_log_path="", model_dir=Path(sys.argv[1]), grace_period_seconds=1))
app.start()
threading.Thread(target=threading.Event().wait, name="stuck-call").start()  # never ends; not a daemon
sys.exit(stop_and_exit(app))
"""


def test_a_thread_that_never_ends_does_not_keep_the_process_after_shutdown(tmp_path):
    """Python waits for every non-daemon thread at exit; a call stuck in one must not keep the server alive."""
    import subprocess
    import sys

    from tests.support.servers import MODEL_DIR, ROOT

    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", STUCK_AFTER_STOP, str(MODEL_DIR)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "threads still running after the shutdown (stuck-call); exiting" in done.stderr
    assert "stopped" in done.stderr
    assert time.monotonic() - started < 100

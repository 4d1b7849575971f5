"""A Redis that stops answering (a redis-server frozen with SIGSTOP): task calls answer UNAVAILABLE within
REDIS_TIMEOUT_SECONDS (plus a margin), Predict keeps serving, and everything works again on SIGCONT."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.tasks.redis_queue import STREAM
from serving.v1 import task_pb2
from tests.support.redis_servers import RedisServer
from tests.support.servers import wait_for
from tests.support.task_helpers import Served, async_request, digits_request, task_settings

pytestmark = pytest.mark.integration

TIMEOUT_S = 1.0  # REDIS_TIMEOUT_SECONDS here (its smallest value)
MARGIN_S = 1.5  # what the answer may take beyond it: a connect, gRPC, a loaded CI machine


@pytest.fixture
def redis_alone(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: it is frozen, and nothing else may wait on it."""
    server = RedisServer(tmp_path / "redis")
    yield server
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def timed(call, request) -> tuple[grpc.StatusCode, str, float]:
    started = time.monotonic()
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details(), time.monotonic() - started
    return grpc.StatusCode.OK, "", time.monotonic() - started


def test_a_hung_redis_is_unavailable_within_the_timeout_and_recovers(redis_alone: RedisServer, tmp_path: Path) -> None:
    served = Served.start(
        task_settings(
            tmp_path / "uploads", redis_address=redis_alone.address, task_workers=0, redis_timeout_seconds=TIMEOUT_S
        )
    )
    assert redis_alone.process is not None
    try:
        served.tasks.CreateTask(task_pb2.CreateTaskRequest(task=task_pb2.Task(id="before", model="digits")), timeout=10)
        os.kill(redis_alone.process.pid, signal.SIGSTOP)
        calls = [
            (served.tasks.GetTask, task_pb2.GetTaskRequest(id="before")),
            (served.tasks.CreateTask, task_pb2.CreateTaskRequest(task=task_pb2.Task(id="during", model="digits"))),
            (served.tasks.ListTasks, task_pb2.ListTasksRequest()),
        ]
        for call, request in calls:
            code, details, took = timed(call, request)
            assert code == grpc.StatusCode.UNAVAILABLE, (call, code, details)
            assert details.startswith(f"task store unavailable: {redis_alone.address}: "), details
            assert took < TIMEOUT_S + MARGIN_S, (call, took)
        # Predict does not need Redis; one that asks to be recorded waits for it at most the timeout, and
        # answers without a task id when the record could not be written.
        assert served.predict.Predict(digits_request(), timeout=10).outputs["probabilities"].shape == [2, 10]
        started = time.monotonic()
        recorded = served.predict.Predict(digits_request(record_task=True), timeout=10)
        assert time.monotonic() - started < TIMEOUT_S + MARGIN_S
        assert recorded.task_id == "" and recorded.outputs["probabilities"].shape == [2, 10]
        os.kill(redis_alone.process.pid, signal.SIGCONT)
        assert served.get("before").id == "before"
    finally:
        served.stop()


def test_a_predict_async_that_timed_out_on_a_hung_redis_is_queued_by_its_retry(
    redis_alone: RedisServer, tmp_path: Path
) -> None:
    """Redis frozen while PredictAsync writes the record: the call answers UNAVAILABLE, and when Redis
    resumes it executes the write it had received, so the record exists (QUEUED) with nothing queued.
    The caller's retry with the same id and request answers that task and queues it; it then runs."""
    served = Served.start(
        task_settings(
            tmp_path / "uploads", redis_address=redis_alone.address, task_workers=1, redis_timeout_seconds=TIMEOUT_S
        )
    )
    assert redis_alone.process is not None
    client = redis_alone.client()
    try:
        # A pooled connection, so the write goes out at once (a new one would wait for its handshake).
        served.tasks.CreateTask(task_pb2.CreateTaskRequest(task=task_pb2.Task(id="warm", model="digits")), timeout=10)
        os.kill(redis_alone.process.pid, signal.SIGSTOP)
        code, details, took = timed(served.predict.PredictAsync, async_request(task_id="t1"))
        assert code == grpc.StatusCode.UNAVAILABLE and took < TIMEOUT_S + MARGIN_S, (code, details, took)
        os.kill(redis_alone.process.pid, signal.SIGCONT)
        wait_for(lambda: client.exists("{task:t1}"), 10, "the write Redis had received to be executed")
        orphan = served.get("t1")
        assert orphan.status == task_pb2.TASK_STATUS_QUEUED
        assert [f for _, f in client.xrange(STREAM) if f.get("task") == "t1"] == []  # nothing queued for it
        retried = served.predict.PredictAsync(async_request(task_id="t1"), timeout=10).task
        assert (retried.id, retried.create_time) == ("t1", orphan.create_time)
        assert served.wait_status("t1", task_pb2.TASK_STATUS_SUCCEEDED).outputs["probabilities"].shape == [2, 10]
    finally:
        client.close()
        served.stop()

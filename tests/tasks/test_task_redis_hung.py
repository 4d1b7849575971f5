"""A Redis that stops answering (a redis-server frozen with SIGSTOP): task calls answer UNAVAILABLE within
REDIS_TIMEOUT_SECONDS (plus a margin), Predict keeps serving, and everything works again on SIGCONT."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from serving.v1 import task_pb2
from tests.tasks.redis_servers import RedisServer
from tests.tasks.task_helpers import Served, digits_request, task_settings

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


def timed(call, request) -> tuple[grpc.StatusCode, str, float]:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code(), exc.details(), time.monotonic() - started
    return grpc.StatusCode.OK, "", time.monotonic() - started


def test_a_hung_redis_is_unavailable_within_the_timeout_and_recovers(redis_alone: RedisServer, tmp_path: Path) -> None:
    served = Served.start(task_settings(tmp_path / "uploads", redis_address=redis_alone.address, task_workers=0,
                                        redis_timeout_seconds=TIMEOUT_S))
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
        # Predict does not need Redis.
        assert served.predict.Predict(digits_request(), timeout=10).outputs["probabilities"].shape == [2, 10]
        os.kill(redis_alone.process.pid, signal.SIGCONT)
        assert served.get("before").id == "before"
    finally:
        served.stop()

"""Queue workers: expiry in the queue, cancel before a worker runs, retries with backoff."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import pytest

from server.errors import Internal, InvalidArgument
from server.predictor import Predictor
from server.tasks import status
from server.tasks.worker import WorkerPool
from serving.v1 import predict_pb2, task_pb2
from tests.support.servers import wait_for
from tests.support.task_helpers import Served, async_request, task_settings
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

S = status


class FlakyPredictor:
    """The real Predictor, failing the first `failures` calls with `error` (an inference that breaks)."""

    def __init__(self, predictor: Predictor, failures: int, error: Exception) -> None:
        self.predictor = predictor
        self.failures = failures
        self.error = error
        self.calls: list[float] = []

    def predict(
        self, request: predict_pb2.PredictRequest, deadline: float | None = None
    ) -> predict_pb2.PredictResponse:
        self.calls.append(time.monotonic())
        if len(self.calls) <= self.failures:
            raise self.error
        return self.predictor.predict(request, deadline)


@pytest.fixture(scope="module")
def idle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server whose queue has no workers: tests start their own on its store and queue."""
    served = Served.start(task_settings(tmp_path_factory.mktemp("uploads"), task_workers=0))
    yield served
    served.stop()


def workers_for(served: Served, predictor: object) -> WorkerPool:
    tasks = served.app.tasks
    pool = WorkerPool(tasks.store, tasks.queue, predictor, tasks.sender, workers=1, visibility_s=2.0)  # type: ignore[arg-type]
    pool.start()
    return pool


def test_expired_in_queue_and_cancelled_tasks_never_run(idle: Served) -> None:
    receiver = WebhookReceiver().start()
    pool = None
    try:
        late = idle.predict.PredictAsync(async_request(receiver.url, max_time_in_queue_seconds=1), timeout=10).task
        cancelled = idle.predict.PredictAsync(async_request(receiver.url), timeout=10).task
        patient = idle.predict.PredictAsync(async_request(max_time_in_queue_seconds=600), timeout=10).task
        idle.tasks.CancelTask(task_pb2.CancelTaskRequest(id=cancelled.id), timeout=10)
        created = late.create_time.ToNanoseconds() / 1e9
        wait_for(lambda: time.time() > created + 1.2, 5, "the queue limit to pass")
        predictor = FlakyPredictor(idle.app.predictor, 0, Internal("unused"))
        pool = workers_for(idle, predictor)

        expired = idle.wait_status(late.id, S.EXPIRED)
        assert expired.attempts == 0 and not expired.outputs and not expired.HasField("start_time")
        assert expired.error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
        assert expired.error.message == "waited longer than max_time_in_queue_seconds (1s) in the queue"
        assert idle.wait_status(patient.id, S.SUCCEEDED).attempts == 1
        assert len(predictor.calls) == 1  # only the patient task ran
        bodies = {b["id"]: b["status"] for b in map(json.loads, (body for _, body in receiver.wait_count(2, 30)))}
        assert bodies == {late.id: "TASK_STATUS_EXPIRED", cancelled.id: "TASK_STATUS_CANCELLED"}
        assert idle.get(cancelled.id).attempts == 0
    finally:
        if pool is not None:
            pool.stop()
            pool.close()
        receiver.stop()


def test_failed_inference_is_retried_with_backoff(idle: Served) -> None:
    predictor = FlakyPredictor(idle.app.predictor, 2, Internal("inference failed in model 'digits'"))
    pool = workers_for(idle, predictor)
    try:
        retry = task_pb2.RetryPolicy(max_attempts=3, initial_delay_ms=200, max_delay_ms=300)
        task = idle.predict.PredictAsync(async_request(retry=retry), timeout=10).task
        done = idle.wait_status(task.id, S.SUCCEEDED)
        assert done.attempts == 3 and not done.HasField("error") and "probabilities" in done.outputs
        first, second, third = predictor.calls
        # backoff: 100-200 ms before the 2nd attempt, 150-300 ms (capped) before the 3rd
        assert 0.1 <= second - first < 1.5 and 0.15 <= third - second < 1.5
    finally:
        pool.stop()
        pool.close()


def test_retries_run_out_and_bad_requests_are_not_retried(idle: Served) -> None:
    predictor = FlakyPredictor(idle.app.predictor, 10, Internal("inference failed in model 'digits'"))
    pool = workers_for(idle, predictor)
    try:
        retry = task_pb2.RetryPolicy(max_attempts=2, initial_delay_ms=50, max_delay_ms=50)
        task = idle.predict.PredictAsync(async_request(retry=retry), timeout=10).task
        failed = idle.wait_status(task.id, S.FAILED)
        assert failed.attempts == 2 and len(predictor.calls) == 2
        assert failed.error.code == grpc.StatusCode.INTERNAL.value[0]
        assert failed.error.message == "inference failed in model 'digits'"

        predictor.error = InvalidArgument("input 'image': not retried")
        predictor.calls.clear()
        task = idle.predict.PredictAsync(async_request(retry=retry), timeout=10).task
        failed = idle.wait_status(task.id, S.FAILED)
        assert failed.attempts == 1 and len(predictor.calls) == 1
        assert failed.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    finally:
        pool.stop()
        pool.close()

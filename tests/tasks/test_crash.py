"""Crash safety against real processes: SIGKILL of a worker holding entries, and a Redis restart."""

from __future__ import annotations

import collections
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from server.tasks.redis_queue import GROUP, STREAM
from serving.v1 import predict_pb2_grpc, task_pb2, task_pb2_grpc
from tests.support.redis_servers import RedisServer
from tests.support.servers import ServerProcess, wait_for
from tests.support.task_helpers import SECRET, Served, async_request, digits_request, rpc_error, task_settings
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = 60


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


class Transitions:
    """Every status event of every task, from the `{task:<id>}:events` channels."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(port=port, decode_responses=True)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.events: dict[str, list[str]] = collections.defaultdict(list)
        self.pubsub.psubscribe(**{"{task:*}:events": self._on})
        self.thread = self.pubsub.run_in_thread(sleep_time=0.05, daemon=True)

    def _on(self, message: dict) -> None:
        self.events[message["channel"][len("{task:") : -len("}:events")]].append(message["data"])

    def stop(self) -> None:
        self.thread.stop()
        self.thread.join(5)
        self.pubsub.close()
        self.client.close()


def server_env(redis_server: RedisServer, folder: Path, workers: int) -> dict[str, str]:
    return {
        "REDIS_ADDRESS": redis_server.address,
        "TASK_WORKERS": str(workers),
        "TASK_VISIBILITY_TIMEOUT": "2s",
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "WEBHOOK_SECRET": SECRET,
        "WEBHOOK_TIMEOUT_SECONDS": "5",
        "HTTP_SERVER_ADDRESS": "",
        "METRICS_ADDRESS": "",
        "UPLOAD_DIR": str(folder / "uploads"),
    }


def pending_of(client: redis.Redis, pid: int) -> int:
    summary = client.xpending(STREAM, GROUP)
    return sum(int(c["pending"]) for c in summary.get("consumers") or [] if f"-{pid}-" in c["name"])


def test_sigkill_of_a_worker_holding_entries_loses_nothing(own_redis: RedisServer, tmp_path: Path) -> None:
    # A slow receiver keeps finished entries unacknowledged while their webhooks are in flight.
    receiver = WebhookReceiver(delay_s=0.2).start()
    transitions = Transitions(own_redis.port)
    survivor = ServerProcess(tmp_path / "survivor.log", env=server_env(own_redis, tmp_path, 2))
    victim = ServerProcess(tmp_path / "victim.log", env=server_env(own_redis, tmp_path, 4), args=["worker"])
    try:
        survivor.wait_serving()
        victim.wait_serving()
        assert victim.process.pid
        with grpc.insecure_channel(survivor.target) as channel:
            predict = predict_pb2_grpc.PredictServiceStub(channel)
            tasks = task_pb2_grpc.TaskServiceStub(channel)
            ids = [predict.PredictAsync(async_request(receiver.url), timeout=10).task.id for _ in range(TASKS)]
            with redis.Redis(port=own_redis.port, decode_responses=True) as client:
                wait_for(lambda: pending_of(client, victim.process.pid) >= 3, 30, "the victim to hold entries")
                victim.signal(signal.SIGKILL)
                victim.process.wait(10)
                held = pending_of(client, victim.process.pid)
            assert held >= 1, "the victim held no entries when it died"

            def all_settled() -> bool:
                for task_id in ids:
                    task = tasks.GetTask(task_pb2.GetTaskRequest(id=task_id), timeout=10).task
                    if not task.webhook.HasField("delivered_time"):
                        return False
                return True

            wait_for(all_settled, 90, "every task to finish and its webhook to be delivered", interval=0.5)
            final = [tasks.GetTask(task_pb2.GetTaskRequest(id=i), timeout=10).task for i in ids]
        assert all(t.status == task_pb2.TASK_STATUS_SUCCEEDED for t in final)
        wait_for(lambda: all(transitions.events[i].count("SUCCEEDED") >= 1 for i in ids), 10, "the events")
        finished = {
            i: [e for e in transitions.events[i] if e in ("SUCCEEDED", "FAILED", "EXPIRED", "CANCELLED")] for i in ids
        }
        assert all(statuses == ["SUCCEEDED"] for statuses in finished.values()), finished
        delivered = collections.Counter(body["id"] for body in receiver.tasks())
        assert set(delivered) == set(ids)
        # At least once: only a POST cut off by the kill (at most one per webhook thread) may come twice.
        assert sum(n - 1 for n in delivered.values()) <= 4
    finally:
        transitions.stop()
        victim.stop()
        survivor.stop()
        receiver.stop()


def test_redis_restart_mid_run(own_redis: RedisServer, tmp_path: Path) -> None:
    served = Served.start(task_settings(tmp_path / "uploads", redis_address=own_redis.address))
    try:
        before = served.predict.PredictAsync(async_request(), timeout=10).task
        served.wait_status(before.id, task_pb2.TASK_STATUS_SUCCEEDED)

        own_redis.stop()
        assert served.predict.Predict(digits_request(), timeout=10).outputs["probabilities"]
        for call, request in [
            (served.tasks.GetTask, task_pb2.GetTaskRequest(id=before.id)),
            (served.tasks.ListTasks, task_pb2.ListTasksRequest()),
            (served.predict.PredictAsync, async_request()),
        ]:
            error = rpc_error(call, request)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
            assert error.details().startswith(f"task store unavailable: {own_redis.address}: "), error.details()
        recorded = served.predict.Predict(digits_request(record_task=True), timeout=10)
        assert recorded.task_id == "" and recorded.outputs["probabilities"]  # answered, just not recorded

        own_redis.start()  # same port, empty (nothing was kept on disk)

        def submitted() -> task_pb2.Task | None:
            try:
                return served.predict.PredictAsync(async_request(), timeout=10).task
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                return None

        after = wait_for(submitted, 30, "PredictAsync to work again", interval=0.2)
        assert served.wait_status(after.id, task_pb2.TASK_STATUS_SUCCEEDED).attempts == 1
        assert served.predict.Predict(digits_request(record_task=True), timeout=10).task_id
    finally:
        served.stop()

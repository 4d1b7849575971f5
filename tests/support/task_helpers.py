"""Building task-test Apps, stubs and requests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from server.app import App
from server.config import Settings
from serving.v1 import predict_pb2, predict_pb2_grpc, task_pb2, task_pb2_grpc
from tests.support.servers import MODEL_DIR, wait_for
from wire import codec

SECRET = "test-webhook-secret"


def task_settings(upload_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        grpc_server_address="127.0.0.1:0",
        http_server_address="",
        metrics_address="",
        model_dir=MODEL_DIR,
        upload_dir=upload_dir,
        webhook_allow_private=True,
        webhook_secret=SECRET,
        webhook_max_attempts=8,
        task_visibility_timeout=2.0,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class Served:
    """An in-process App and stubs on a channel to it."""

    app: App
    channel: grpc.Channel
    predict: predict_pb2_grpc.PredictServiceStub
    tasks: task_pb2_grpc.TaskServiceStub

    @classmethod
    def start(cls, settings: Settings) -> Served:
        app = App(settings)
        app.start()
        channel = grpc.insecure_channel(app.address)
        return cls(app, channel, predict_pb2_grpc.PredictServiceStub(channel), task_pb2_grpc.TaskServiceStub(channel))

    def stop(self) -> None:
        self.channel.close()
        self.app.stop(grace=1)

    def get(self, task_id: str) -> task_pb2.Task:
        return self.tasks.GetTask(task_pb2.GetTaskRequest(id=task_id), timeout=10).task

    def wait_status(self, task_id: str, wanted: int, timeout: float = 30.0) -> task_pb2.Task:
        def reached() -> task_pb2.Task | None:
            task = self.get(task_id)
            return task if task.status == wanted else None

        return wait_for(reached, timeout, f"task {task_id} to be {task_pb2.TaskStatus.Name(wanted)}")

    def wait_webhook_settled(self, task_id: str, timeout: float = 30.0) -> task_pb2.Task:
        def settled() -> task_pb2.Task | None:
            task = self.get(task_id)
            return task if task.webhook.HasField("delivered_time") or task.webhook.gave_up else None

        return wait_for(settled, timeout, f"the webhook of task {task_id} to settle")


def digits_request(rows: int = 2, seed: int = 0, **fields: Any) -> predict_pb2.PredictRequest:
    x = np.random.default_rng(seed).random((rows, 8, 8, 1), dtype=np.float32)
    request = predict_pb2.PredictRequest(model="digits", **fields)
    request.inputs["image"].tensor.CopyFrom(codec.from_numpy(x, raw=True))
    return request


def async_request(webhook_url: str = "", **fields: Any) -> predict_pb2.PredictAsyncRequest:
    return predict_pb2.PredictAsyncRequest(request=digits_request(), webhook_url=webhook_url, **fields)


def rpc_error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    try:
        call(*args, timeout=10, **kwargs)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the call succeeded")

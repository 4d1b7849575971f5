"""TaskService and PredictAsync through a real gRPC server: in-memory store, single Redis, Redis Cluster."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import field_mask_pb2

from server.tasks import status
from serving.v1 import predict_pb2, task_pb2, tensor_pb2
from tests.support.redis_servers import RedisClusterServers, RedisServer
from tests.support.servers import free_port, wait_for
from tests.support.task_helpers import SECRET, Served, async_request, digits_request, rpc_error, task_settings
from tests.support.webhook_receiver import WebhookReceiver
from wire import codec

pytestmark = pytest.mark.integration

S = status


@pytest.fixture(scope="module", params=["memory", "redis", "cluster"])
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    redis_address = ""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_single")
        with server.client() as client:
            client.flushall()
        redis_address = server.address
    elif request.param == "cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        cluster.flush()
        redis_address = cluster.address
    app = Served.start(
        task_settings(
            tmp_path_factory.mktemp("uploads"),
            redis_address=redis_address,
            redis_cluster_mode=request.param == "cluster",
        )
    )
    yield app
    app.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


def create(served: Served, **fields) -> task_pb2.Task:
    return served.tasks.CreateTask(task_pb2.CreateTaskRequest(task=task_pb2.Task(**fields)), timeout=10).task


def test_create_get_update_with_transitions(served: Served) -> None:
    error = rpc_error(served.tasks.CreateTask, task_pb2.CreateTaskRequest(task=task_pb2.Task()))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "task.model: required (the name of the model the task runs)"

    task = create(served, model="external", metadata={"owner": "batch-7"})
    assert task.status == S.QUEUED and len(task.id) == 32
    assert task.trace_id == task.id and task.traceparent.startswith(f"00-{task.id}-")
    assert served.get(task.id) == task

    def update(paths: list[str] | None = None, **fields) -> task_pb2.Task:
        request = task_pb2.UpdateTaskRequest(
            task=task_pb2.Task(id=task.id, **fields), update_mask=field_mask_pb2.FieldMask(paths=paths or [])
        )
        return served.tasks.UpdateTask(request, timeout=10).task

    running = update(status=S.RUNNING)
    assert running.status == S.RUNNING and running.HasField("start_time")
    outputs = {"y": codec.from_numpy(np.arange(3, dtype=np.float32), raw=False)}
    done = update(status=S.SUCCEEDED, outputs=outputs)
    assert done.status == S.SUCCEEDED and done.HasField("finish_time") and done.running_time_ms >= 0
    assert list(done.outputs["y"].float_val) == [0.0, 1.0, 2.0]
    assert done.metadata == {"owner": "batch-7"}

    error = rpc_error(
        served.tasks.UpdateTask, task_pb2.UpdateTaskRequest(task=task_pb2.Task(id=task.id, status=S.RUNNING))
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "task is SUCCEEDED: a finished task cannot change to RUNNING"
    error = rpc_error(
        served.tasks.UpdateTask,
        task_pb2.UpdateTaskRequest(
            task=task_pb2.Task(id=task.id, model="x"), update_mask=field_mask_pb2.FieldMask(paths=["model"])
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "'model' cannot be changed" in error.details()
    # The metadata can still change after the task finished.
    assert update(["metadata"], metadata={"owner": "b"}).metadata == {"owner": "b"}

    error = rpc_error(served.tasks.GetTask, task_pb2.GetTaskRequest(id="missing"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "task 'missing' not found (it may have expired)"
    error = rpc_error(served.tasks.GetTask, task_pb2.GetTaskRequest(id="{bad}"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_list_with_filters_and_pages(served: Served) -> None:
    model = f"listed-{free_port()}"
    ids = [create(served, model=model).id for _ in range(120)]
    ListReq = task_pb2.ListTasksRequest
    pages, token = [], ""
    while True:
        reply = served.tasks.ListTasks(ListReq(filter=task_pb2.TaskFilter(model=model), page_token=token), timeout=10)
        pages.append(len(reply.tasks))
        token = reply.next_page_token
        if not token:
            break
    assert pages == [50, 50, 20]
    listed = served.tasks.ListTasks(ListReq(filter=task_pb2.TaskFilter(model=model), page_size=5000), timeout=10)
    assert sorted(t.id for t in listed.tasks) == sorted(ids) and not listed.next_page_token
    created = [(t.create_time.ToNanoseconds(), t.id) for t in listed.tasks]
    assert created == sorted(created, reverse=True)

    first = served.tasks.ListTasks(ListReq(filter=task_pb2.TaskFilter(model=model), page_size=10), timeout=10)
    error = rpc_error(
        served.tasks.ListTasks, ListReq(filter=task_pb2.TaskFilter(model="other"), page_token=first.next_page_token)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "different filter" in error.details()
    error = rpc_error(served.tasks.ListTasks, ListReq(page_token="nonsense"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

    error = rpc_error(served.tasks.DeleteTasks, task_pb2.DeleteTasksRequest())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "filter: empty; set all: true to delete every task"
    deleted = served.tasks.DeleteTasks(task_pb2.DeleteTasksRequest(filter=task_pb2.TaskFilter(model=model)), timeout=30)
    assert deleted.deleted == 120
    assert rpc_error(served.tasks.GetTask, task_pb2.GetTaskRequest(id=ids[0])).code() == grpc.StatusCode.NOT_FOUND
    one = create(served, model=model)
    served.tasks.DeleteTask(task_pb2.DeleteTaskRequest(id=one.id), timeout=10)
    assert rpc_error(served.tasks.DeleteTask, task_pb2.DeleteTaskRequest(id=one.id)).code() == grpc.StatusCode.NOT_FOUND


def test_watch_streams_changes_until_cancelled(served: Served, receiver: WebhookReceiver) -> None:
    task = create(served, model="external", webhook=task_pb2.WebhookDelivery(url=receiver.url))
    seen: list[int] = []
    stream = served.tasks.WatchTask(task_pb2.WatchTaskRequest(id=task.id), timeout=30)
    first = next(stream)
    seen.append(first.task.status)
    reader = threading.Thread(target=lambda: seen.extend(r.task.status for r in stream))
    reader.start()
    cancelled = served.tasks.CancelTask(task_pb2.CancelTaskRequest(id=task.id), timeout=10).task
    reader.join(30)
    assert not reader.is_alive() and seen == [S.QUEUED, S.CANCELLED]
    assert cancelled.status == S.CANCELLED and cancelled.HasField("finish_time")

    error = rpc_error(served.tasks.CancelTask, task_pb2.CancelTaskRequest(id=task.id))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == "task is CANCELLED: a finished task cannot change to CANCELLED"
    # A finished task with a webhook is delivered by a worker, as for async predictions.
    body = json.loads(receiver.wait_count(1, 30)[0][1])
    assert body["id"] == task.id and body["status"] == "TASK_STATUS_CANCELLED"

    running = create(served, model="external", status=S.RUNNING)
    error = rpc_error(served.tasks.CancelTask, task_pb2.CancelTaskRequest(id=running.id))
    assert error.details() == "task is RUNNING: it cannot change to CANCELLED (allowed: SUCCEEDED, FAILED)"


def test_predict_async_end_to_end_with_signed_webhook(served: Served, receiver: WebhookReceiver) -> None:
    request = async_request(receiver.url, metadata={"job": "42"})
    submitted = served.predict.PredictAsync(request, timeout=10).task
    assert submitted.status == S.QUEUED and submitted.model == "digits" and submitted.model_version == 1
    headers, body = receiver.wait_count(1, 30)[0]

    assert headers["x-signature-sha256"] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["content-type"] == "application/json"
    assert headers["traceparent"] == submitted.traceparent and submitted.traceparent.startswith(f"00-{submitted.id}-")
    sent = json.loads(body)
    assert sent["id"] == submitted.id and sent["status"] == "TASK_STATUS_SUCCEEDED" and sent["attempts"] == 1
    assert sent["metadata"] == {"job": "42"}

    task = served.wait_webhook_settled(submitted.id)
    assert task.status == S.SUCCEEDED and task.webhook.attempts == 1 and task.webhook.last_http_status == 200
    assert [a.http_status for a in task.webhook.history] == [200] and not task.webhook.gave_up
    assert task.HasField("start_time") and task.HasField("finish_time") and task.running_time_ms > 0
    sync = served.predict.Predict(digits_request(), timeout=10)
    expected = codec.to_numpy(sync.outputs["probabilities"])
    np.testing.assert_allclose(codec.to_numpy(task.outputs["probabilities"]), expected, rtol=1e-5)
    assert list(task.outputs["probabilities"].float_val)  # typed values: readable in the JSON record
    assert len(receiver.received) == 1


def test_bad_async_requests_are_refused_and_nothing_is_stored(served: Served) -> None:
    wrong_shape = predict_pb2.PredictAsyncRequest(
        task_id="bad-shape",
        request=predict_pb2.PredictRequest(
            model="digits", inputs={"image": tensor_pb2.Input(tensor=codec.from_numpy(np.zeros((1, 3), np.float32)))}
        ),
    )
    error = rpc_error(served.predict.PredictAsync, wrong_shape)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "input 'image'" in error.details()
    unknown_model = async_request(task_id="bad-model")
    unknown_model.request.model = "nope"
    for request, code, text in [
        (unknown_model, grpc.StatusCode.NOT_FOUND, "nope"),
        (
            async_request("ftp://example.com/hook", task_id="bad-hook"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "webhook_url: 'ftp://example.com/hook' must be an http:// or https:// URL with a host",
        ),
        (
            async_request(task_id="bad-retry", retry=task_pb2.RetryPolicy(max_attempts=-1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "retry.max_attempts: must be 0 or more",
        ),
        (async_request(task_id="bad id!"), grpc.StatusCode.INVALID_ARGUMENT, "task_id: 'bad id!' is not a task id"),
    ]:
        error = rpc_error(served.predict.PredictAsync, request)
        assert error.code() == code and text in error.details(), error.details()
    for task_id in ("bad-shape", "bad-model", "bad-hook", "bad-retry"):
        assert rpc_error(served.tasks.GetTask, task_pb2.GetTaskRequest(id=task_id)).code() == grpc.StatusCode.NOT_FOUND
    taken = served.predict.PredictAsync(async_request(task_id="mine-1"), timeout=10).task
    assert taken.id == "mine-1" and len(taken.trace_id) == 32
    # The same request again (a retry) answers the same task; another request with the id is refused.
    again = served.predict.PredictAsync(async_request(task_id="mine-1"), timeout=10).task
    assert (again.id, again.create_time, again.trace_id) == (taken.id, taken.create_time, taken.trace_id)
    other = async_request(task_id="mine-1")
    other.request.CopyFrom(digits_request(seed=1))
    error = rpc_error(served.predict.PredictAsync, other)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


def test_webhook_receiver_down_then_up(served: Served) -> None:
    port = free_port()
    submitted = served.predict.PredictAsync(async_request(f"http://127.0.0.1:{port}/hook"), timeout=10).task
    wait_for(lambda: served.get(submitted.id).webhook.attempts >= 2, 30, "two failed webhook attempts")
    receiver = WebhookReceiver(port=port).start()
    try:
        task = served.wait_webhook_settled(submitted.id)
    finally:
        receiver.stop()
    hook = task.webhook
    assert hook.HasField("delivered_time") and not hook.gave_up and hook.last_http_status == 200
    assert hook.attempts == len(hook.history) >= 3
    assert [a.http_status for a in hook.history[:-1]] == [0] * (hook.attempts - 1)
    assert all("ConnectionError" in a.error for a in hook.history[:-1]) and hook.history[-1].error == ""
    assert len(receiver.received) == 1


def test_webhook_gives_up_on_4xx(served: Served) -> None:
    receiver = WebhookReceiver(status=404).start()
    try:
        submitted = served.predict.PredictAsync(async_request(receiver.url), timeout=10).task
        task = served.wait_webhook_settled(submitted.id)
    finally:
        receiver.stop()
    assert task.webhook.gave_up and task.webhook.attempts == 1 and task.webhook.last_http_status == 404
    assert task.webhook.history[0].error == "HTTP 404"


def test_predict_recorded_as_task(served: Served) -> None:
    plain = served.predict.Predict(digits_request(), timeout=10)
    assert plain.task_id == ""
    recorded = served.predict.Predict(digits_request(record_task=True, request_id="r-1"), timeout=10)
    task = served.get(recorded.task_id)
    assert task.status == S.SUCCEEDED and task.request_id == "r-1" and task.attempts == 1
    assert task.outputs["probabilities"] == recorded.outputs["probabilities"]
    bad = digits_request(record_task=True, top_k=0)
    bad.output_filter.append("nope")
    error = rpc_error(served.predict.Predict, bad)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_export_and_import(served: Served) -> None:
    model = f"exported-{free_port()}"
    ids = {create(served, model=model, metadata={"n": str(n)}).id for n in range(7)}
    exported = served.tasks.ExportTasks(
        task_pb2.ExportTasksRequest(filter=task_pb2.TaskFilter(model=model)), timeout=30
    )
    assert exported.count == 7 and exported.uri.startswith("file://") and exported.uri.endswith(".jsonl")
    lines = Path(exported.uri.removeprefix("file://")).read_text().splitlines()
    assert {json.loads(line)["id"] for line in lines} == ids
    served.tasks.DeleteTasks(task_pb2.DeleteTasksRequest(filter=task_pb2.TaskFilter(model=model)), timeout=30)

    first = served.tasks.ImportTasks(task_pb2.ImportTasksRequest(uri=exported.uri), timeout=30)
    assert (first.imported, first.skipped) == (7, 0)
    again = served.tasks.ImportTasks(task_pb2.ImportTasksRequest(uri=exported.uri), timeout=30)
    assert (again.imported, again.skipped) == (0, 7)
    forced = served.tasks.ImportTasks(task_pb2.ImportTasksRequest(uri=exported.uri, overwrite=True), timeout=30)
    assert (forced.imported, forced.skipped) == (7, 0)
    listed = served.tasks.ListTasks(task_pb2.ListTasksRequest(filter=task_pb2.TaskFilter(model=model)), timeout=10)
    assert {t.id for t in listed.tasks} == ids
    error = rpc_error(served.tasks.ImportTasks, task_pb2.ImportTasksRequest(uri="file:///etc/passwd"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_out_of_range_times_and_malformed_urls_are_invalid_and_store_nothing(served: Served) -> None:
    """Values protobuf accepts but JSON and RFC 3339 cannot carry, and URLs urllib cannot parse, are
    INVALID_ARGUMENT naming the field, never INTERNAL."""
    from google.protobuf import timestamp_pb2

    far = timestamp_pb2.Timestamp(seconds=253402300800)  # 10000-01-01
    for task, text in [
        (
            task_pb2.Task(id="far", model="digits", create_time=far),
            "task.create_time: seconds 253402300800 is outside years 1-9999",
        ),
        (
            task_pb2.Task(id="neg", model="digits", start_time=timestamp_pb2.Timestamp(nanos=-1)),
            "task.start_time: nanos -1 is outside 0-999999999",
        ),
        (
            task_pb2.Task(id="v6", model="digits", webhook=task_pb2.WebhookDelivery(url="http://[::1")),
            "task.webhook.url: 'http://[::1' is not a URL",
        ),
    ]:
        error = rpc_error(served.tasks.CreateTask, task_pb2.CreateTaskRequest(task=task))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(text), error.details()
        assert rpc_error(served.tasks.GetTask, task_pb2.GetTaskRequest(id=task.id)).code() == grpc.StatusCode.NOT_FOUND
    create(served, id="times", model="digits")
    patch = task_pb2.Task(id="times", finish_time=timestamp_pb2.Timestamp(seconds=-62135596801))
    error = rpc_error(served.tasks.UpdateTask, task_pb2.UpdateTaskRequest(task=patch))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("task.finish_time: seconds -62135596801 is outside years 1-9999")
    assert not served.get("times").HasField("finish_time")
    listing = task_pb2.ListTasksRequest(filter=task_pb2.TaskFilter(created_after=far))
    assert rpc_error(served.tasks.ListTasks, listing).code() == grpc.StatusCode.INVALID_ARGUMENT
    error = rpc_error(served.predict.PredictAsync, async_request("http://[::1", task_id="v6-async"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("webhook_url: 'http://[::1' is not a URL"), error.details()
    error = rpc_error(served.tasks.ImportTasks, task_pb2.ImportTasksRequest(uri="http://[::1"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "'http://[::1': not a URI or key" in error.details()


def test_caller_strings_in_messages_are_cut(served: Served) -> None:
    """A 20,000-character id or model name comes back cut to 64 characters and marked, so the status
    (an HTTP/2 header) stays small: NOT_FOUND, not RESOURCE_EXHAUSTED from the client's metadata limit."""
    long_name = "x" * 20_000
    error = rpc_error(served.predict.GetModel, predict_pb2.GetModelRequest(model=long_name))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert (
        error.details() == f"model '{'x' * 61}...' (20,000 characters) not found; available models: 'digits', "
        "'digits_decoder', 'digits_keras'"
    ), error.details()[:300]
    request = async_request(task_id="long-model")
    request.request.model = long_name
    error = rpc_error(served.predict.PredictAsync, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND and len(error.details()) < 300

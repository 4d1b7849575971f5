"""Predictions that become tasks: PredictAsync submissions, and synchronous Predicts recorded as tasks."""

from __future__ import annotations

import asyncio
import logging

from google.protobuf import timestamp_pb2

from server.errors import AlreadyExists, InvalidArgument, ServingError, Unavailable
from server.predictor import Predictor
from server.tasks import records, status
from server.tasks.manager import TaskManager
from server.tasks.worker import task_error
from serving.v1 import predict_pb2, task_pb2

log = logging.getLogger(__name__)


class PredictionTasks:
    """Queues async predictions and records synchronous ones."""

    def __init__(
        self, manager: TaskManager, predictor: Predictor, default_max_time_in_queue_s: int, record_predictions: bool
    ) -> None:
        self.manager = manager
        self.store = manager.store
        self.queue = manager.queue
        self.predictor = predictor
        self.default_max_time_in_queue_s = default_max_time_in_queue_s
        self.record_predictions = record_predictions

    def submit(self, request: predict_pb2.PredictAsyncRequest) -> task_pb2.Task:
        """PredictAsync: validate everything now (nothing is stored for a bad request), store, queue."""
        inner = request.request
        model, _ = self.predictor.prepare(inner)
        for name in ("max_attempts", "initial_delay_ms", "max_delay_ms"):
            if getattr(request.retry, name) < 0:
                raise InvalidArgument(f"retry.{name}: must be 0 or more")
        if request.max_time_in_queue_seconds < 0:
            raise InvalidArgument("max_time_in_queue_seconds: must be 0 (server default) or more")
        self.manager.check_webhook(request.webhook_url, "webhook_url")
        task = self.manager.new_record(request.task_id, "task_id")
        traced = None if request.task_id else records.current_trace_context()
        if traced is not None:  # the task id is the trace id: the calling span is the root of the task's trace
            task.id = task.trace_id = traced[0]
            task.traceparent = traced[1]
        task.model, task.model_version = model.name, model.version
        task.status = status.QUEUED
        task.request_id = inner.request_id
        task.retry.CopyFrom(request.retry)
        task.max_time_in_queue_seconds = request.max_time_in_queue_seconds or self.default_max_time_in_queue_s
        task.metadata.update(request.metadata)
        if request.webhook_url:
            task.webhook.url = request.webhook_url
        for name, value in inner.inputs.items():
            task.inputs[name].CopyFrom(value)
        options = predict_pb2.PredictRequest(
            output_filter=inner.output_filter,
            top_k=inner.top_k,
            request_id=inner.request_id,
            # Task records are JSON: readable typed values unless raw bytes are asked for.
            output_encoding=inner.output_encoding or predict_pb2.TENSOR_ENCODING_TYPED,
            inline_files=inner.inline_files,
        )
        try:
            created = self.store.create(task)
        except AlreadyExists:
            if traced is None:
                return self._again(task, options)
            # Another task already took this trace's id (two PredictAsync calls in one caller's trace).
            fresh = self.manager.new_record("")
            task.id, task.trace_id, task.traceparent = fresh.id, fresh.trace_id, fresh.traceparent
            created = self.store.create(task)
        try:
            self.queue.push(task.id, options.SerializeToString())
        except Unavailable:
            self._forget(task.id)
            raise
        return created

    def _again(self, task: task_pb2.Task, options: predict_pb2.PredictRequest) -> task_pb2.Task:
        """PredictAsync with a task id that exists: the same submission (a retry) answers the existing task,
        and queues it again while it is QUEUED (the first try may have stored the record and failed before
        queueing it: a store that answered too late, a replica that died); a duplicate entry is harmless,
        workers skip tasks that are running or finished. Another submission is ALREADY_EXISTS."""
        existing = self.store.get(task.id)
        if not _same_submission(existing, task):
            raise AlreadyExists(
                f"task_id: task '{task.id}' exists with another request; choose another id, "
                "or send the same request to get that task"
            )
        if existing.status == status.QUEUED and existing.attempts == 0:  # not one waiting to be retried
            self.queue.push(task.id, options.SerializeToString())
        return existing

    def _forget(self, task_id: str) -> None:
        try:
            self.store.delete(task_id)
        except ServingError:
            log.warning("task %s was stored but could not be queued nor removed", task_id)

    def wants_record(self, request: predict_pb2.PredictRequest) -> bool:
        return self.record_predictions or request.record_task

    def predict_recorded(
        self, request: predict_pb2.PredictRequest, deadline: float | None
    ) -> predict_pb2.PredictResponse:
        """Predict, then store the outcome as a finished task (when the store is down: log and answer anyway)."""
        started = records.now()
        try:
            response = self.predictor.predict(request, deadline)
        except ServingError as exc:
            self._record(request, started, None, exc)
            raise
        response.task_id = self._record(request, started, response, None)
        return response

    async def infer_recorded(
        self, request: predict_pb2.PredictRequest, deadline: float | None
    ) -> predict_pb2.PredictResponse:
        """`predict_recorded` on the event loop: the model's Batcher awaited, the record written in a thread."""
        started = records.now()
        loop = asyncio.get_running_loop()
        try:
            response = await self.predictor.infer(request, deadline)
        except ServingError as exc:
            await loop.run_in_executor(None, self._record, request, started, None, exc)
            raise
        response.task_id = await loop.run_in_executor(None, self._record, request, started, response, None)
        return response

    def _record(
        self,
        request: predict_pb2.PredictRequest,
        started: timestamp_pb2.Timestamp,
        response: predict_pb2.PredictResponse | None,
        error: ServingError | None,
    ) -> str:
        task = self.manager.new_record("")
        task.model = request.model
        task.model_version = response.model.version if response is not None else request.version
        task.request_id = request.request_id
        task.create_time.CopyFrom(started)
        task.status = status.RUNNING
        task.start_time.CopyFrom(started)
        task.attempts = 1
        status.move(task, status.SUCCEEDED if response is not None else status.FAILED)
        if response is not None:
            for name, tensor in response.outputs.items():
                task.outputs[name].CopyFrom(tensor)
            for name, files in response.files.items():
                for ref in files.files:
                    task.files.add(name=name, uri=ref.uri, url=ref.url, content_type=ref.content_type, size=ref.size)
        if error is not None:
            task.error.CopyFrom(task_error(error))
        try:
            return self.store.create(task).id
        except ServingError as exc:
            log.warning("prediction %s not recorded as a task: %s", request.request_id, exc.message)
            return ""


def _same_submission(stored: task_pb2.Task, submitted: task_pb2.Task) -> bool:
    """Whether a stored task was made from the same PredictAsync request: its model, inputs (bit for
    bit), webhook URL, metadata, retry policy and queue limit (request ids aside: a retry without one
    gets a new one). The request's answer options are not kept in the record, so they are not compared."""

    def submission(task: task_pb2.Task) -> bytes:
        kept = task_pb2.Task(model=task.model, max_time_in_queue_seconds=task.max_time_in_queue_seconds)
        for name, value in task.inputs.items():
            kept.inputs[name].CopyFrom(value)
        kept.metadata.update(task.metadata)
        kept.retry.CopyFrom(task.retry)
        kept.webhook.url = task.webhook.url
        return kept.SerializeToString(deterministic=True)

    return submission(stored) == submission(submitted)

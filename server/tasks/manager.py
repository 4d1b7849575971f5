"""The TaskService core: create, get, update, list, delete, cancel and watch task records.

It takes and returns `serving.v1` messages and raises `server.errors`; it knows
nothing of gRPC. When a task with a webhook reaches a final status here (an
update by an external predictor, a cancel), an entry is queued so that a
worker delivers the webhook like for any other finished task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from google.protobuf import field_mask_pb2

from server.errors import InvalidArgument, NotFound
from server.tasks import records, status
from server.tasks.observer import NO_OBSERVER, TaskObserver, outcome
from server.tasks.queue import TaskQueue
from server.tasks.store import TaskStore
from server.tasks.webhooks import check_url, pending
from serving.v1 import task_pb2

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
WATCH_POLL_S = 0.5

#: Fields UpdateTask may change; the others are set at creation or by the server.
UPDATABLE = (
    "status",
    "model_version",
    "start_time",
    "finish_time",
    "running_time_ms",
    "outputs",
    "files",
    "error",
    "metadata",
    "inputs_uri",
)


class TaskManager:
    """Record keeping over a TaskStore (the queue is only used to settle webhooks)."""

    def __init__(
        self, store: TaskStore, queue: TaskQueue, allow_private_webhooks: bool, observer: TaskObserver = NO_OBSERVER
    ) -> None:
        self.store = store
        self.observer = observer
        self.queue = queue
        self.allow_private_webhooks = allow_private_webhooks

    def new_record(self, task_id: str, field: str = "id") -> task_pb2.Task:
        """An empty record with its id (given or new), creation time and trace context."""
        task_id = records.check_id(task_id, field) if task_id else records.new_id()
        trace_id, traceparent = records.trace_context(task_id)
        return task_pb2.Task(id=task_id, create_time=records.now(), trace_id=trace_id, traceparent=traceparent)

    def check_webhook(self, url: str, field: str) -> None:
        if url:
            try:
                check_url(url, self.allow_private_webhooks)
            except InvalidArgument as exc:
                raise InvalidArgument(exc.message.replace("webhook_url", field, 1)) from None

    def create(self, given: task_pb2.Task) -> task_pb2.Task:
        """CreateTask: a record reported by an external predictor (QUEUED unless a status is given)."""
        if not given.model:
            raise InvalidArgument("task.model: required (the name of the model the task runs)")
        if given.status and given.status not in status.ALL:
            raise InvalidArgument(f"task.status: {given.status} is not a task status")
        if given.max_time_in_queue_seconds < 0:
            raise InvalidArgument("task.max_time_in_queue_seconds: must be 0 or more")
        records.check_times(given, "task")
        self.check_webhook(given.webhook.url, "task.webhook.url")
        task = self.new_record(given.id, "task.id")
        fresh = task_pb2.Task()
        fresh.CopyFrom(given)
        fresh.id = task.id
        if not fresh.trace_id and not fresh.traceparent:
            fresh.trace_id, fresh.traceparent = task.trace_id, task.traceparent
        if not fresh.HasField("create_time"):
            fresh.create_time.CopyFrom(task.create_time)
        fresh.status = given.status or status.QUEUED
        fresh.ClearField("webhook")
        if given.webhook.url:
            fresh.webhook.url = given.webhook.url
        created = self.store.create(fresh)
        self._settle_webhook(created)
        return created

    def get(self, task_id: str) -> task_pb2.Task:
        return self.store.get(records.check_id(task_id))

    def update(self, patch: task_pb2.Task, mask: field_mask_pb2.FieldMask) -> task_pb2.Task:
        """UpdateTask: change the masked fields (or every field set in `patch`) through the state machine."""
        records.check_id(patch.id, "task.id")
        paths = list(mask.paths) or [field.name for field, _ in patch.ListFields() if field.name != "id"]
        if not paths:
            raise InvalidArgument("update_mask: nothing to update (set fields of task or name them in update_mask)")
        for path in paths:
            if path.split(".", 1)[0] not in UPDATABLE:
                raise InvalidArgument(f"update_mask: '{path}' cannot be changed; updatable: {', '.join(UPDATABLE)}")
        if "status" in paths and patch.status not in status.ALL:
            raise InvalidArgument(f"task.status: {patch.status} is not a task status")
        records.check_times(patch, "task")
        other = field_mask_pb2.FieldMask(paths=[p for p in paths if p != "status"])
        finishing = [False]  # whether this update moves the task to a final status (the last try's answer)

        def change(task: task_pb2.Task) -> None:
            finishing[0] = (
                not status.is_finished(task.status) and "status" in paths and status.is_finished(patch.status)
            )
            status.move(task, patch.status if "status" in paths else task.status)
            other.MergeMessage(patch, task, replace_message_field=True, replace_repeated_field=True)
            if "running_time_ms" not in paths and task.HasField("start_time") and task.HasField("finish_time"):
                elapsed = records.micros(task.finish_time) - records.micros(task.start_time)
                task.running_time_ms = max(0.0, elapsed / 1000.0)

        updated = self.store.update(patch.id, change)
        if finishing[0]:
            self.observer.task_finished(outcome(status.name(updated.status)))
        self._settle_webhook(updated)
        return updated

    def list(
        self, task_filter: task_pb2.TaskFilter, page_size: int, page_token: str
    ) -> tuple[list[task_pb2.Task], str]:
        """ListTasks: newest first; the token of the next page, "" on the last."""
        if page_size < 0:
            raise InvalidArgument("page_size: must be 0 (default 50) or more")
        records.check_filter(task_filter)
        cursor = records.decode_token(page_token, task_filter)
        tasks, after = self.store.list(task_filter, min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE), cursor)
        return tasks, "" if after is None else records.encode_token(after, task_filter)

    def delete(self, task_id: str) -> None:
        if not self.store.delete(records.check_id(task_id)):
            raise NotFound(f"task '{task_id}' not found (it may have expired)")

    def delete_matching(self, task_filter: task_pb2.TaskFilter, everything: bool) -> int:
        """DeleteTasks: an empty filter deletes everything only with `all: true`."""
        records.check_filter(task_filter)
        if records.is_empty(task_filter) and not everything:
            raise InvalidArgument("filter: empty; set all: true to delete every task")
        return self.store.delete_matching(task_filter)

    def cancel(self, task_id: str) -> task_pb2.Task:
        """CancelTask: QUEUED -> CANCELLED; FailedPrecondition once it started or finished."""
        cancelled = self.store.update(
            records.check_id(task_id), lambda t: status.move(t, status.CANCELLED, same_ok=False)
        )
        self.observer.task_finished("cancelled")
        self._settle_webhook(cancelled)
        return cancelled

    def watch(self, task_id: str, active: Callable[[], bool]) -> Iterator[task_pb2.Task]:
        """WatchTask: the task now, then on each status change until it finishes or `active()` is false."""
        subscription = self.store.subscribe(records.check_id(task_id))
        try:
            task = self.store.get(task_id)
            yield task
            seen = task.status
            while not status.is_finished(seen) and active():
                subscription.wait(WATCH_POLL_S)
                task = self.store.get(task_id)
                if task.status != seen:
                    seen = task.status
                    yield task
        finally:
            subscription.close()

    def _settle_webhook(self, task: task_pb2.Task) -> None:
        """Queue a finished task whose webhook is not delivered yet, for a worker to deliver it."""
        if status.is_finished(task.status) and pending(task):
            self.queue.push(task.id, b"")

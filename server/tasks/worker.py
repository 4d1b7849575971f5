"""Queue workers: take an entry, run its task through the Predictor, store the result, settle the webhook, ack.

For each entry a worker takes the task's lease (so no two workers run the same
task, even if it was queued twice), then:

- a finished task only has its webhook settled (a worker that died after
  finishing it, or a cancelled task);
- a QUEUED task that waited longer than its `max_time_in_queue_seconds`
  becomes EXPIRED without running;
- otherwise it becomes RUNNING (attempts + 1), runs through `Predictor.predict`
  (the same Batcher as synchronous calls), and becomes SUCCEEDED or FAILED; a
  failed attempt that may be retried goes back to QUEUED and waits in the
  queue's delayed set for its backoff, so no worker sleeps through it.

Every status change goes through the state machine, so a task finishes once
however many workers see its entries. The entry is acknowledged only when all
of that is done; while a worker holds it, a heartbeat keeps it (and the lease)
fresh, so only the entries of a worker that died are claimed by others after
the visibility timeout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time

from server.errors import DeadlineExceeded, FailedPrecondition, Internal, ServingError
from server.predictor import Predictor
from server.tasks import status, webhooks
from server.tasks.observer import NO_OBSERVER, TaskObserver, outcome
from server.tasks.queue import QueueEntry, TaskQueue
from server.tasks.records import age_seconds, now
from server.tasks.scheduler import backoff_delay
from server.tasks.store import TaskStore
from server.telemetry.tracing import Tracing
from serving.v1 import predict_pb2, task_pb2

log = logging.getLogger(__name__)

RUN_TIMEOUT_S = 60.0
TAKE_BLOCK_S = 0.5
CLAIM_BATCH = 16
DEFAULT_INITIAL_DELAY_MS = 100
DEFAULT_MAX_DELAY_MS = 10_000
RETRYABLE = ("INTERNAL", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED")


def task_error(exc: ServingError) -> task_pb2.TaskError:
    return task_pb2.TaskError(code=exc.code.value[0], message=exc.message)


class WorkerPool:
    """`workers` threads taking entries from the queue, plus one heartbeat thread."""

    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue,
        predictor: Predictor,
        sender: webhooks.WebhookSender,
        workers: int,
        visibility_s: float,
        tracing: Tracing | None = None,
        observer: TaskObserver = NO_OBSERVER,
    ) -> None:
        self.store = store
        self.observer = observer
        self.tracing = tracing
        self.queue = queue
        self.predictor = predictor
        self.sender = sender
        self.workers = workers
        self.visibility_s = visibility_s
        self.prefix = f"{socket.gethostname()}-{os.getpid()}"
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._held: dict[str, tuple[str, QueueEntry, str]] = {}  # entry id -> (consumer, entry, lease token)

    def start(self) -> None:
        for n in range(self.workers):
            self._threads.append(
                threading.Thread(target=self._loop, args=(f"{self.prefix}-{n}",), name=f"task-worker-{n}", daemon=True)
            )
        self._threads.append(threading.Thread(target=self._heartbeat, name="task-heartbeat", daemon=True))
        for thread in self._threads:
            thread.start()
        log.info("%d task worker(s) started (consumers %s-*)", self.workers, self.prefix)

    def stop(self, timeout: float = 10.0) -> None:
        """Take no more entries and finish the ones being run (their webhooks may still be settling)."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads[:-1]:
            thread.join(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        """End the heartbeat; entries still held are left for other workers to claim."""
        self._closed.set()
        if self._threads:
            self._threads[-1].join(timeout=5)

    # -- the loops ---------------------------------------------------------------

    def _loop(self, consumer: str) -> None:
        next_claim = 0.0
        failing = False
        while not self._stop.is_set():
            try:
                entries: list[QueueEntry] = []
                if time.monotonic() >= next_claim:
                    entries = self.queue.claim_stale(consumer, self.visibility_s, CLAIM_BATCH)
                    next_claim = time.monotonic() + min(self.visibility_s / 2, 5.0)
                if not entries:
                    entries = self.queue.take(consumer, 1, TAKE_BLOCK_S)
                if failing:
                    log.info("task queue reachable again")
                    failing = False
                for entry in entries:
                    self._handle(consumer, entry)
            except ServingError as exc:
                if not failing:
                    log.warning("task worker %s: %s", consumer, exc.message)
                failing = True
                self._stop.wait(1.0)
            except Exception:
                log.exception("task worker %s failed; continuing", consumer)
                self._stop.wait(1.0)

    def _heartbeat(self) -> None:
        while not self._closed.wait(self.visibility_s / 3):
            self.beat()

    def beat(self) -> None:
        """Keep held entries and leases from going stale."""
        with self._lock:
            held = list(self._held.values())
        by_consumer: dict[str, list[str]] = {}
        for consumer, entry, _token in held:
            by_consumer.setdefault(consumer, []).append(entry.entry_id)
        try:
            for consumer, ids in by_consumer.items():
                self.queue.touch(consumer, ids)
            for _, entry, token in held:
                self.store.refresh_lease(entry.task_id, token, self.visibility_s)
        except ServingError as exc:
            log.warning("task heartbeat: %s", exc.message)

    # -- one entry -----------------------------------------------------------------

    def _handle(self, consumer: str, entry: QueueEntry) -> None:
        task = self.store.find(entry.task_id)
        if task is None:  # deleted or expired
            self.queue.ack(entry.entry_id)
            return
        token = f"{consumer}:{entry.entry_id}"
        if not self.store.acquire_lease(task.id, token, self.visibility_s):
            return  # another worker has the task; this entry comes back after the visibility timeout
        with self._lock:
            self._held[entry.entry_id] = (consumer, entry, token)
        try:
            final = self._process(task, entry)
        except ServingError as exc:
            log.warning("task %s: %s; it will be retried", task.id, exc.message)
            self._settle(entry, token, False)
            return
        except Exception:
            log.exception("task %s: unexpected failure; it will be retried", task.id)
            self._settle(entry, token, False)
            return
        if final is None or not webhooks.pending(final):
            self._settle(entry, token, True)
            return
        try:
            self.sender.deliver(final.id, lambda done: self._settle(entry, token, done))
        except RuntimeError:  # shutting down: another worker delivers it after the visibility timeout
            self._settle(entry, token, False)

    def _settle(self, entry: QueueEntry, token: str, acknowledge: bool) -> None:
        with self._lock:
            self._held.pop(entry.entry_id, None)
        try:
            if acknowledge:
                self.queue.ack(entry.entry_id)
            self.store.release_lease(entry.task_id, token)
        except ServingError as exc:
            log.warning("task %s: %s", entry.task_id, exc.message)

    def _process(self, task: task_pb2.Task, entry: QueueEntry) -> task_pb2.Task | None:
        """Run or finish the task; the finished record, or None when it went back to the queue."""
        if status.is_finished(task.status):
            return task
        limit = task.max_time_in_queue_seconds
        if task.status == status.QUEUED and task.attempts == 0 and limit and age_seconds(task.create_time) > limit:
            message = f"waited longer than max_time_in_queue_seconds ({limit}s) in the queue"
            return self._finish(task.id, status.EXPIRED, error=task_error(DeadlineExceeded(message)))
        try:
            task = self.store.update(task.id, _start_attempt)
        except FailedPrecondition:  # cancelled or finished meanwhile
            return self.store.get(task.id)
        request = predict_pb2.PredictRequest.FromString(entry.options)
        request.model, request.version = task.model, task.model_version
        for name, value in task.inputs.items():
            request.inputs[name].CopyFrom(value)
        try:
            with self._span(task):
                response = self.predictor.predict(request, time.monotonic() + RUN_TIMEOUT_S)
        except ServingError as exc:
            return self._failed(task, entry, exc)
        except Exception:
            log.exception("task %s: inference failed", task.id)
            return self._failed(task, entry, Internal(f"inference failed in model '{task.model}'"))
        return self._finish(task.id, status.SUCCEEDED, response=response)

    def _span(self, task: task_pb2.Task) -> contextlib.AbstractContextManager:
        """A span in the task's own trace (its trace id is the task id), when tracing is on."""
        if self.tracing is None or not task.traceparent:
            return contextlib.nullcontext()
        attributes = {"task.id": task.id, "task.attempt": task.attempts, "model": task.model}
        return self.tracing.start_span_from_traceparent("task.run", task.traceparent, attributes)

    def _failed(self, task: task_pb2.Task, entry: QueueEntry, exc: ServingError) -> task_pb2.Task | None:
        if exc.code.name in RETRYABLE and task.attempts < max(1, task.retry.max_attempts):
            delay = backoff_delay(
                task.attempts,
                (task.retry.initial_delay_ms or DEFAULT_INITIAL_DELAY_MS) / 1000,
                (task.retry.max_delay_ms or DEFAULT_MAX_DELAY_MS) / 1000,
            )

            def requeue(t: task_pb2.Task) -> None:
                status.move(t, status.QUEUED, retry=True)
                t.error.CopyFrom(task_error(exc))

            try:
                self.store.update(task.id, requeue)
            except FailedPrecondition:
                return self.store.get(task.id)
            self.queue.delay(task.id, entry.options, time.time() + delay)
            log.info("task %s: attempt %d failed (%s); retry in %.2fs", task.id, task.attempts, exc.message, delay)
            return None
        return self._finish(task.id, status.FAILED, error=task_error(exc))

    def _finish(
        self,
        task_id: str,
        new: task_pb2.TaskStatus,
        *,
        error: task_pb2.TaskError | None = None,
        response: predict_pb2.PredictResponse | None = None,
    ) -> task_pb2.Task:
        finishing = [False]  # not already finished (a same-status "move" passes the state machine)

        def change(t: task_pb2.Task) -> None:
            finishing[0] = not status.is_finished(t.status)
            status.move(t, new)
            if error is not None:
                t.error.CopyFrom(error)
            else:
                t.ClearField("error")
            if response is not None:
                t.model_version = response.model.version
                for name, tensor in response.outputs.items():
                    t.outputs[name].CopyFrom(tensor)
                for name, files in response.files.items():
                    for ref in files.files:
                        t.files.add(name=name, uri=ref.uri, url=ref.url, content_type=ref.content_type, size=ref.size)

        try:
            finished = self.store.update(task_id, change)
        except FailedPrecondition:  # finished by someone else first: theirs stands
            return self.store.get(task_id)
        if finishing[0]:
            self.observer.task_finished(outcome(status.name(new)))
        return finished


def _start_attempt(task: task_pb2.Task) -> None:
    """QUEUED -> RUNNING, or take over a RUNNING task whose worker died: a new attempt starts now."""
    status.move(task, status.RUNNING)
    task.start_time.CopyFrom(now())
    task.attempts += 1

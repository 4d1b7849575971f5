"""The Batcher: merges concurrent requests into one model call.

Callers on the server's event loop `await infer()`; threads (task workers,
streams) call `submit()` or `run()`. One model thread per model version takes
what is queued, concatenates the inputs along axis 0, runs the model once, and
hands each caller exactly its own rows. The event loop's callers are answered
together, by one callback per batch on their loop: one cross-thread hop per
batch, not per request, so the loop is never blocked by a model and the
requests of one batch cost the loop one wake-up.

- Batches are formed on the loop's rhythm. A loop caller only queues its
  request; the model thread is woken once per loop turn (`_dispatch`, run
  after the turn has taken in every request that was ready), not once per
  request. When a batch is done and fewer rows are queued than it had, the
  callback that answers its callers wakes the model thread for the next batch
  after that turn: whatever queued while the model ran, and whatever the turn
  took in, goes as one batch. On a fast model this doubles the rows per call
  against taking the queue the moment the model is free, for one loop turn of
  the model's time (measured in docs/benchmarks.md). When at least as many
  rows are queued as the last batch had (a slow model, a full queue), the
  model thread takes them at once: waiting would gain nothing. Requests from
  threads (streams, task workers) wake the model at once.
- It never waits while the model is idle: when the model is free and a loop
  turn has passed, it takes everything queued (up to `max_batch_size` rows).
  `max_batch_delay` may hold a batch open briefly for more requests to arrive.
  A `run()` that finds the model idle and the queue empty runs at once in its
  caller's thread.
- A caller of `infer()` that goes away (its task is cancelled: the client
  disconnected, or its deadline passed) is dropped before its batch runs.
- The queue is bounded: a full queue raises `ResourceExhausted` at once.
- A request whose deadline has passed is dropped before it runs.
- With `allowed_batch_sizes` a batch is padded (repeating its last row) to the
  next allowed size, so a compiled model sees few shapes.
- Requests are validated before `submit()`; if a batch fails anyway, each of its
  requests is run alone so only the failing one gets the error.
- An optional `BatchObserver` (metrics, tracing) hears of every request queued
  and every model call, without the Batcher knowing what it does with them.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from server.errors import DeadlineExceeded, Internal, InvalidArgument, ResourceExhausted, ServingError, Unavailable

log = logging.getLogger(__name__)

Arrays = Mapping[str, np.ndarray]
BatchFunction = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # the merged batch in, its rows out


@dataclass(frozen=True)
class BatchObservation:
    """One successful model call: its model, sizes, times (monotonic) and requests."""

    model: str
    rows: int
    padded_rows: int
    started: float
    finished: float
    requests: tuple[tuple[object, float], ...]  # (token from request_queued, enqueued at)


class BatchObserver(Protocol):
    """Watches Batchers for metrics and tracing."""

    def request_queued(self) -> object:
        """Called in the caller's thread for every request; the value comes back in `batch_done`."""

    def batch_done(self, observation: BatchObservation) -> None:
        """Called after a model call, once its callers have their rows."""

    def request_refused(self, model: str, reason: str) -> None:
        """A request was not run: "rejected" (the queue was full) or "expired" (its deadline passed)."""


@dataclass(frozen=True)
class BatchingConfig:
    """How requests are merged (see the module docstring)."""

    max_batch_size: int = 512
    max_batch_delay_s: float = 0.0
    allowed_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024
    observer: BatchObserver | None = field(default=None, compare=False)


@dataclass
class BatchStats:
    """Counters for tests, metadata, metrics and model statistics (durations in ns, summed per request
    for `queue_ns`, `succeeded_ns`, `failed_ns` and the `*_ns` of a request's batch; per batch size in
    `batch_ns`). Written by the thread that runs the batches; read without a lock, a snapshot may lag."""

    batches: int = 0
    rows: int = 0
    padded_rows: int = 0
    expired: int = 0
    rejected: int = 0
    batch_sizes: collections.Counter[int] = field(default_factory=collections.Counter)
    succeeded: int = 0  # requests answered with outputs
    succeeded_ns: int = 0  # queued -> answered
    failed: int = 0  # requests the model failed (isolated, as one-request batches)
    failed_ns: int = 0
    queue_ns: int = 0  # queued -> their batch started
    input_ns: int = 0  # merging and padding the batch's inputs
    infer_ns: int = 0  # the model call
    output_ns: int = 0  # splitting the outputs among the batch's requests
    last_batch_at: float = 0.0  # time.time() when the last batch finished; 0: none yet
    batch_ns: dict[int, list[int]] = field(default_factory=dict)  # rows -> [batches, input, infer, output ns]

    def durations(self) -> dict[str, tuple[int, int]]:
        """(count, summed ns) by what the model statistics call them (Triton's names). A failure whose
        deadline passed in the queue counts without a duration; the phases count once per request."""
        done = self.succeeded
        return {
            "success": (done, self.succeeded_ns),
            "fail": (self.failed + self.expired, self.failed_ns),
            "queue": (done, self.queue_ns),
            "compute_input": (done, self.input_ns),
            "compute_infer": (done, self.infer_ns),
            "compute_output": (done, self.output_ns),
        }

    def per_batch_size(self) -> list[tuple[int, int, int, int, int]]:
        """(rows, model calls, input ns, infer ns, output ns) per batch size, smallest first."""
        return [(size, p[0], p[1], p[2], p[3]) for size, p in sorted(dict(self.batch_ns).items())]


@dataclass
class _Pending:
    inputs: Arrays
    rows: int
    key: tuple  # non-batch shapes: only requests with equal keys are merged
    deadline: float | None  # time.monotonic() value
    future: Future | asyncio.Future  # asyncio.Future: a caller of `infer()`, answered on its loop
    enqueued: float = field(default_factory=time.monotonic)
    token: object = None  # from the observer's request_queued()
    expired: bool = False  # an `infer()` caller's deadline passed (set on its loop)


class Batcher:
    """Batches calls of `run_batch` for one model version."""

    def __init__(self, run_batch: BatchFunction, config: BatchingConfig, name: str = "model") -> None:
        self._run_batch = run_batch
        self.config = config
        self.name = name
        self.stats = BatchStats()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._busy = False  # a batch is running (on the model thread, or in a `run()` caller's thread)
        # The model thread may take the next batch once free. Loop callers set it once per loop turn
        # (`_dispatch`), threads at once, the model thread itself after a batch with no loop callers.
        self._go = False
        self._dispatch_scheduled: set[asyncio.AbstractEventLoop] = set()  # loops with a `_dispatch` due
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    # -- callers ---------------------------------------------------------

    def submit(self, inputs: Arrays, deadline: float | None = None) -> Future:
        """Queue validated inputs (all with the same rows on axis 0); never blocks.

        Returns a future resolving to this request's output rows. `deadline` is a
        `time.monotonic()` value after which the request is not run.
        """
        future: Future = Future()
        pending = self._pending(inputs, deadline, future)
        with self._cond:
            self._enqueue(pending)
        return future

    async def infer(self, inputs: Arrays, deadline: float | None = None) -> dict[str, np.ndarray]:
        """Queue validated inputs from the event loop and await their rows.

        Refusals come at once (full queue, closed, too many rows). Past
        `deadline` (a `time.monotonic()` value; the loop's clock) it raises
        DeadlineExceeded; a queued request is then never run. Cancelling the
        awaiting task drops the request the same way.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, np.ndarray]] = loop.create_future()
        pending = self._pending(inputs, deadline, future)
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceeded(f"deadline passed before model '{self.name}' could run")
        with self._cond:
            # With a batch delay the model thread watches the queue fill; else it is woken once per turn.
            self._enqueue(pending, wake=self.config.max_batch_delay_s > 0)
            if not self._busy:
                self._schedule_dispatch(loop)
        timer = None if deadline is None else loop.call_at(deadline, self._expire, pending)
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()

    def _schedule_dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """`_dispatch` on `loop` after its current turn, once however many requests the turn queues
        (caller holds the lock)."""
        if loop not in self._dispatch_scheduled:
            self._dispatch_scheduled.add(loop)
            loop.call_soon(self._dispatch, loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop, once the turn has taken in what was ready: the model thread may take the queue
        as one batch once it is free."""
        with self._cond:
            self._dispatch_scheduled.discard(loop)
            if self._queue:
                self._wake()

    def _wake(self) -> None:
        """Let the model thread take the next batch once it is free (caller holds the lock)."""
        self._go = True
        self._cond.notify()

    def _free(self) -> None:
        """A batch run outside the model thread is over: the model thread may take what queued meanwhile
        (and a `close()` waiting for the model to be free may finish)."""
        with self._cond:
            self._busy = False
            if self._queue:
                self._go = True
            self._cond.notify_all()

    def _expire(self, pending: _Pending) -> None:
        """On the loop at a caller's deadline: answer DeadlineExceeded (the model thread skips it)."""
        if not pending.future.done():
            pending.expired = True
            pending.future.set_exception(DeadlineExceeded(f"deadline exceeded waiting for model '{self.name}'"))

    def run(self, inputs: Arrays, deadline: float | None = None) -> dict[str, np.ndarray]:
        """Run inputs in a batch and wait for their rows (until the deadline).

        When the model is idle and nothing is queued the batch runs at once in
        the calling thread, saving two thread switches (and GIL hand-offs).
        """
        future: Future[dict[str, np.ndarray]] = Future()
        pending = self._pending(inputs, deadline, future)
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceeded(f"deadline passed before model '{self.name}' could run")
        with self._cond:
            inline = not self._busy and not self._queue and not self._closed and self.config.max_batch_delay_s == 0
            if inline:
                self._busy = True
            else:
                self._enqueue(pending)
        if inline:
            try:
                future.set_running_or_notify_cancel()
                self._execute([pending])
            finally:
                self._free()
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded(f"deadline exceeded waiting for model '{self.name}'") from None

    def _pending(
        self, inputs: Arrays, deadline: float | None, future: Future | asyncio.Future | None = None
    ) -> _Pending:
        rows = _rows_of(inputs)
        if rows > self.config.max_batch_size:
            raise InvalidArgument(
                f"inputs: {rows} rows exceed max_batch_size {self.config.max_batch_size} "
                f"of model '{self.name}'; split the request"
            )
        key = tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in inputs.items()))
        observer = self.config.observer
        token = observer.request_queued() if observer is not None else None
        return _Pending(inputs, rows, key, deadline, Future() if future is None else future, token=token)

    def _enqueue(self, pending: _Pending, wake: bool = True) -> None:
        """Append to the queue (caller holds the lock) or refuse at once."""
        if self._closed:
            raise Unavailable(f"model '{self.name}' is shutting down")
        if len(self._queue) >= self.config.max_queue_size:
            self.stats.rejected += 1
            self._refused("rejected")
            raise ResourceExhausted(
                f"model '{self.name}' queue is full ({self.config.max_queue_size} requests); retry later"
            )
        self._queue.append(pending)
        if wake:
            self._wake()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop taking requests; run (or with `drain=False` fail) what is queued."""
        with self._cond:
            self._closed = True
            self._go = True
            if not drain:
                failed = [(item, Unavailable(f"model '{self.name}' was unloaded")) for item in self._queue]
                self._queue.clear()
                _deliver(failed)
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- worker ----------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            outcomes: list[tuple[_Pending, object]] = []
            try:
                if batch:
                    self._run(batch, outcomes)
            finally:
                rows = sum(item.rows for item in batch)
                with self._cond:
                    self._busy = False  # before the answers go: their loop's `_answered` sees a free model
                    if self._queue and _queued_rows(self._queue) >= min(rows, self.config.max_batch_size):
                        self._wake()  # as much is ready as the last batch had: waiting for more gains nothing
                # Else a loop that gets answers dispatches the next batch after them (`_answered`), unless
                # no loop got any, or requests wait from a loop that got none (several loops: tests, tools).
                answered = _deliver(outcomes, self._answered)
                with self._cond:
                    if self._queue and (not answered or self._waiting_elsewhere(answered)):
                        self._wake()

    def _waiting_elsewhere(self, loops: set[asyncio.AbstractEventLoop]) -> bool:
        """Whether a queued request waits on a loop other than `loops` (caller holds the lock)."""
        return any(
            isinstance(item.future, asyncio.Future) and item.future.get_loop() not in loops for item in self._queue
        )

    def _take_batch(self) -> list[_Pending] | None:
        """Wait for work, a free model and a go, then take one batch; None when closed and empty."""
        config = self.config
        with self._cond:
            while not self._queue or self._busy or not self._go:
                if self._closed and not self._queue and not self._busy:
                    return None
                self._cond.wait()
            self._busy = True
            self._go = self._closed
            if config.max_batch_delay_s > 0 and not self._closed:
                until = self._queue[0].enqueued + config.max_batch_delay_s
                while _queued_rows(self._queue) < config.max_batch_size and not self._closed:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            return self._pop_batch()

    def _pop_batch(self) -> list[_Pending]:
        """Take up to max_batch_size rows of requests shaped like the first one."""
        now = time.monotonic()
        batch: list[_Pending] = []
        kept: list[_Pending] = []
        expired: list[tuple[_Pending, BaseException]] = []
        rows = 0
        key = None
        while self._queue:
            item = self._queue.popleft()
            if item.deadline is not None and item.deadline <= now:
                self.stats.expired += 1
                self._refused("expired")
                expired.append((item, DeadlineExceeded(f"deadline passed while queued for model '{self.name}'")))
                continue
            if key is None:
                key = item.key
            if item.key != key or rows + item.rows > self.config.max_batch_size:
                kept.append(item)
                if rows >= self.config.max_batch_size:
                    break
                continue
            if not _start(item.future):
                if item.expired:
                    self.stats.expired += 1
                    self._refused("expired")
                continue  # the caller gave up
            batch.append(item)
            rows += item.rows
        self._queue.extendleft(reversed(kept))
        _deliver(expired)
        return batch

    def _execute(self, batch: list[_Pending]) -> None:
        """Run a batch in a `run()` caller's thread and answer its callers."""
        outcomes: list[tuple[_Pending, object]] = []
        self._run(batch, outcomes)
        _deliver(outcomes)

    def _answered(self, loop: asyncio.AbstractEventLoop) -> None:
        """On a loop, right after a batch's callers there were answered: the next batch after this turn."""
        with self._cond:
            if not self._busy and self._queue:
                self._schedule_dispatch(loop)

    def _run(
        self, batch: list[_Pending], outcomes: list[tuple[_Pending, object]], dequeued: float | None = None
    ) -> None:
        """Run one batch; each request's rows (or error) go to `outcomes`. `dequeued`: when a failed
        batch these requests were in started (its time is not time in the queue)."""
        started = time.monotonic()
        try:
            outputs, padded, merged = self._call(batch)
        except Exception as exc:  # the model failed: isolate the request that caused it
            if len(batch) > 1:
                for item in batch:
                    self._run([item], outcomes, dequeued or started)
                return
            outcomes.append((batch[0], _as_serving_error(exc, self.name)))
            self.stats.failed += 1
            self.stats.failed_ns += _ns(time.monotonic() - batch[0].enqueued)
            return
        finished = time.monotonic()
        offset = 0
        for item in batch:
            outcomes.append((item, {k: v[offset : offset + item.rows] for k, v in outputs.items()}))
            offset += item.rows
        self._record(batch, padded, (started, merged, finished, time.monotonic()), dequeued or started)
        if self.config.observer is not None:
            self._observe(self.config.observer, batch, padded, started, finished)

    def _call(self, batch: list[_Pending]) -> tuple[dict[str, np.ndarray], int, float]:
        """The batch's outputs, its padded rows and when its inputs were merged (monotonic)."""
        rows = sum(item.rows for item in batch)
        target = _padded_size(rows, self.config.allowed_batch_sizes)
        names = batch[0].inputs.keys()
        merged = {}
        for name in names:
            parts = [item.inputs[name] for item in batch]
            if target > rows:
                parts.append(np.repeat(parts[-1][-1:], target - rows, axis=0))
            merged[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
        merged_at = time.monotonic()
        outputs = self._run_batch(merged)
        for out_name, value in outputs.items():
            if value.ndim == 0 or value.shape[0] != target:
                raise Internal(
                    f"model '{self.name}' output '{out_name}' has shape {list(value.shape)}; "
                    f"expected {target} rows on axis 0"
                )
        return outputs, target - rows, merged_at

    def _record(
        self, batch: list[_Pending], padded: int, times: tuple[float, float, float, float], dequeued: float
    ) -> None:
        """Count a batch that ran; `times`: started, inputs merged, model returned, outputs split;
        `dequeued`: when its requests left the queue (earlier than `started` after a failed batch)."""
        started, merged, ran, split = times
        rows = sum(item.rows for item in batch)
        stats = self.stats
        stats.batches += 1
        stats.rows += rows
        stats.padded_rows += padded
        stats.batch_sizes[rows] += 1
        phases = (_ns(merged - started), _ns(ran - merged), _ns(split - ran))
        requests = len(batch)
        stats.succeeded += requests
        stats.succeeded_ns += sum(_ns(split - item.enqueued) for item in batch)
        stats.queue_ns += sum(_ns(dequeued - item.enqueued) for item in batch)
        stats.input_ns += phases[0] * requests
        stats.infer_ns += phases[1] * requests
        stats.output_ns += phases[2] * requests
        per_size = stats.batch_ns.setdefault(rows, [0, 0, 0, 0])
        per_size[0] += 1
        for index, value in enumerate(phases, 1):
            per_size[index] += value
        stats.last_batch_at = time.time()

    def _refused(self, reason: str) -> None:
        observer = self.config.observer
        if observer is not None:
            try:
                observer.request_refused(self.name, reason)
            except Exception:
                log.exception("batch observer failed for model %s", self.name)

    def _observe(
        self, observer: BatchObserver, batch: list[_Pending], padded: int, started: float, finished: float
    ) -> None:
        rows = sum(item.rows for item in batch)
        requests = tuple((item.token, item.enqueued) for item in batch)
        try:
            observer.batch_done(BatchObservation(self.name, rows, padded, started, finished, requests))
        except Exception:
            log.exception("batch observer failed for model %s", self.name)


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def _rows_of(inputs: Arrays) -> int:
    sizes = {v.shape[0] if v.ndim else 0 for v in inputs.values()}
    if len(sizes) != 1:
        raise InvalidArgument(f"inputs: every input needs the same number of rows, got {sorted(sizes)}")
    return sizes.pop()


def _queued_rows(queue: collections.deque[_Pending]) -> int:
    return sum(item.rows for item in queue)


def _padded_size(rows: int, allowed: tuple[int, ...]) -> int:
    if not allowed:
        return rows
    return allowed[bisect.bisect_left(allowed, rows)]


def _start(future: Future | asyncio.Future) -> bool:
    """Whether the caller still waits (a thread's future is marked running)."""
    if isinstance(future, Future):
        return future.set_running_or_notify_cancel()
    return not future.done()  # read across threads: at worst a result nobody takes is computed


def _deliver(
    outcomes: Sequence[tuple[_Pending, object]],
    then: Callable[[asyncio.AbstractEventLoop], None] | None = None,
) -> set[asyncio.AbstractEventLoop]:
    """Hand each request its rows or its error: threads' futures at once, each other event loop's
    callers in one callback on that loop, followed there by `then(loop)`. The loops sent one."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, object]]] = {}
    running = asyncio._get_running_loop()
    for item, outcome in outcomes:
        future = item.future
        if isinstance(future, Future) or future.get_loop() is running:
            _settle(future, outcome)
        else:
            by_loop.setdefault(future.get_loop(), []).append((future, outcome))
    sent = set()
    for loop, answers in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_all, answers, loop, then)
            sent.add(loop)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass
    return sent


def _settle_all(
    answers: list[tuple[asyncio.Future, object]],
    loop: asyncio.AbstractEventLoop | None = None,
    then: Callable[[asyncio.AbstractEventLoop], None] | None = None,
) -> None:
    for future, outcome in answers:
        _settle(future, outcome)
    if then is not None and loop is not None:
        then(loop)


def _settle(future: Future | asyncio.Future, outcome: object) -> None:
    if future.done():
        return
    try:
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
    except Exception:  # cancelled concurrently
        pass


def _as_serving_error(exc: Exception, name: str) -> ServingError:
    if isinstance(exc, ServingError):
        return exc
    log.error("model %s failed", name, exc_info=exc)
    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    return Internal(f"model '{name}' failed: {first_line}")

"""The Batchers' observer: batch metrics, and spans for queue wait and batch execution.

Each request remembers the span it was queued under (the call's server span);
after its batch ran, that span gets two children with the real start and end
times: `batch.queue_wait` (queued -> batch started) and `batch.execute` (the
model call, with the batch size as an attribute). Metrics are recorded at
once; the spans are made by a background thread, so a Batcher goes on to its
next batch without waiting for them.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from opentelemetry import trace
from opentelemetry.util.types import AttributeValue

from server.batching import BatchObservation
from server.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


class BatchTelemetry:
    """A `server.batching.BatchObserver` recording into metrics and traces."""

    def __init__(self, metrics: Metrics, tracer: trace.Tracer) -> None:
        self.metrics = metrics
        self.tracer = tracer
        # (observation, offset from time.monotonic_ns() to time.time_ns()); None stops the thread
        self._pending: queue.SimpleQueue[tuple[BatchObservation, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._write_spans, name="batch-spans", daemon=True)
        self._thread.start()

    def request_queued(self) -> trace.SpanContext | None:
        """The caller's span, if it is being traced."""
        context = trace.get_current_span().get_span_context()
        return context if context.is_valid and context.trace_flags.sampled else None

    def batch_done(self, observation: BatchObservation) -> None:
        model = observation.model
        self.metrics.batch_executed(model, observation.rows, observation.finished - observation.started)
        for _, enqueued in observation.requests:
            self.metrics.request_waited(model, max(0.0, observation.started - enqueued))
        if any(isinstance(token, trace.SpanContext) for token, _ in observation.requests):
            self._pending.put((observation, time.time_ns() - time.monotonic_ns()))

    def request_refused(self, model: str, reason: str) -> None:
        self.metrics.request_refused(model, reason)

    def close(self) -> None:
        """Make the spans of every batch observed so far, then stop the thread."""
        if self._thread.is_alive():
            self._pending.put(None)
            self._thread.join(10)

    def _write_spans(self) -> None:
        while (item := self._pending.get()) is not None:
            observation, to_epoch_ns = item
            try:
                self._spans(observation, to_epoch_ns)
            except Exception:
                log.exception("could not record the spans of a batch of model %s", observation.model)

    def _spans(self, observation: BatchObservation, to_epoch_ns: int) -> None:
        model = observation.model
        started_ns = int(observation.started * 1e9) + to_epoch_ns
        finished_ns = int(observation.finished * 1e9) + to_epoch_ns
        execute_attributes: dict[str, AttributeValue] = {
            "serving.model": model,
            "serving.batch.size": observation.rows,
            "serving.batch.padded_rows": observation.padded_rows,
            "serving.batch.requests": len(observation.requests),
        }
        for token, enqueued in observation.requests:
            if not isinstance(token, trace.SpanContext):
                continue
            parent = trace.set_span_in_context(trace.NonRecordingSpan(token))
            enqueued_ns = min(int(enqueued * 1e9) + to_epoch_ns, started_ns)
            wait = self.tracer.start_span(
                "batch.queue_wait", context=parent, start_time=enqueued_ns, attributes={"serving.model": model}
            )
            wait.end(end_time=started_ns)
            execute = self.tracer.start_span(
                "batch.execute", context=parent, start_time=started_ns, attributes=execute_attributes
            )
            execute.end(end_time=finished_ns)

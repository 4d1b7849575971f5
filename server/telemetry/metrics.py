"""Prometheus metrics of one App, in its own registry.

`Metrics` holds every metric and names what may be recorded in methods, so
the parts of the server (calls, batches, tasks, webhooks, uploads) record
through it without knowing Prometheus. `exposition()` renders the registry for
the HTTP shim's `/metrics`; `MetricsServer` serves it on its own port when
there is no shim.

With PROMETHEUS_MULTIPROC_DIR set (SERVER_PROCESSES > 1, server/processes.py)
counters, histograms and the in-flight gauge are prometheus-client's
multiprocess values: a scrape of any process reports the sum over all. What is
read at scrape time (model versions and queues, refusals, the task queue
length) comes from the process answering.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from server.batching import Batcher

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class Metrics:
    """Every metric of the server, registered in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "serving_requests",
            "Calls by method, transport and status code",
            ["method", "transport", "code"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "serving_request_duration_seconds",
            "Call latency",
            ["method", "transport"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.in_flight = Gauge(
            "serving_requests_in_flight", "Calls being served", ["transport"], registry=r, multiprocess_mode="livesum"
        )
        self.model_seconds = Histogram(
            "serving_model_execution_seconds",
            "Time of one model call on a batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "serving_batch_size",
            "Rows per model call (before padding)",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "serving_queue_wait_seconds",
            "Time a request waited for its batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # A function of this process's, read at scrape time (no multiprocess file: it is the same queue).
        self.task_queue_length: Any = (
            _FunctionGauge("serving_task_queue_length", "Async tasks waiting in the queue")
            if self.multiprocess
            else Gauge("serving_task_queue_length", "Async tasks waiting in the queue", registry=r)
        )
        self.tasks = Counter("serving_tasks", "Async tasks finished, by outcome", ["outcome"], registry=r)
        self.webhooks = Counter("serving_webhook_deliveries", "Webhook deliveries, by outcome", ["outcome"], registry=r)
        self.upload_bytes = Counter("serving_upload_bytes", "Bytes received by uploads", registry=r)
        self._children: dict[tuple[Any, ...], Any] = {}
        self._models = _ModelCollector()
        r.register(self._models)
        self.exposed = r  # what a scrape renders
        if self.multiprocess:
            self.exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposed)
            self.exposed.register(self._models)
            self.exposed.register(self.task_queue_length)

    # -- calls (the telemetry interceptor) -------------------------------

    def call_started(self, transport: str) -> None:
        self._child(self.in_flight, transport).inc()

    def call_finished(self, method: str, transport: str, code: str, seconds: float) -> None:
        self._child(self.in_flight, transport).dec()
        self._child(self.requests, method, transport, code).inc()
        self._child(self.request_seconds, method, transport).observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered (this runs for every call and request)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*labels))
        return child

    # -- models (the batch observer; queue depth and rejections are read at scrape time)

    def batch_executed(self, model: str, rows: int, seconds: float) -> None:
        self._child(self.batch_size, model).observe(rows)
        self._child(self.model_seconds, model).observe(seconds)

    def request_waited(self, model: str, seconds: float) -> None:
        self._child(self.queue_wait_seconds, model).observe(seconds)

    def request_refused(self, model: str, reason: str) -> None:
        """reason: "rejected" (queue full) or "expired" (deadline passed in the queue)."""
        self._models.refused(model, reason)

    def watch_models(self, models: Callable[[], Iterable[ServedModel]]) -> None:
        """Report the version and queue depth of the models `models()` returns at each scrape."""
        self._models.models = models

    # -- tasks, webhooks, uploads ----------------------------------------

    def set_task_queue_length(self, length: int) -> None:
        """Report a fixed length (replacing a watched function, which the App registers)."""
        fixed = float(length)
        self.task_queue_length.set_function(lambda: fixed)

    def watch_task_queue_length(self, length: Callable[[], float]) -> None:
        """Read the task queue length from `length()` at each scrape instead."""
        self.task_queue_length.set_function(length)

    def task_finished(self, outcome: str) -> None:
        """outcome: e.g. "succeeded", "failed", "cancelled", "expired"."""
        self.tasks.labels(outcome).inc()

    def webhook_delivered(self, outcome: str) -> None:
        """outcome: e.g. "delivered", "retried", "failed"."""
        self.webhooks.labels(outcome).inc()

    def uploaded(self, nbytes: int) -> None:
        self.upload_bytes.inc(nbytes)

    # -- exposition ------------------------------------------------------

    def exposition(self) -> tuple[bytes, str]:
        """The registry in the Prometheus text format, and its content type."""
        return generate_latest(self.exposed), CONTENT_TYPE_LATEST


class ServedModel(Protocol):
    """What the metrics read from a served model version."""

    name: str
    version: int
    batcher: Batcher


class _ModelCollector(Collector):
    """Served version and queue depth per model, read at scrape time, and refused requests.

    Refusals are counted here by model name rather than read from a Batcher,
    so the counters keep counting across version swaps (a new version has a
    new Batcher) and every served model reports 0 before its first refusal.
    """

    def __init__(self) -> None:
        self.models: Callable[[], Iterable[ServedModel]] = tuple
        self._refused: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def refused(self, model: str, reason: str) -> None:
        with self._lock:
            self._refused[(model, reason)] = self._refused.get((model, reason), 0) + 1

    def describe(self) -> Sequence[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily("serving_model_queue_depth", "Requests queued for a model", labels=["model"])
        rejected = CounterMetricFamily(
            "serving_model_rejected_requests", "Requests refused because the model's queue was full", labels=["model"]
        )
        expired = CounterMetricFamily(
            "serving_model_expired_requests",
            "Requests dropped because their deadline passed in the queue",
            labels=["model"],
        )
        version = GaugeMetricFamily("serving_model_version", "The version of a model being served", labels=["model"])
        newest: dict[str, int] = {}
        queued: dict[str, int] = {}
        for model in self.models():  # one per served version: the newest version, the queues summed
            newest[model.name] = max(newest.get(model.name, 0), model.version)
            queued[model.name] = queued.get(model.name, 0) + model.batcher.queue_depth
        for name in sorted(newest):
            version.add_metric([name], newest[name])
            depth.add_metric([name], queued[name])
        names = set(newest)
        with self._lock:
            counts = dict(self._refused)
        names.update(name for name, _ in counts)
        for name in sorted(names):
            rejected.add_metric([name], counts.get((name, "rejected"), 0))
            expired.add_metric([name], counts.get((name, "expired"), 0))
        return [version, depth, rejected, expired]


class _FunctionGauge(Collector):
    """A gauge read from a function at scrape time, for the multiprocess exposition (whose files hold
    no functions; a prometheus Gauge would add a file of its own per process)."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.function: Callable[[], float] = lambda: 0.0

    def set_function(self, function: Callable[[], float]) -> None:
        self.function = function

    def describe(self) -> Sequence[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, value=float(self.function()))]


class MetricsServer:
    """Serves a registry on `host:port` (`/metrics`) from a thread; `stop()` ends it."""

    def __init__(self, metrics: Metrics, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._httpd: WSGIServer
        self._httpd, self._thread = start_http_server(int(port), host.strip("[]") or "0.0.0.0", metrics.exposed)
        self.port: int = self._httpd.server_port
        self._stopped = threading.Event()

    def stop(self) -> None:
        if not self._stopped.is_set():
            self._stopped.set()
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)

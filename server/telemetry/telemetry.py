"""Everything the App needs to operate the server: auth, access log, metrics, tracing.

`Telemetry` is built once from the settings in the composition root. Its
`interceptors` go in front of the ErrorInterceptor, outermost first:

1. tracing (when enabled): a SERVER span per call (parented by an incoming `traceparent`);
2. calls: in-flight gauge, request metrics, one access-log line per call;
3. auth: API key and rate limit.

`batch_observer` goes into the BatchingConfig. `close()` comes last in the
shutdown order, after the servers and batchers stopped: it flushes the access
log and the spans and stops the metrics port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc

from server.config import Settings
from server.security.auth import Authenticator, AuthInterceptor, load_api_keys
from server.security.ratelimit import RateLimiter
from server.telemetry.accesslog import AccessLog
from server.telemetry.batches import BatchTelemetry
from server.telemetry.interceptor import CallTelemetryInterceptor
from server.telemetry.metrics import Metrics, MetricsServer, ServedModel
from server.telemetry.tracing import Tracing

log = logging.getLogger("server.telemetry")


class Telemetry:
    """The App's auth, access log, metrics and tracing."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.tracing = Tracing(settings)
        self.access_log = (
            AccessLog(Path(settings.access_log_path), settings.access_log_max_bytes, settings.access_log_backup_count)
            if settings.access_log_path
            else None
        )
        self.authenticator = _authenticator(settings)
        self.batch_observer = BatchTelemetry(self.metrics, self.tracing.tracer)
        self.interceptors: list[grpc.ServerInterceptor] = [
            *([self.tracing.server_interceptor()] if self.tracing.enabled else []),
            CallTelemetryInterceptor(self.metrics, self.access_log),
            AuthInterceptor(self.authenticator),
        ]
        self.metrics_server: MetricsServer | None = None
        self._closed = False

    def watch_models(self, models: Callable[[], Iterable[ServedModel]]) -> None:
        """Report the version, queue depth and rejections of the served models in the metrics."""
        self.metrics.watch_models(models)

    def serve_metrics(self) -> None:
        """Serve /metrics on METRICS_ADDRESS (used when there is no HTTP shim to serve it)."""
        if self.settings.metrics_address and self.metrics_server is None:
            self.metrics_server = MetricsServer(self.metrics, self.settings.metrics_address)
            host = self.settings.metrics_address.rpartition(":")[0]
            log.info("metrics on %s:%d/metrics", host, self.metrics_server.port)

    def close(self) -> None:
        """Flush the access log and the spans, stop the metrics port; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.access_log is not None:
            self.access_log.close()
        self.batch_observer.close()
        self.tracing.shutdown()
        if self.metrics_server is not None:
            self.metrics_server.stop()


def _authenticator(settings: Settings) -> Authenticator:
    keys = load_api_keys(settings)
    rate = settings.rate_limit_per_second
    limiter = RateLimiter(rate, settings.rate_limit_burst) if rate > 0 and keys else None
    if not keys:
        log.warning("authentication is OFF: no API keys configured (API_KEYS, API_KEYS_FILE)")
        if rate > 0:
            log.warning("RATE_LIMIT_PER_SECOND is ignored: the rate limit applies per API key")
    else:
        names = sorted({key.name for key in keys})
        log.info("authentication on: %d API keys (%s)", len(keys), ", ".join(names))
        if limiter is not None:
            log.info("rate limit: %g requests/s per API key, bursts of %d", limiter.rate, limiter.burst)
    return Authenticator(keys, settings.auth_exempt_reflection, limiter)

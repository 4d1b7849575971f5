"""Webhooks: POST a finished task as JSON, signed, with retries, on threads of their own.

Each request carries `Content-Type: application/json`, a `traceparent` in
the task's trace (the attempt's `webhook.deliver` span's when tracing is on,
else the one stored with the task), and
`X-Signature-SHA256: sha256=<hex HMAC-SHA256 of the body>` keyed with
WEBHOOK_SECRET (no signature header when the secret is empty).
Connection errors, timeouts, 429 and 5xx are retried with exponential backoff
and jitter up to WEBHOOK_MAX_ATTEMPTS; any 2xx is delivered; any other answer
gives up at once. Every attempt is recorded in the task's `webhook` field.
Private, loopback and link-local targets are refused unless
WEBHOOK_ALLOW_PRIVATE (every address the host resolves to is checked, at
submission and again before each attempt).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import requests

from server.errors import InvalidArgument, NotFound, ServingError
from server.tasks import records
from server.tasks.observer import NO_OBSERVER, TaskObserver
from server.tasks.scheduler import Scheduler, backoff_delay
from server.tasks.store import TaskStore
from server.telemetry.tracing import Tracing, current_traceparent
from serving.v1 import task_pb2

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Signature-SHA256"
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0
MAX_URL_LENGTH = 2048

#: Called once delivery is settled (delivered or given up: True) or abandoned for now (False).
Done = Callable[[bool], None]


def sign(body: bytes, secret: str) -> str:
    """The signature header value: `sha256=<hex HMAC-SHA256 of body>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _hostname(url: str) -> str:
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""


def check_url(url: str, allow_private: bool) -> None:
    """InvalidArgument unless `url` is http(s) with a host that is allowed to be reached."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise InvalidArgument(f"webhook_url: '{url[:200]}' is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > MAX_URL_LENGTH:
        raise InvalidArgument(f"webhook_url: '{url[:200]}' must be an http:// or https:// URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InvalidArgument(f"webhook_url: '{url[:200]}' has an invalid port") from None
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidArgument(f"webhook_url: cannot resolve host '{parts.hostname}': {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if (
            address.is_private
            or address.is_loopback
            or address.is_link_local
            or address.is_multicast
            or address.is_reserved
            or address.is_unspecified
        ):
            raise InvalidArgument(
                f"webhook_url: host '{parts.hostname}' resolves to the non-public address {address}; "
                "private, loopback and link-local targets are not allowed (WEBHOOK_ALLOW_PRIVATE)"
            )


def pending(task: task_pb2.Task) -> bool:
    """Whether a finished task's webhook still has to be delivered."""
    return bool(task.webhook.url) and not task.webhook.HasField("delivered_time") and not task.webhook.gave_up


class WebhookSender:
    """Delivers webhooks on its own small thread pool; retries wait on a timer thread."""

    def __init__(
        self,
        store: TaskStore,
        secret: str,
        max_attempts: int,
        timeout_s: float,
        allow_private: bool,
        workers: int,
        tracing: Tracing | None = None,
        observer: TaskObserver = NO_OBSERVER,
    ) -> None:
        self.store = store
        self.observer = observer
        self.tracing = tracing
        self.secret = secret
        self.max_attempts = max_attempts
        self.timeout_s = timeout_s
        self.allow_private = allow_private
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook")
        self._timers = Scheduler("webhook-retries")
        self._local = threading.local()

    def deliver(self, task_id: str, done: Done) -> None:
        """Start delivering a finished task's webhook; `done` is called when it settles."""
        self._pool.submit(self._attempt, task_id, done)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _attempt(self, task_id: str, done: Done) -> None:
        try:
            task = self.store.get(task_id)
            if not pending(task):
                done(True)
                return
            number = task.webhook.attempts + 1
            with self._span(task, number) as span:
                http_status, error, retryable = self._post(task)
                if span is not None:
                    span.set_attribute("http.response.status_code", http_status)
                    if error:
                        span.set_attribute("error.type", error[:200])
            delivered = 200 <= http_status < 300
            gave_up = not delivered and (not retryable or number >= self.max_attempts)
            self.store.update(task_id, lambda t: _record(t, number, http_status, error, delivered, gave_up))
        except NotFound:
            done(True)
            return
        except ServingError as exc:  # the store is down: leave the entry to be claimed again
            log.warning("webhook of task %s: %s", task_id, exc)
            done(False)
            return
        except Exception:
            log.exception("webhook of task %s failed", task_id)
            done(False)
            return
        if delivered or gave_up:
            self.observer.webhook_delivered("delivered" if delivered else "failed")
            log.log(
                logging.INFO if delivered else logging.WARNING,
                "webhook of task %s %s after %d attempt(s)",
                task_id,
                "delivered" if delivered else "given up",
                number,
            )
            done(True)
            return
        delay = backoff_delay(number, FIRST_RETRY_S, MAX_RETRY_S)

        def retry() -> None:
            self._pool.submit(self._attempt, task_id, done)

        self._timers.call_later(delay, retry)
        self.observer.webhook_delivered("retried")

    def _span(self, task: task_pb2.Task, number: int) -> contextlib.AbstractContextManager[Any]:
        """A `webhook.deliver` span continuing the task's trace (from its stored traceparent), when tracing is on."""
        if self.tracing is None or not self.tracing.enabled or not task.traceparent:
            return contextlib.nullcontext()
        attributes = {"task.id": task.id, "webhook.attempt": number, "server.address": _hostname(task.webhook.url)}
        return self.tracing.start_span_from_traceparent("webhook.deliver", task.traceparent, attributes)

    def _post(self, task: task_pb2.Task) -> tuple[int, str, bool]:
        """(HTTP status or 0, error text, worth retrying) of one POST."""
        body = records.to_json(task).encode()
        traceparent = current_traceparent() or task.traceparent
        headers = {"Content-Type": "application/json", "traceparent": traceparent}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(body, self.secret)
        try:
            check_url(task.webhook.url, self.allow_private)
            reply = self._session().post(
                task.webhook.url, data=body, headers=headers, timeout=self.timeout_s, allow_redirects=False
            )
            reply.close()
        except InvalidArgument as exc:
            return 0, exc.message, False
        except requests.RequestException as exc:
            return 0, f"{type(exc).__name__}: {exc}"[:500], True
        code = reply.status_code
        return code, "" if 200 <= code < 300 else f"HTTP {code}", code == 429 or code >= 500

    def stop(self) -> None:
        """Stop retrying and finish the attempts in flight; unsettled deliveries resume elsewhere."""
        self._timers.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _record(task: task_pb2.Task, number: int, http_status: int, error: str, delivered: bool, gave_up: bool) -> None:
    hook = task.webhook
    at = records.now()
    hook.attempts = number
    hook.last_http_status = http_status
    hook.history.add(http_status=http_status, error=error).time.CopyFrom(at)
    if delivered:
        hook.delivered_time.CopyFrom(at)
    hook.gave_up = gave_up

"""The `grpc.ServicerContext` of an HTTP call, and metadata taken from HTTP headers.

Servicers and interceptors see the same context API as over gRPC. Headers
become metadata the grpc-gateway way: `Authorization`, `X-Request-Id`,
`Traceparent` (and `Tracestate`) are forwarded as they are, `Grpc-Metadata-K: v`
becomes `k: v` (base64-decoded for `-bin` keys), and `Grpc-Timeout` (gRPC
syntax, e.g. `5S`, `250m`) or `X-Request-Timeout` (seconds, or the same
syntax) sets the deadline. `transport` is "http" so interceptors can tell the
transports apart.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import grpc

from server.errors import InvalidArgument
from server.metadata import Metadata

log = logging.getLogger(__name__)

FORWARDED_HEADERS = ("authorization", "x-request-id", "traceparent", "tracestate")
METADATA_PREFIX = "grpc-metadata-"
_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])\Z")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


class RpcAborted(Exception):
    """Raised by `HttpServicerContext.abort`, as grpc raises on `context.abort`."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def metadata_from_headers(headers: Mapping[str, str]) -> Metadata:
    """gRPC metadata for the forwarded and `Grpc-Metadata-*` headers."""
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers.items():
        key = name.lower()
        if key in FORWARDED_HEADERS:
            metadata.append((key, value))
        elif key.startswith(METADATA_PREFIX) and len(key) > len(METADATA_PREFIX):
            key = key[len(METADATA_PREFIX) :]
            if key.endswith("-bin"):
                try:
                    metadata.append((key, base64.b64decode(value, validate=True)))
                except binascii.Error:
                    raise InvalidArgument(f"header {name}: a -bin metadata value must be base64") from None
            else:
                metadata.append((key, value))
    return tuple(metadata)


def _seconds(header: str, value: str, plain_seconds: bool) -> float:
    found = _TIMEOUT.match(value.strip())
    if found:
        return int(found.group(1)) * _UNIT_SECONDS[found.group(2)]
    if plain_seconds:
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if 0 <= seconds < float("inf"):
            return seconds
    expected = "seconds, or " if plain_seconds else ""
    raise InvalidArgument(f"header {header}: expected {expected}a gRPC timeout such as '5S' or '250m', got {value!r}")


def timeout_from_headers(headers: Mapping[str, str]) -> float | None:
    """Seconds until the deadline from `Grpc-Timeout` / `X-Request-Timeout` (the smaller wins)."""
    timeouts = []
    if "Grpc-Timeout" in headers:
        timeouts.append(_seconds("Grpc-Timeout", headers["Grpc-Timeout"], plain_seconds=False))
    if "X-Request-Timeout" in headers:
        timeouts.append(_seconds("X-Request-Timeout", headers["X-Request-Timeout"], plain_seconds=True))
    return min(timeouts) if timeouts else None


def peer_of(peername: Any) -> str:
    """gRPC's peer string ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678") for a socket's peername."""
    if isinstance(peername, (tuple, list)) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
    return "unknown"


class RecordedContext:
    """What an in-process context keeps itself: the status a servicer set (abort raises), the trailing
    metadata, and the call's life (`is_active`, `add_callback`). HTTP calls and plain servicers on
    the grpc.aio server (server/threaded.py) share it."""

    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._active = True
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.trailing_metadata_sent: Metadata = ()

    def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: Metadata = ()) -> NoReturn:
        if trailing_metadata:
            self.set_trailing_metadata(trailing_metadata)
        self._code, self._details = code, details
        raise RpcAborted(code, details)

    def abort_with_status(self, status: Any) -> NoReturn:
        self.set_trailing_metadata(tuple(status.trailing_metadata or ()))
        self.abort(status.code, status.details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailing_metadata_sent = tuple(trailing_metadata)

    def is_active(self) -> bool:
        return self._active

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            if not self._active:
                return False
            self._callbacks.append(callback)
        return True

    def _ended(self) -> list[Callable[[], None]] | None:
        """Mark the call over; its callbacks the first time, None after (caller holds the lock)."""
        if not self._active:
            return None
        self._active = False
        callbacks, self._callbacks = self._callbacks, []
        return callbacks


def run_callbacks(callbacks: list[Callable[[], None]]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("a call's done callback failed")


class HttpServicerContext(RecordedContext, grpc.ServicerContext):
    """What a servicer and the interceptors see of an HTTP call."""

    transport = "http"

    def __init__(self, metadata: Metadata, peer: str, timeout: float | None, route: str | None = None) -> None:
        self.route = route  # "POST /v1/models/{model}:predict", for the access log
        # (model, version, label) when the model comes from the URL rather than the request message
        self.model_target: tuple[str, int, str] | None = None
        # Open Inference Protocol binary bodies: the length of the JSON part of the request
        # (`Inference-Header-Content-Length`) and of the answer (None: the whole body is JSON).
        self.json_length_in: int | None = None
        self.json_length_out: int | None = None
        super().__init__()
        self._metadata = metadata
        self._peer = peer
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self.initial_metadata: Metadata = ()

    # -- what the call carries ------------------------------------------------------

    def invocation_metadata(self) -> Metadata:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, list[bytes]]:  # type: ignore[override]  # grpc's is this shape; its stubs say bytes
        return {}

    def time_remaining(self) -> float | None:  # type: ignore[override]  # None: no deadline, as grpc's own contexts
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    # -- metadata sent back ------------------------------------------------------------

    def send_initial_metadata(self, initial_metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.initial_metadata = tuple(initial_metadata)

    def response_headers(self) -> dict[str, str]:
        """`Grpc-Metadata-*` and `Grpc-Trailer-*` headers, as grpc-gateway sends them.

        A `retry-after` entry (set with RESOURCE_EXHAUSTED by the rate limit)
        also becomes the HTTP `Retry-After` header.
        """
        headers = {}
        for prefix, pairs in (
            ("Grpc-Metadata-", self.initial_metadata),
            ("Grpc-Trailer-", self.trailing_metadata_sent),
        ):
            for key, value in pairs:
                text = base64.b64encode(value).decode() if isinstance(value, bytes) else value
                headers[prefix + key] = text
                if key == "retry-after":
                    headers["Retry-After"] = text
        return headers

    def set_compression(self, compression: Any) -> None:
        return None

    def disable_next_message_compression(self) -> None:
        return None

    # -- life cycle -----------------------------------------------------------------

    def is_active(self) -> bool:
        if self._active and self._deadline is not None and time.monotonic() >= self._deadline:
            return False
        return self._active

    def cancel(self) -> None:  # type: ignore[override]  # grpc's servicer contexts return None too
        self.end_early(grpc.StatusCode.CANCELLED, "the call was cancelled")

    def end_early(self, code: grpc.StatusCode, details: str) -> None:
        """End the call before the servicer did: client gone, deadline passed, shutdown."""
        if self._code is None:
            self._code, self._details = code, details
        self.finish()

    def finish(self) -> None:
        """The call is over: run the callbacks once."""
        with self._lock:
            callbacks = self._ended()
        if callbacks is not None:
            run_callbacks(callbacks)

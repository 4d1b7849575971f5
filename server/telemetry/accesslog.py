"""The access log: one JSON line per gRPC call or HTTP request, in a rotated file.

Request threads only put the call's record on an in-memory queue; a writer
thread wakes every `FLUSH_SECONDS`, builds and encodes what has queued up as
JSON lines and hands them to the `RotatingFileHandler` in chunks of many lines
(one write, one size check per chunk, not per line). Neither the disk nor the
encoding holds up a call, and a busy server does not pay a thread wake-up (a
GIL hand-off) per call. `close()` writes what is queued and closes the file.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import grpc

from server.telemetry.calls import CallRecord

FLUSH_SECONDS = 0.2
CHUNK_BYTES = 64 * 1024  # at most this much (and half of max_bytes) per write

# A call's line as queued: its end time (time.time()), then the values of FIELDS.
_CallLine = tuple[Any, ...]
FIELDS = (
    "key",
    "peer",
    "transport",
    "method",
    "status",
    "latency_ms",
    "request_bytes",
    "response_bytes",
    "request_id",
    "trace_id",
    "model",
    "route",
)
log = logging.getLogger(__name__)


class AccessLog:
    """Writes access records as JSON lines to `path` (rotated by size, `backup_count` kept)."""

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        self._file.setFormatter(logging.Formatter("%(message)s"))
        self._chunk_bytes = min(CHUNK_BYTES, max_bytes // 2) if max_bytes > 0 else CHUNK_BYTES
        self._queue: queue.SimpleQueue[dict[str, Any] | _CallLine] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._writer.start()
        self._closed = False

    def write(self, entry: dict[str, Any]) -> None:
        """Queue one line (never blocks on the disk)."""
        if not self._closed:
            self._queue.put(entry)

    def write_call(self, record: CallRecord, code: grpc.StatusCode, request_id: str | None, model: str | None) -> None:
        """Queue the line of a call that just ended: its values now, the JSON in the writer thread."""
        if not self._closed:
            self._queue.put(
                (
                    time.time(),
                    record.key_name,
                    record.peer,
                    record.transport,
                    record.method,
                    code.name,
                    round(record.elapsed_ms(), 3),
                    record.request_bytes,
                    record.response_bytes,
                    request_id,
                    record.trace_id,
                    model,
                    record.route,
                )
            )

    def close(self) -> None:
        """Write what is queued, then close the file; later writes are dropped."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._writer.join()
        self._drain()
        self._file.close()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            try:
                self._drain()
            except Exception:  # keep the writer alive whatever one drain met
                log.exception("access log: writing failed")

    def _drain(self) -> None:
        chunk: list[str] = []
        size = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            try:
                entry = call_entry(item) if isinstance(item, tuple) else item
                line = json.dumps(entry, separators=(",", ":"))  # ASCII: characters are bytes for rotation
            except Exception:
                log.exception("access log: dropped an entry that cannot be written")
                continue
            if chunk and size + len(line) + 1 > self._chunk_bytes:
                self._emit(chunk)
                chunk, size = [], 0
            chunk.append(line)
            size += len(line) + 1
        if chunk:
            self._emit(chunk)

    def _emit(self, lines: list[str]) -> None:
        """Write lines at once (the handler adds the last newline and rotates by size before writing)."""
        self._file.handle(logging.makeLogRecord({"msg": "\n".join(lines), "levelno": logging.INFO}))


def call_entry(item: _CallLine) -> dict[str, Any]:
    """The fields of one call's access-log line (the API key's name, never the key)."""
    ended, *values = item
    entry: dict[str, Any] = {
        "time": datetime.fromtimestamp(ended, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        **dict(zip(FIELDS, values, strict=True)),
    }
    if entry["route"] is None:
        del entry["route"]
    return entry

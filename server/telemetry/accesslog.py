"""The access log: one JSON line per gRPC call or HTTP request, in a rotated file.

Request threads only put the entry on an in-memory queue (`QueueHandler`); one
listener thread encodes it as JSON and writes it to the `RotatingFileHandler`,
so neither the disk nor the encoding holds up a call. `close()` drains the
queue and closes the file.
"""

from __future__ import annotations

import json
import logging
import queue
from datetime import datetime, timezone
from logging.handlers import QueueHandler, QueueListener, RotatingFileHandler
from pathlib import Path
from typing import Any

import grpc

from server.telemetry.calls import CallRecord


class AccessLog:
    """Writes access records as JSON lines to `path` (rotated by size, `backup_count` kept)."""

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        self._file.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._handler = _Enqueue(self._queue)
        self._listener = QueueListener(self._queue, self._file)
        self._listener.start()
        self._closed = False

    def write(self, entry: dict[str, Any]) -> None:
        """Queue one line (never blocks on the disk)."""
        if not self._closed:
            self._handler.handle(logging.makeLogRecord({"msg": _JsonLine(entry), "levelno": logging.INFO}))

    def close(self) -> None:
        """Write what is queued, then close the file; later writes are dropped."""
        if self._closed:
            return
        self._closed = True
        self._listener.stop()
        self._file.close()


class _Enqueue(QueueHandler):
    """Queues records as they are: the message is formatted in the listener thread."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


class _JsonLine:
    """An access entry that becomes its JSON line when the file handler formats it."""

    __slots__ = ("entry",)

    def __init__(self, entry: dict[str, Any]) -> None:
        self.entry = entry

    def __str__(self) -> str:
        return json.dumps(self.entry, separators=(",", ":"), ensure_ascii=False)


def access_entry(
    record: CallRecord, code: grpc.StatusCode, request_id: str | None, model: str | None
) -> dict[str, Any]:
    """The fields of one access-log line (the API key's name, never the key)."""
    entry: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "key": record.key_name,
        "peer": record.peer,
        "transport": record.transport,
        "method": record.method,
        "status": code.name,
        "latency_ms": round(record.elapsed_ms(), 3),
        "request_bytes": record.request_bytes,
        "response_bytes": record.response_bytes,
        "request_id": request_id,
        "trace_id": record.trace_id,
        "model": model,
    }
    if record.route is not None:
        entry["route"] = record.route
    return entry

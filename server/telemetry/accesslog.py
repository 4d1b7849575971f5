"""The access log: one JSON line per gRPC call or HTTP request, in a rotated file.

Request threads only put the entry on an in-memory queue; a writer thread
wakes every `FLUSH_SECONDS`, encodes what has queued up as JSON lines and
writes them to the `RotatingFileHandler`. Neither the disk nor the encoding
holds up a call, and a busy server does not pay a thread wake-up (a GIL
hand-off) per call. `close()` writes what is queued and closes the file.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from datetime import datetime, timezone
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Any

import grpc

from server.telemetry.calls import CallRecord

FLUSH_SECONDS = 0.2


class AccessLog:
    """Writes access records as JSON lines to `path` (rotated by size, `backup_count` kept)."""

    def __init__(self, path: Path, max_bytes: int, backup_count: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        self._file.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._writer = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._writer.start()
        self._closed = False

    def write(self, entry: dict[str, Any]) -> None:
        """Queue one line (never blocks on the disk)."""
        if not self._closed:
            self._queue.put(entry)

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
            self._drain()

    def _drain(self) -> None:
        while True:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            line = json.dumps(entry, separators=(",", ":"), ensure_ascii=False)
            self._file.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))


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

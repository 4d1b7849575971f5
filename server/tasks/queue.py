"""The work queue of async predictions: the TaskQueue interface and its in-process implementation.

An entry names a task and carries the request's options (the PredictRequest
without its inputs, which live in the task record). A worker takes entries,
and acknowledges each when it is completely done with it (the task finished
and its webhook settled). An entry not acknowledged within the visibility
timeout is claimed by another worker, so a crashed worker loses nothing.
Retries wait in a delayed set until they are due, without holding a worker.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class QueueEntry:
    entry_id: str
    task_id: str
    options: bytes


class TaskQueue(ABC):
    """Entries for workers, with acknowledgement, claiming of stale entries and delayed retries."""

    @abstractmethod
    def push(self, task_id: str, options: bytes) -> None: ...

    @abstractmethod
    def delay(self, task_id: str, options: bytes, due: float) -> None:
        """Push the entry when time.time() reaches `due`."""

    @abstractmethod
    def take(self, consumer: str, count: int, block_s: float) -> list[QueueEntry]:
        """New entries for `consumer` (waiting up to `block_s` for one); due retries are pushed first."""

    @abstractmethod
    def claim_stale(self, consumer: str, min_idle_s: float, count: int) -> list[QueueEntry]:
        """Entries other consumers took but did not acknowledge or touch for `min_idle_s`."""

    @abstractmethod
    def touch(self, consumer: str, entry_ids: list[str]) -> None:
        """Mark entries as still being worked on (their idle time starts again)."""

    @abstractmethod
    def ack(self, entry_id: str) -> None: ...

    @abstractmethod
    def length(self) -> float:
        """Entries waiting for a worker (not yet taken) plus delayed retries; read at each metrics scrape."""

    def close(self) -> None:  # noqa: B027 (optional: nothing to release unless a subclass says so)
        """Release connections."""


class MemoryTaskQueue(TaskQueue):
    """The same flow in one process: a deque, a pending table and a heap of delayed retries."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: deque[QueueEntry] = deque()
        self._pending: dict[str, tuple[QueueEntry, float]] = {}  # id -> (entry, last touched, monotonic)
        self._delayed: list[tuple[float, int, str, bytes]] = []
        self._ids = itertools.count(1)

    def push(self, task_id: str, options: bytes) -> None:
        with self._cond:
            self._ready.append(QueueEntry(str(next(self._ids)), task_id, options))
            self._cond.notify()

    def delay(self, task_id: str, options: bytes, due: float) -> None:
        with self._cond:
            heapq.heappush(self._delayed, (due, next(self._ids), task_id, options))
            self._cond.notify()

    def _promote(self) -> float | None:
        """Move due retries to the ready queue; seconds until the next one (None: none)."""
        while self._delayed and self._delayed[0][0] <= time.time():
            _, _, task_id, options = heapq.heappop(self._delayed)
            self._ready.append(QueueEntry(str(next(self._ids)), task_id, options))
        return self._delayed[0][0] - time.time() if self._delayed else None

    def take(self, consumer: str, count: int, block_s: float) -> list[QueueEntry]:
        deadline = time.monotonic() + block_s
        with self._cond:
            while True:
                next_due = self._promote()
                if self._ready:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                self._cond.wait(min(remaining, next_due) if next_due is not None else remaining)
            taken = [self._ready.popleft() for _ in range(min(count, len(self._ready)))]
            for entry in taken:
                self._pending[entry.entry_id] = (entry, time.monotonic())
            return taken

    def claim_stale(self, consumer: str, min_idle_s: float, count: int) -> list[QueueEntry]:
        now = time.monotonic()
        with self._cond:
            stale = [e for e, touched in self._pending.values() if now - touched >= min_idle_s][:count]
            for entry in stale:
                self._pending[entry.entry_id] = (entry, now)
            return stale

    def touch(self, consumer: str, entry_ids: list[str]) -> None:
        now = time.monotonic()
        with self._cond:
            for entry_id in entry_ids:
                if entry_id in self._pending:
                    self._pending[entry_id] = (self._pending[entry_id][0], now)

    def ack(self, entry_id: str) -> None:
        with self._cond:
            self._pending.pop(entry_id, None)

    def length(self) -> float:
        with self._cond:
            return len(self._ready) + len(self._delayed)

    def close(self) -> None:
        with self._cond:
            self._cond.notify_all()

"""In-memory TaskStore: the same interface and TTL behaviour as Redis, for one process, nothing kept."""

from __future__ import annotations

import logging
import threading
import time

from server.tasks import records
from server.tasks.records import Cursor
from server.tasks.store import Subscription, TaskStore
from serving.v1 import task_pb2

log = logging.getLogger(__name__)


class _MemorySubscription(Subscription):
    def __init__(self, store: MemoryTaskStore, task_id: str) -> None:
        self._store = store
        self._task_id = task_id
        self._seen = store._versions.get(task_id, 0)

    def wait(self, timeout: float) -> None:
        store = self._store
        with store._changed:
            store._changed.wait_for(lambda: store._versions.get(self._task_id, 0) != self._seen, timeout)
            self._seen = store._versions.get(self._task_id, 0)

    def close(self) -> None:
        pass


class MemoryTaskStore(TaskStore):
    """Records in a dict, each with an expiry time refreshed on every write."""

    address = "memory"

    def __init__(self, ttl_seconds: float) -> None:
        super().__init__(ttl_seconds)
        log.warning("no REDIS_ADDRESS: tasks are kept in memory, in this process only, and lost on restart")
        self._changed = threading.Condition()
        # id -> (JSON text, the record parsed once, expiry on time.monotonic())
        self._records: dict[str, tuple[str, task_pb2.Task, float]] = {}
        self._versions: dict[str, int] = {}
        self._leases: dict[str, tuple[str, float]] = {}

    def _live(self, task_id: str) -> str | None:
        entry = self._records.get(task_id)
        if entry is None:
            return None
        if entry[2] <= time.monotonic():
            del self._records[task_id]
            return None
        return entry[0]

    def _read(self, task_id: str) -> tuple[str, task_pb2.Task] | None:
        with self._changed:
            text = self._live(task_id)
            return None if text is None else (text, _copy(self._records[task_id][1]))

    def _swap(self, task_id: str, expected: str | None, old: task_pb2.Task | None, new: task_pb2.Task | None) -> bool:
        with self._changed:
            if self._live(task_id) != expected:
                return False
            if new is None:
                del self._records[task_id]
            else:
                text = records.to_json(new)
                self._records[task_id] = (text, records.from_json(text), time.monotonic() + self.ttl_seconds)
            self._versions[task_id] = self._versions.get(task_id, 0) + 1
            self._changed.notify_all()
            return True

    def list(
        self, task_filter: task_pb2.TaskFilter, page_size: int, cursor: Cursor | None
    ) -> tuple[list[task_pb2.Task], Cursor | None]:
        with self._changed:
            live = [self._records[i][1] for i in list(self._records) if self._live(i) is not None]
            self._versions = {i: v for i, v in self._versions.items() if i in self._records}
        # Like the Redis indexes: listing covers tasks created within the record lifetime.
        cutoff = records.micros(records.now()) - int(self.ttl_seconds * 1e6)
        tasks = sorted(
            (t for t in live if records.matches(t, task_filter) and records.micros(t.create_time) >= cutoff),
            key=lambda t: (records.micros(t.create_time), t.id),
            reverse=True,
        )
        if cursor is not None:
            tasks = [t for t in tasks if (records.micros(t.create_time), t.id) < (cursor.score, cursor.task_id)]
        page = [_copy(t) for t in tasks[:page_size]]
        more = len(tasks) > page_size
        last = page[-1] if page and more else None
        return page, None if last is None else Cursor(records.micros(last.create_time), last.id)

    def subscribe(self, task_id: str) -> Subscription:
        with self._changed:
            return _MemorySubscription(self, task_id)

    def acquire_lease(self, task_id: str, token: str, seconds: float) -> bool:
        with self._changed:
            holder = self._leases.get(task_id)
            if holder is not None and holder[0] != token and holder[1] > time.monotonic():
                return False
            self._leases[task_id] = (token, time.monotonic() + seconds)
            return True

    def refresh_lease(self, task_id: str, token: str, seconds: float) -> bool:
        with self._changed:
            holder = self._leases.get(task_id)
            if holder is None or holder[0] != token:
                return False
            self._leases[task_id] = (token, time.monotonic() + seconds)
            return True

    def release_lease(self, task_id: str, token: str) -> None:
        with self._changed:
            if self._leases.get(task_id, ("",))[0] == token:
                del self._leases[task_id]

    def ping(self) -> None:
        pass


def _copy(task: task_pb2.Task) -> task_pb2.Task:
    copy = task_pb2.Task()
    copy.CopyFrom(task)
    return copy

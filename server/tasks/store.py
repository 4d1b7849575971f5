"""The TaskStore interface: task records with a lifetime, listing, change notifications, leases.

Two implementations: `RedisTaskStore` (Redis or Redis Cluster) and
`MemoryTaskStore` (one process, nothing kept). Both keep each record as the
JSON form of `serving.v1.Task` and change it only by compare-and-swap of that
exact text, so concurrent updates never lose a write: `update()` re-reads and
re-applies its change until the swap succeeds. Every write gives the record
the full lifetime (REDIS_KEY_DURATION) again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from server.errors import AlreadyExists, NotFound, Unavailable
from server.tasks import records
from server.tasks.records import Cursor
from serving.v1 import task_pb2

MAX_CONFLICTS = 50

Change = Callable[[task_pb2.Task], None]


class Subscription(ABC):
    """Wakes a watcher when a task is written."""

    @abstractmethod
    def wait(self, timeout: float) -> None:
        """Return when the task may have changed, or after `timeout` seconds."""

    @abstractmethod
    def close(self) -> None: ...


class TaskStore(ABC):
    """Task records by id, with TTL, secondary indexes for listing, and worker leases."""

    #: Where the records live, for log lines and error messages.
    address: str = ""

    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds

    # -- primitives of each implementation ------------------------------------

    @abstractmethod
    def _read(self, task_id: str) -> tuple[str, task_pb2.Task] | None:
        """The stored text and its record, or None."""

    @abstractmethod
    def _swap(self, task_id: str, expected: str | None, old: task_pb2.Task | None, new: task_pb2.Task | None) -> bool:
        """Replace the record if its text is still `expected` (None: absent); `new` None deletes.

        Also moves the record's index entries from `old` to `new` and notifies subscribers.
        """

    @abstractmethod
    def list(
        self, task_filter: task_pb2.TaskFilter, page_size: int, cursor: Cursor | None
    ) -> tuple[list[task_pb2.Task], Cursor | None]:
        """Matching tasks newest first after `cursor`, and the cursor of the next page (None: no more)."""

    @abstractmethod
    def subscribe(self, task_id: str) -> Subscription: ...

    @abstractmethod
    def acquire_lease(self, task_id: str, token: str, seconds: float) -> bool:
        """Take the task's lease unless someone else holds it; True when `token` holds it now."""

    @abstractmethod
    def refresh_lease(self, task_id: str, token: str, seconds: float) -> bool: ...

    @abstractmethod
    def release_lease(self, task_id: str, token: str) -> None: ...

    @abstractmethod
    def ping(self) -> None:
        """Raise Unavailable when the store cannot be reached."""

    def close(self) -> None:  # noqa: B027 (optional: nothing to release unless a subclass says so)
        """Release connections."""

    # -- operations built on them ------------------------------------------------

    def find(self, task_id: str) -> task_pb2.Task | None:
        found = self._read(task_id)
        return None if found is None else found[1]

    def get(self, task_id: str) -> task_pb2.Task:
        task = self.find(task_id)
        if task is None:
            raise NotFound(f"task '{task_id}' not found (it may have expired)")
        return task

    def create(self, task: task_pb2.Task) -> task_pb2.Task:
        """Store a new record; AlreadyExists if the id is taken."""
        task.update_time.CopyFrom(records.now())
        if not self._swap(task.id, None, None, task):
            raise AlreadyExists(f"task '{task.id}' already exists")
        return task

    def update(self, task_id: str, change: Change) -> task_pb2.Task:
        """Apply `change` to the current record and store it atomically; NotFound if absent.

        `change` may raise (e.g. FailedPrecondition from the state machine); then
        nothing is written.
        """
        for _ in range(MAX_CONFLICTS):
            found = self._read(task_id)
            if found is None:
                raise NotFound(f"task '{task_id}' not found (it may have expired)")
            text, old = found
            new = task_pb2.Task()
            new.CopyFrom(old)
            change(new)
            new.update_time.CopyFrom(records.now())
            if self._swap(task_id, text, old, new):
                return new
        raise Unavailable(f"task '{task_id}' is being updated by too many writers at once; retry")

    def put(self, task: task_pb2.Task, overwrite: bool) -> bool:
        """Store an imported record; an existing id is replaced only with `overwrite`. True if written."""
        for _ in range(MAX_CONFLICTS):
            found = self._read(task.id)
            if found is not None and not overwrite:
                return False
            text, old = found if found is not None else (None, None)
            if self._swap(task.id, text, old, task):
                return True
        raise Unavailable(f"task '{task.id}' is being updated by too many writers at once; retry")

    def delete(self, task_id: str) -> bool:
        """Remove a record and its index entries; False if there was none."""
        for _ in range(MAX_CONFLICTS):
            found = self._read(task_id)
            if found is None:
                return False
            if self._swap(task_id, found[0], found[1], None):
                return True
        raise Unavailable(f"task '{task_id}' is being updated by too many writers at once; retry")

    def delete_matching(self, task_filter: task_pb2.TaskFilter) -> int:
        """Delete every listed task that passes the filter; the number deleted."""
        deleted = 0
        cursor: Cursor | None = None
        while True:
            tasks, cursor = self.list(task_filter, 500, cursor)
            deleted += sum(self.delete(task.id) for task in tasks)
            if cursor is None:
                return deleted

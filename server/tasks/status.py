"""The task state machine: the one place status changes are checked.

    QUEUED ──> RUNNING ──> SUCCEEDED
      │           │ └────> FAILED
      │           └──────> QUEUED      (only a worker's retry of a failed attempt)
      ├──> CANCELLED
      └──> EXPIRED

SUCCEEDED, FAILED, CANCELLED and EXPIRED are final: a finished task never
changes status again. Staying in the same status is always allowed (an update
of other fields).
"""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from server.errors import FailedPrecondition
from server.tasks.records import micros
from server.tasks.records import now as current_time
from serving.v1 import task_pb2

QUEUED = task_pb2.TASK_STATUS_QUEUED
RUNNING = task_pb2.TASK_STATUS_RUNNING
SUCCEEDED = task_pb2.TASK_STATUS_SUCCEEDED
FAILED = task_pb2.TASK_STATUS_FAILED
CANCELLED = task_pb2.TASK_STATUS_CANCELLED
EXPIRED = task_pb2.TASK_STATUS_EXPIRED

FINISHED = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})
ALL = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, EXPIRED)

_NEXT: dict[int, frozenset[int]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, EXPIRED}),
    RUNNING: frozenset({SUCCEEDED, FAILED}),
}


def name(status: int) -> str:
    """`QUEUED` for TASK_STATUS_QUEUED, and so on."""
    return task_pb2.TaskStatus.Name(status).removeprefix("TASK_STATUS_")


def is_finished(status: int) -> bool:
    return status in FINISHED


def check(old: int, new: int, *, retry: bool = False, same_ok: bool = True) -> None:
    """Raise FailedPrecondition unless `old -> new` is allowed (`retry`: RUNNING -> QUEUED).

    `same_ok=False` refuses staying in the same status too (cancelling twice).
    """
    if old == new and same_ok:
        return
    if new not in ALL:
        raise FailedPrecondition(f"status: {name(new) if new else 'UNSPECIFIED'} is not a status a task can move to")
    if old in FINISHED:
        raise FailedPrecondition(f"task is {name(old)}: a finished task cannot change to {name(new)}")
    if new in _NEXT.get(old, frozenset()) or (retry and old == RUNNING and new == QUEUED):
        return
    allowed = sorted(_NEXT.get(old, frozenset()))
    raise FailedPrecondition(
        f"task is {name(old)}: it cannot change to {name(new)} (allowed: {', '.join(map(name, allowed))})"
    )


def move(
    task: task_pb2.Task,
    new: task_pb2.TaskStatus,
    *,
    retry: bool = False,
    same_ok: bool = True,
    now: timestamp_pb2.Timestamp | None = None,
) -> None:
    """Check and apply a status change, keeping start/finish times and running time in step."""
    check(task.status, new, retry=retry, same_ok=same_ok)
    now = now or current_time()
    if new == RUNNING and task.status != RUNNING:
        task.start_time.CopyFrom(now)
        task.ClearField("finish_time")
    if new in FINISHED and task.status not in FINISHED:
        task.finish_time.CopyFrom(now)
        if task.HasField("start_time"):
            task.running_time_ms = max(0.0, (micros(now) - micros(task.start_time)) / 1000.0)
    task.status = new

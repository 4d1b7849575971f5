"""Task records: ids, trace context, times, the JSON form kept in the store, filters and page tokens."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import Message

from server.errors import InvalidArgument
from server.telemetry.tracing import current_trace_id, current_traceparent, traceparent_for_task
from serving.v1 import task_pb2

ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
# google.protobuf.Timestamp's range: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999999999Z.
MIN_SECONDS, MAX_SECONDS = -62_135_596_800, 253_402_300_799
_TRACE_ID = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    """A fresh task id: 32 lowercase hex digits, which is also the task's W3C trace id."""
    return uuid.uuid4().hex


def check_id(task_id: str, field: str = "id") -> str:
    """The id if it is 1-128 of `A-Z a-z 0-9 . _ -`, else InvalidArgument."""
    if not ID_PATTERN.fullmatch(task_id):
        raise InvalidArgument(f"{field}: '{task_id[:140]}' is not a task id (1-128 of A-Z a-z 0-9 . _ -)")
    return task_id


def trace_context(task_id: str) -> tuple[str, str]:
    """(trace id, W3C traceparent): the trace id is the task id when that is 32 hex digits."""
    trace_id = task_id if _TRACE_ID.fullmatch(task_id) and task_id != "0" * 32 else new_id()
    return trace_id, traceparent_for_task(trace_id)


def current_trace_context() -> tuple[str, str] | None:
    """(trace id, W3C traceparent) of the current span, to make a task part of it; None outside a trace."""
    trace_id, traceparent = current_trace_id(), current_traceparent()
    return (trace_id, traceparent) if trace_id and traceparent else None


def now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def check_times(message: Message, path: str) -> None:
    """InvalidArgument naming the first Timestamp in `message` (nested ones too) outside the range JSON and
    RFC 3339 can carry (years 1-9999, nanos 0-999999999): the store keeps records as JSON."""
    for field, value in message.ListFields():
        if field.message_type is None or field.is_repeated:
            continue
        where = f"{path}.{field.name}"
        if isinstance(value, timestamp_pb2.Timestamp):
            if not MIN_SECONDS <= value.seconds <= MAX_SECONDS:
                raise InvalidArgument(
                    f"{where}: seconds {value.seconds} is outside years 1-9999 ({MIN_SECONDS} to {MAX_SECONDS})"
                )
            if not 0 <= value.nanos <= 999_999_999:
                raise InvalidArgument(f"{where}: nanos {value.nanos} is outside 0-999999999")
        else:
            check_times(value, where)


def micros(ts: timestamp_pb2.Timestamp) -> int:
    """A timestamp as integer microseconds since the epoch (the index score)."""
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def timestamp_at(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def age_seconds(ts: timestamp_pb2.Timestamp) -> float:
    return time.time() - micros(ts) / 1e6


def to_json(task: task_pb2.Task) -> str:
    """The stored (and exported, and webhook) form: protobuf JSON with the proto's field names."""
    return json_format.MessageToJson(task, preserving_proto_field_name=True, indent=None)


def from_json(text: str | bytes) -> task_pb2.Task:
    return json_format.Parse(text, task_pb2.Task(), ignore_unknown_fields=True)


def matches(task: task_pb2.Task, task_filter: task_pb2.TaskFilter) -> bool:
    """Whether a record passes a filter (created_after inclusive, created_before exclusive)."""
    if task_filter.model and task.model != task_filter.model:
        return False
    if task_filter.statuses and task.status not in task_filter.statuses:
        return False
    created = micros(task.create_time)
    if task_filter.HasField("created_after") and created < micros(task_filter.created_after):
        return False
    if task_filter.HasField("created_before") and created >= micros(task_filter.created_before):  # noqa: SIM103 (one test per clause)
        return False
    return True


def check_filter(task_filter: task_pb2.TaskFilter) -> None:
    check_times(task_filter, "filter")
    for value in task_filter.statuses:
        if value == task_pb2.TASK_STATUS_UNSPECIFIED or value not in task_pb2.TaskStatus.values():
            raise InvalidArgument(f"filter.statuses: {value} is not a task status")
    if (
        task_filter.HasField("created_after")
        and task_filter.HasField("created_before")
        and micros(task_filter.created_after) >= micros(task_filter.created_before)
    ):
        raise InvalidArgument("filter: created_after must be earlier than created_before")


def is_empty(task_filter: task_pb2.TaskFilter) -> bool:
    return task_filter.ByteSize() == 0


@dataclass(frozen=True)
class Cursor:
    """Where a page ended: the last task's creation time (µs) and id (newest first)."""

    score: int
    task_id: str


def _fingerprint(task_filter: task_pb2.TaskFilter) -> str:
    return hashlib.sha256(task_filter.SerializeToString(deterministic=True)).hexdigest()[:16]


def encode_token(cursor: Cursor, task_filter: task_pb2.TaskFilter) -> str:
    """An opaque page token, bound to the filter it was made for."""
    raw = json.dumps([cursor.score, cursor.task_id, _fingerprint(task_filter)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, task_filter: task_pb2.TaskFilter) -> Cursor | None:
    """The cursor in a page token (None for ""); InvalidArgument for anything else."""
    if not token:
        return None
    try:
        score, task_id, fingerprint = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        cursor = Cursor(int(score), str(task_id))
    except (ValueError, TypeError):
        raise InvalidArgument("page_token: not a token returned by ListTasks") from None
    if fingerprint != _fingerprint(task_filter):
        raise InvalidArgument("page_token: it was made for a different filter; list again without it")
    return cursor

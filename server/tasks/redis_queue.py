"""TaskQueue on a Redis Stream read through a consumer group (works on Redis Cluster too).

    {tasks-queue}:stream    XADD (MAXLEN ~ bounded), XREADGROUP by every worker of every process,
                            XAUTOCLAIM of entries idle past the visibility timeout, XACK + XDEL when done
    {tasks-queue}:delayed   retries by due time (ms); a script moves due ones to the stream

Both keys share a hash tag, so the moving script touches one slot. The group
is created from the start of the stream when missing (also after Redis lost
its data), so entries pushed before any worker started are still read.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis.exceptions
from redis.typing import EncodableT, FieldT

from server.tasks.queue import QueueEntry, TaskQueue
from server.tasks.redis_client import Client, display_address, translated

STREAM = "{tasks-queue}:stream"
DELAYED = "{tasks-queue}:delayed"
GROUP = "workers"
MAX_LENGTH = 1_000_000

T = TypeVar("T")

log = logging.getLogger(__name__)

_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 100)
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[2], member)
  local sep = string.find(member, ' ', 1, true)
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
             'task', string.sub(member, 1, sep - 1), 'options', string.sub(member, sep + 1))
end
return #due
"""


def _entry(entry_id: str, fields: dict[str, str]) -> QueueEntry:
    return QueueEntry(entry_id, fields["task"], base64.b64decode(fields.get("options", "")))


class RedisTaskQueue(TaskQueue):
    """Entries in a Redis Stream; consumers are `<host>-<pid>-<n>` worker threads."""

    def __init__(self, client: Client, address: str) -> None:
        self.client = client
        self.address = display_address(address)
        self._promote = client.register_script(_PROMOTE)
        self._claim_lock = threading.Lock()
        self._claim_from = "0-0"

    def _call(self, action: Callable[[], T]) -> T:
        """Run a command, creating the consumer group first when Redis says it is missing."""
        with translated(self.address):
            try:
                return action()
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._create_group()
                return action()

    def _create_group(self) -> None:
        try:
            self.client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def push(self, task_id: str, options: bytes) -> None:
        fields: dict[FieldT, EncodableT] = {"task": task_id, "options": base64.b64encode(options).decode()}
        with translated(self.address):
            self.client.xadd(STREAM, fields, maxlen=MAX_LENGTH, approximate=True)

    def delay(self, task_id: str, options: bytes, due: float) -> None:
        member = f"{task_id} {base64.b64encode(options).decode()}"
        with translated(self.address):
            self.client.zadd(DELAYED, {member: int(due * 1000)})

    def take(self, consumer: str, count: int, block_s: float) -> list[QueueEntry]:
        with translated(self.address):
            self._promote(keys=[STREAM, DELAYED], args=[int(time.time() * 1000), MAX_LENGTH])
        reply: Any = self._call(
            lambda: self.client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=count, block=int(block_s * 1000))
        )
        return [_entry(entry_id, fields) for _, messages in reply or [] for entry_id, fields in messages]

    def claim_stale(self, consumer: str, min_idle_s: float, count: int) -> list[QueueEntry]:
        with self._claim_lock:
            start = self._claim_from
            reply: Any = self._call(
                lambda: self.client.xautoclaim(STREAM, GROUP, consumer, int(min_idle_s * 1000), start, count=count)
            )
            self._claim_from = reply[0]
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:  # trimmed from the stream before anyone acknowledged them
            with translated(self.address):
                self.client.xack(STREAM, GROUP, *deleted)
        return [_entry(entry_id, fields) for entry_id, fields in reply[1] if fields]

    def touch(self, consumer: str, entry_ids: list[str]) -> None:
        if entry_ids:
            ids: list[int | bytes | str | memoryview] = [*entry_ids]
            self._call(lambda: self.client.xclaim(STREAM, GROUP, consumer, 0, ids, justid=True))

    def ack(self, entry_id: str) -> None:
        with translated(self.address):
            pipe = self.client.pipeline(transaction=False)
            pipe.xack(STREAM, GROUP, entry_id)
            pipe.xdel(STREAM, entry_id)
            pipe.execute()

    def length(self) -> float:
        """Stream entries not yet delivered to the group (its lag) + delayed retries; NaN when Redis fails."""
        try:
            with translated(self.address):
                return float(self._undelivered() + int(self.client.zcard(DELAYED)))
        except Exception as exc:  # read during a metrics scrape: never raise there
            log.debug("task queue length: %s", exc)
            return math.nan

    def _undelivered(self) -> int:
        try:
            groups: Any = self.client.xinfo_groups(STREAM)
        except redis.exceptions.ResponseError as exc:
            if "no such key" in str(exc).lower():
                return 0  # no stream yet
            raise
        group = next((g for g in groups if g.get("name") == GROUP), None)
        if group is None:  # no group yet: every entry is still to be read
            return int(self.client.xlen(STREAM))
        lag = group.get("lag")
        if lag is not None:
            return int(lag)
        # Lag unknown (Redis < 7, or deletions past the group's position). Acknowledged entries are
        # XDELed, so the stream holds the pending (delivered, not acknowledged) entries plus the undelivered ones.
        return max(0, int(self.client.xlen(STREAM)) - int(group.get("pending") or 0))

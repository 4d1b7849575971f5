"""TaskStore on Redis or Redis Cluster.

Keys (a task's keys share the hash tag `{task:<id>}`, so they live in one slot):

    {task:<id>}             the record: JSON of serving.v1.Task, EX = REDIS_KEY_DURATION
    {task:<id>}:lease       the worker running or delivering it (PX = visibility timeout)
    {task:<id>}:events      pub/sub channel: the new status on every status change (DELETED at the end)
    {tasks}:created         sorted sets of task ids scored by creation time (µs),
    {tasks}:model:<model>   for listing; all in the `{tasks}` slot so they change together
    {tasks}:status:<STATUS>

One Lua script swaps a record if its text is unchanged (compare-and-swap), and
moves its index entries. On a single node the record and its index entries
change in that one script. In a cluster the index keys live in another slot, so
the record is swapped first and the index entries follow in a second script;
the index is only a hint: listing re-reads every record, re-checks the filter
and drops entries whose record is gone or whose status moved. Index entries
older than the record lifetime are trimmed on every write and listing, and the
index keys expire with the last record written to them.
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator
from typing import Any, cast

from redis.typing import EncodableT

from server.tasks import records, status
from server.tasks.records import Cursor
from server.tasks.redis_client import Client, display_address, translated
from server.tasks.store import Subscription, TaskStore
from serving.v1 import task_pb2

SCAN_CHUNK = 200

# KEYS: [record] (when ARGV[1] == '1') then index keys.
# ARGV: has_record, expected text ('' = must be absent, '*' = anything), new text ('' = delete),
#       ttl seconds, channel, event ('' = none), trim cutoff score, then (op, score, member) per index key.
_SWAP = """
local first = 1
if ARGV[1] == '1' then
  local current = redis.call('GET', KEYS[1])
  if ARGV[2] == '' then
    if current then return 0 end
  elseif ARGV[2] ~= '*' and current ~= ARGV[2] then
    return 0
  end
  if ARGV[3] == '' then
    redis.call('DEL', KEYS[1])
  else
    redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
  end
  if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
  first = 2
end
local a = 8
for k = first, #KEYS do
  if ARGV[a] == 'add' then
    redis.call('ZADD', KEYS[k], ARGV[a + 1], ARGV[a + 2])
  else
    redis.call('ZREM', KEYS[k], ARGV[a + 2])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', '(' .. ARGV[7])
  redis.call('EXPIRE', KEYS[k], ARGV[4])
  a = a + 3
end
return 1
"""

_REFRESH_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def record_key(task_id: str) -> str:
    return "{task:" + task_id + "}"


def channel(task_id: str) -> str:
    return record_key(task_id) + ":events"


CREATED = "{tasks}:created"


def model_index(model: str) -> str:
    return "{tasks}:model:" + model


def status_index(value: int) -> str:
    return "{tasks}:status:" + status.name(value)


class _RedisSubscription(Subscription):
    def __init__(self, store: RedisTaskStore, task_id: str) -> None:
        self._address = store.address
        with translated(self._address):
            self._pubsub = store.client.pubsub(ignore_subscribe_messages=True)
            self._pubsub.subscribe(channel(task_id))

    def wait(self, timeout: float) -> None:
        with translated(self._address):
            self._pubsub.get_message(timeout=timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing a broken connection: nothing left to release
            self._pubsub.close()


class RedisTaskStore(TaskStore):
    """Task records in Redis (or a Redis Cluster when `cluster`)."""

    def __init__(self, client: Client, address: str, ttl_seconds: float, cluster: bool) -> None:
        super().__init__(ttl_seconds)
        self.client = client
        self.address = display_address(address)
        self.cluster = cluster
        self._swap_script = client.register_script(_SWAP)
        self._refresh = client.register_script(_REFRESH_LEASE)
        self._release = client.register_script(_RELEASE_LEASE)

    # -- records ----------------------------------------------------------------

    def _read(self, task_id: str) -> tuple[str, task_pb2.Task] | None:
        with translated(self.address):
            text = cast(str | None, self.client.get(record_key(task_id)))  # decode_responses: str replies
        return None if text is None else (text, records.from_json(text))

    def _cutoff(self) -> int:
        return records.micros(records.now()) - int(self.ttl_seconds * 1e6)

    def _index_ops(self, old: task_pb2.Task | None, new: task_pb2.Task | None) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = []
        task = new or old
        assert task is not None
        score = records.micros(task.create_time)

        def op(key: str, kind: str) -> None:
            keys.append(key)
            args.extend((kind, score, task.id))

        if new is None:
            for key in (CREATED, model_index(task.model), status_index(task.status)):
                op(key, "rem")
            return keys, args
        if old is not None and old.model != new.model:
            op(model_index(old.model), "rem")
        if old is not None and old.status != new.status:
            op(status_index(old.status), "rem")
        for key in (CREATED, model_index(new.model), status_index(new.status)):
            op(key, "add")
        return keys, args

    def _swap(self, task_id: str, expected: str | None, old: task_pb2.Task | None, new: task_pb2.Task | None) -> bool:
        if new is None:  # noqa: SIM108 (the other branch is a conditional already)
            event = "DELETED"
        else:
            event = status.name(new.status) if old is None or old.status != new.status else ""
        head: list[EncodableT] = [
            "1",
            expected or "",
            "" if new is None else records.to_json(new),
            max(1, int(self.ttl_seconds)),
            channel(task_id),
            event,
            self._cutoff(),
        ]
        index_keys, index_args = self._index_ops(old, new)
        with translated(self.address):
            if not self.cluster:
                return bool(self._swap_script(keys=[record_key(task_id), *index_keys], args=head + index_args))
            if not self._swap_script(keys=[record_key(task_id)], args=head):
                return False
            self._swap_script(keys=index_keys, args=["0", *head[1:], *index_args])
            return True

    # -- listing ------------------------------------------------------------------

    def _index_for(self, task_filter: task_pb2.TaskFilter) -> str:
        if task_filter.model:
            return model_index(task_filter.model)
        if len(task_filter.statuses) == 1:
            return status_index(task_filter.statuses[0])
        return CREATED

    def _scan(self, key: str, low: str, high: str, cursor: Cursor | None) -> Iterator[tuple[str, int]]:
        """(id, score) from `key`, newest first, strictly after `cursor`, within [low, high)."""
        while True:
            if cursor is not None:
                with translated(self.address):
                    ties = cast(list[str], self.client.zrevrangebyscore(key, cursor.score, cursor.score))
                for member in ties:
                    if member < cursor.task_id:
                        yield member, cursor.score
                high = f"({cursor.score}"
            with translated(self.address):
                chunk = cast(
                    list[tuple[str, float]],  # decode_responses: str members
                    self.client.zrevrangebyscore(key, high, low, start=0, num=SCAN_CHUNK, withscores=True),
                )
            if not chunk:
                return
            for member, score in chunk[:-1]:
                yield member, int(score)
            cursor = Cursor(int(chunk[-1][1]), chunk[-1][0])
            yield cursor.task_id, cursor.score
            # ties at the last score are re-read (and the last member skipped) on the next round

    def list(
        self, task_filter: task_pb2.TaskFilter, page_size: int, cursor: Cursor | None
    ) -> tuple[list[task_pb2.Task], Cursor | None]:
        key = self._index_for(task_filter)
        low = str(records.micros(task_filter.created_after)) if task_filter.HasField("created_after") else "-inf"
        high = f"({records.micros(task_filter.created_before)}" if task_filter.HasField("created_before") else "+inf"
        with translated(self.address):
            self.client.zremrangebyscore(key, "-inf", f"({self._cutoff()}")
        found: list[task_pb2.Task] = []
        batch: list[tuple[str, int]] = []
        for item in self._scan(key, low, high, cursor):
            batch.append(item)
            if len(batch) >= min(SCAN_CHUNK, page_size + 1):
                found += self._load(key, batch, task_filter)
                batch = []
                if len(found) > page_size:
                    break
        else:
            found += self._load(key, batch, task_filter)
        page = found[:page_size]
        if len(found) <= page_size:
            return page, None
        return page, Cursor(records.micros(page[-1].create_time), page[-1].id)

    def _load(
        self, key: str, batch: builtins.list[tuple[str, int]], task_filter: task_pb2.TaskFilter
    ) -> builtins.list[task_pb2.Task]:  # builtins: `list` here is the method above
        """The records of index entries that pass the filter; stale entries are removed."""
        if not batch:
            return []
        with translated(self.address):
            pipe = self.client.pipeline(transaction=False)
            for task_id, _ in batch:
                pipe.get(record_key(task_id))
            texts = pipe.execute()
        tasks: list[task_pb2.Task] = []
        stale: list[str] = []
        for (task_id, _), text in zip(batch, texts, strict=True):
            task = None if text is None else records.from_json(text)
            if task is None or (key != CREATED and key != self._entry_key(key, task)):
                stale.append(task_id)
            elif records.matches(task, task_filter):
                tasks.append(task)
        if stale:
            with translated(self.address):
                self.client.zrem(key, *stale)
        return tasks

    @staticmethod
    def _entry_key(key: str, task: task_pb2.Task) -> str:
        """The index key of the same kind as `key` that should hold `task`."""
        return model_index(task.model) if key.startswith("{tasks}:model:") else status_index(task.status)

    # -- notifications and leases -----------------------------------------------

    def subscribe(self, task_id: str) -> Subscription:
        return _RedisSubscription(self, task_id)

    def acquire_lease(self, task_id: str, token: str, seconds: float) -> bool:
        key = record_key(task_id) + ":lease"
        with translated(self.address):
            if self.client.set(key, token, nx=True, px=int(seconds * 1000)):
                return True
            return bool(self._refresh(keys=[key], args=[token, int(seconds * 1000)]))

    def refresh_lease(self, task_id: str, token: str, seconds: float) -> bool:
        with translated(self.address):
            return bool(self._refresh(keys=[record_key(task_id) + ":lease"], args=[token, int(seconds * 1000)]))

    def release_lease(self, task_id: str, token: str) -> None:
        with translated(self.address):
            self._release(keys=[record_key(task_id) + ":lease"], args=[token])

    def ping(self) -> None:
        with translated(self.address):
            self.client.ping()

    def close(self) -> None:
        self.client.close()

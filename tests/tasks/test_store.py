"""The TaskStore suite, run against memory, a single Redis and a 3-master Redis Cluster."""

from __future__ import annotations

import threading
import time

import pytest

from server.errors import AlreadyExists, FailedPrecondition, NotFound
from server.tasks import records, status
from server.tasks.records import Cursor
from server.tasks.redis_store import CREATED, RedisTaskStore, model_index, record_key, status_index
from server.tasks.store import TaskStore
from serving.v1 import task_pb2
from tests.support.servers import wait_for
from tests.tasks.conftest import TTL_S, open_store

pytestmark = pytest.mark.integration

BASE_S = float(int(time.time()) - 600)  # listing covers tasks created within the record lifetime


def make(
    task_id: str, model: str = "digits", state: task_pb2.TaskStatus = status.QUEUED, at: float = BASE_S
) -> task_pb2.Task:
    return task_pb2.Task(id=task_id, model=model, status=state, create_time=records.timestamp_at(at))


def list_all(store: TaskStore, task_filter: task_pb2.TaskFilter, page_size: int) -> list[str]:
    ids: list[str] = []
    cursor: Cursor | None = None
    while True:
        tasks, cursor = store.list(task_filter, page_size, cursor)
        assert len(tasks) <= page_size
        ids += [t.id for t in tasks]
        if cursor is None:
            return ids


def test_create_get_and_duplicate(store: TaskStore) -> None:
    created = store.create(make("a1"))
    assert created.HasField("update_time")
    got = store.get("a1")
    assert got == created
    with pytest.raises(AlreadyExists, match="task 'a1' already exists"):
        store.create(make("a1"))
    with pytest.raises(NotFound, match="task 'nope' not found"):
        store.get("nope")


def test_update_runs_the_state_machine_and_writes_nothing_on_refusal(store: TaskStore) -> None:
    store.create(make("t"))
    store.update("t", lambda t: status.move(t, status.RUNNING))
    done = store.update("t", lambda t: status.move(t, status.SUCCEEDED))
    assert done.HasField("start_time") and done.HasField("finish_time")
    with pytest.raises(FailedPrecondition, match="task is SUCCEEDED: a finished task cannot change to RUNNING"):
        store.update("t", lambda t: status.move(t, status.RUNNING))
    assert store.get("t") == done


def test_concurrent_updates_lose_no_write(store: TaskStore) -> None:
    store.create(make("c"))
    threads = [threading.Thread(target=lambda: [store.update("c", _bump) for _ in range(25)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert store.get("c").attempts == 100


def _bump(task: task_pb2.Task) -> None:
    task.attempts += 1


def test_listing_and_pagination_across_many_tasks(store: TaskStore) -> None:
    statuses = [status.QUEUED, status.RUNNING, status.SUCCEEDED]
    expected = []
    for n in range(230):
        # Pairs of tasks share a creation time, so pages also split ties.
        task = make(f"task-{n:03d}", model=("digits", "other")[n % 2], state=statuses[n % 3], at=BASE_S + n // 2)
        store.create(task)
        expected.append(task)
    newest_first = [t.id for t in sorted(expected, key=lambda t: (records.micros(t.create_time), t.id), reverse=True)]
    for page_size in (1, 7, 50, 1000):
        if page_size == 1:
            assert list_all(store, task_pb2.TaskFilter(), 1)[:40] == newest_first[:40]
            continue
        assert list_all(store, task_pb2.TaskFilter(), page_size) == newest_first

    by_model = task_pb2.TaskFilter(model="other")
    assert list_all(store, by_model, 9) == [i for i in newest_first if int(i[-3:]) % 2 == 1]
    by_status = task_pb2.TaskFilter(statuses=[status.RUNNING])
    assert list_all(store, by_status, 11) == [i for i in newest_first if int(i[-3:]) % 3 == 1]
    two = task_pb2.TaskFilter(statuses=[status.QUEUED, status.SUCCEEDED], model="digits")
    assert list_all(store, two, 13) == [i for i in newest_first if int(i[-3:]) % 3 != 1 and int(i[-3:]) % 2 == 0]
    window = task_pb2.TaskFilter(
        created_after=records.timestamp_at(BASE_S + 10), created_before=records.timestamp_at(BASE_S + 20)
    )
    assert list_all(store, window, 6) == [i for i in newest_first if 20 <= int(i[-3:]) < 40]


def test_index_follows_status_changes_and_deletes(store: TaskStore) -> None:
    for n in range(5):
        store.create(make(f"s{n}", at=BASE_S + n))
    store.update("s1", lambda t: status.move(t, status.RUNNING))
    store.delete("s3")
    assert list_all(store, task_pb2.TaskFilter(statuses=[status.QUEUED]), 10) == ["s4", "s2", "s0"]
    assert list_all(store, task_pb2.TaskFilter(statuses=[status.RUNNING]), 10) == ["s1"]
    assert store.delete("s3") is False
    assert store.delete_matching(task_pb2.TaskFilter(statuses=[status.QUEUED])) == 3
    assert list_all(store, task_pb2.TaskFilter(), 10) == ["s1"]


def test_import_put_skips_or_overwrites(store: TaskStore) -> None:
    store.create(make("p", model="digits"))
    assert store.put(make("p", model="other"), overwrite=False) is False
    assert store.get("p").model == "digits"
    assert store.put(make("p", model="other"), overwrite=True) is True
    assert store.get("p").model == "other"
    assert list_all(store, task_pb2.TaskFilter(model="digits"), 10) == []
    assert list_all(store, task_pb2.TaskFilter(model="other"), 10) == ["p"]


def test_leases(store: TaskStore) -> None:
    store.create(make("l"))
    assert store.acquire_lease("l", "w1", 30)
    assert not store.acquire_lease("l", "w2", 30)
    assert store.acquire_lease("l", "w1", 30)  # the holder again
    assert store.refresh_lease("l", "w1", 30) and not store.refresh_lease("l", "w2", 30)
    store.release_lease("l", "w2")  # not the holder: no effect
    assert not store.acquire_lease("l", "w2", 30)
    store.release_lease("l", "w1")
    assert store.acquire_lease("l", "w2", 0.2)
    wait_for(lambda: store.acquire_lease("l", "w3", 30), 5, "the short lease to lapse")


def test_subscription_wakes_on_write(store: TaskStore) -> None:
    store.create(make("w"))
    subscription = store.subscribe("w")
    try:
        woke = threading.Event()

        def watch() -> None:
            subscription.wait(10)
            woke.set()

        thread = threading.Thread(target=watch)
        thread.start()
        wait_for(lambda: store.update("w", _bump) and woke.is_set(), 10, "the watcher to wake")
        thread.join(10)
    finally:
        subscription.close()


@pytest.mark.parametrize("kind", ["memory", "redis", "cluster"])
def test_records_expire(kind: str, request: pytest.FixtureRequest) -> None:
    store = open_store(kind, request, ttl=1.0)
    try:
        store.create(make("e"))
        assert store.find("e") is not None
        wait_for(lambda: store.find("e") is None, 10, "the record to expire", interval=0.1)
    finally:
        store.close()


def test_ttl_applied_and_refreshed_in_redis(store: TaskStore, store_kind: str) -> None:
    if not isinstance(store, RedisTaskStore):
        pytest.skip("memory: covered by test_records_expire")
    store.create(make("r", at=records.micros(records.now()) / 1e6))
    key = record_key("r")
    ttl = store.client.ttl(key)
    assert TTL_S - 5 <= ttl <= TTL_S
    store.client.expire(key, 10)
    store.update("r", _bump)
    assert store.client.ttl(key) >= TTL_S - 5
    for index in (CREATED, model_index("digits"), status_index(status.QUEUED)):
        assert TTL_S - 5 <= store.client.ttl(index) <= TTL_S


def test_stale_index_entries_are_dropped_when_listing(store: TaskStore) -> None:
    if not isinstance(store, RedisTaskStore):
        pytest.skip("only Redis keeps separate index keys")
    for n in range(4):
        store.create(make(f"x{n}", at=BASE_S + n))
    store.client.delete(record_key("x2"))  # as if the record expired before its index entry
    assert list_all(store, task_pb2.TaskFilter(), 10) == ["x3", "x1", "x0"]
    assert store.client.zscore(CREATED, "x2") is None
    # An index entry past the record lifetime is trimmed on listing.
    old = records.micros(records.now()) - int(TTL_S * 1e6) - 10_000_000
    store.client.zadd(CREATED, {"ancient": old})
    list_all(store, task_pb2.TaskFilter(), 10)
    assert store.client.zscore(CREATED, "ancient") is None

"""A Redis Cluster master fails over to its replica: task records survive and the store recovers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.errors import Unavailable
from server.tasks import status
from server.tasks.redis_client import connect
from server.tasks.redis_store import CREATED, RedisTaskStore
from serving.v1 import task_pb2
from tests.support.redis_servers import RedisClusterServers
from tests.support.servers import wait_for
from tests.tasks.test_store import list_all, make

pytestmark = pytest.mark.integration

TASKS = 30


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[RedisClusterServers]:
    # 3 masters with a replica each; a master silent for 1 s is failed over.
    cluster = RedisClusterServers(tmp_path, replicas=1, node_timeout_ms=1000)
    yield cluster
    cluster.stop()


def test_tasks_survive_a_master_failover(cluster: RedisClusterServers) -> None:
    store = RedisTaskStore(connect(cluster.address, True), cluster.address, 3600, cluster=True)
    try:
        for n in range(TASKS):
            store.create(make(f"fo-{n:02d}"))
        before = {t.id: t for t in (store.get(f"fo-{n:02d}") for n in range(TASKS))}
        for node in cluster.live_nodes():  # every acknowledged write has reached a replica
            with node.client() as client:
                if client.execute_command("ROLE")[0] == "master":
                    assert client.execute_command("WAIT", 1, 5000) == 1

        victim = cluster.master_of(CREATED)  # holds the listing indexes
        victim.process.kill()
        victim.process.wait()

        refused: list[str] = []

        def listing_works() -> bool:
            try:
                return len(list_all(store, task_pb2.TaskFilter(), 100)) == TASKS
            except Unavailable as exc:  # while the replica takes over: UNAVAILABLE, nothing else
                refused.append(exc.message)
                return False

        started = time.monotonic()
        wait_for(listing_works, 30, "the store to list every task again after the failover")
        assert cluster.master_of(CREATED).port != victim.port
        assert all(m.startswith("task store unavailable:") for m in refused), refused
        after = {t.id: t for t in (store.get(f"fo-{n:02d}") for n in range(TASKS))}
        assert after == before
        store.update("fo-00", lambda task: setattr(task, "status", status.RUNNING))
        assert store.get("fo-00").status == status.RUNNING
        store.create(make("fo-new"))
        assert len(list_all(store, task_pb2.TaskFilter(), 7)) == TASKS + 1
        print(f"failover: {len(refused)} refused calls, store back after {time.monotonic() - started:.1f} s")
    finally:
        store.close()

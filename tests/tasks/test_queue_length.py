"""TaskQueue.length(): entries not yet taken plus delayed retries, in memory, on Redis and on Redis Cluster."""

from __future__ import annotations

import math
import time

import pytest

from server.tasks.queue import MemoryTaskQueue, TaskQueue
from server.tasks.redis_client import connect
from server.tasks.redis_queue import RedisTaskQueue
from tests.support.redis_servers import RedisClusterServers, RedisServer
from tests.support.servers import free_port

pytestmark = pytest.mark.integration


def open_queue(kind: str, request: pytest.FixtureRequest) -> TaskQueue:
    if kind == "memory":
        return MemoryTaskQueue()
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_single")
        with server.client() as client:
            client.flushall()
        return RedisTaskQueue(connect(server.address, False), server.address)
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    cluster.flush()
    return RedisTaskQueue(connect(cluster.address, True), cluster.address)


@pytest.mark.parametrize("kind", ["memory", "redis", "cluster"])
def test_length_counts_waiting_and_delayed_entries(kind: str, request: pytest.FixtureRequest) -> None:
    queue = open_queue(kind, request)
    try:
        assert queue.length() == 0
        for n in range(3):
            queue.push(f"t{n}", b"")
        assert queue.length() == 3
        taken = queue.take("c-0", 2, 1.0)
        assert len(taken) == 2
        assert queue.length() == 1  # taken entries are no longer waiting, acknowledged or not
        queue.delay("t9", b"opts", time.time() + 3600)
        assert queue.length() == 2
        for entry in taken:
            queue.ack(entry.entry_id)
        assert queue.length() == 2
        assert len(queue.take("c-0", 5, 1.0)) == 1
        assert queue.length() == 1  # the delayed retry
    finally:
        queue.close()


def test_length_is_nan_when_redis_is_unreachable() -> None:
    address = f"127.0.0.1:{free_port()}"
    queue = RedisTaskQueue(connect(address, False), address)
    assert math.isnan(queue.length())

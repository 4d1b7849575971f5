"""Fixtures of the task tests: real redis-servers (single node and a 3-master cluster), stores on each."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from server.tasks.memory import MemoryTaskStore
from server.tasks.redis_client import connect
from server.tasks.redis_store import RedisTaskStore
from server.tasks.store import TaskStore
from tests.support.redis_servers import RedisClusterServers, RedisServer

TTL_S = 3600.0


@pytest.fixture(scope="session")
def redis_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    yield cluster
    cluster.stop()


def open_store(kind: str, request: pytest.FixtureRequest, ttl: float = TTL_S) -> TaskStore:
    """A fresh, empty store of `kind` (memory, redis or cluster)."""
    if kind == "memory":
        return MemoryTaskStore(ttl)
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_single")
        with server.client() as client:
            client.flushall()
        return RedisTaskStore(connect(server.address, False), server.address, ttl, cluster=False)
    cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
    cluster.flush()
    return RedisTaskStore(connect(cluster.address, True), cluster.address, ttl, cluster=True)


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store(store_kind: str, request: pytest.FixtureRequest) -> Iterator[TaskStore]:
    opened = open_store(store_kind, request)
    yield opened
    opened.close()

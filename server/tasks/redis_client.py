"""Connecting to Redis or Redis Cluster, and turning Redis failures into `server.errors`.

REDIS_ADDRESS is `host:port`, or a URL: `redis://[:password@]host:port[/db]`,
`rediss://...` for TLS (the server certificate is checked against the system
CAs, or those of REDIS_TLS_CA_FILE). With REDIS_CLUSTER_MODE the address is any
node of the cluster. redis-py keeps a connection pool and reconnects on its own
after an outage, so the server recovers without a restart.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.cluster
import redis.exceptions
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from server.errors import Internal, Unavailable

MAX_CONNECTIONS = 256
TIMEOUT_S = 2.0  # REDIS_TIMEOUT_SECONDS' default

_UNAVAILABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MasterDownError,
    redis.exceptions.SlotNotCoveredError,
    OSError,
)

Client = redis.Redis | redis.cluster.RedisCluster


def display_address(address: str) -> str:
    """The address without a password, for messages."""
    if "://" not in address:
        return address
    parts = urlsplit(address)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path if parts.path not in ('', '/') else ''}"


def connect(
    address: str, cluster: bool, tls_ca_file: str | os.PathLike[str] | None = None, timeout: float = TIMEOUT_S
) -> Client:
    """A client with a connection pool; nothing is contacted until the first command.

    `tls_ca_file`: PEM CA certificates that verify the server of a `rediss://` address.
    `timeout` bounds each connect and each command's answer. A command that times out is not
    retried (a Redis that stopped answering would only make the caller wait again), so a hung
    Redis costs a call about `timeout`; a refused or dropped connection is retried twice, briefly
    (a restart, a failover).
    """
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "health_check_interval": 15,
        "decode_responses": True,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 2, supported_errors=(redis.exceptions.ConnectionError,)),
    }
    if "://" in address:
        scheme = urlsplit(address).scheme
        if scheme not in ("redis", "rediss"):
            raise ValueError(f"REDIS_ADDRESS: '{display_address(address)}' must be host:port, redis:// or rediss://")
        if tls_ca_file:
            if scheme != "rediss":
                raise ValueError("REDIS_TLS_CA_FILE needs a rediss:// REDIS_ADDRESS")
            options["ssl_ca_certs"] = str(tls_ca_file)
        if cluster:
            return redis.cluster.RedisCluster.from_url(address, max_connections=MAX_CONNECTIONS, **options)
        pool = redis.ConnectionPool.from_url(address, max_connections=MAX_CONNECTIONS, **options)
        return redis.Redis(connection_pool=pool)
    if tls_ca_file:
        raise ValueError("REDIS_TLS_CA_FILE needs a rediss:// REDIS_ADDRESS")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"REDIS_ADDRESS: '{address}' must be host:port, redis:// or rediss://")
    if cluster:
        return redis.cluster.RedisCluster(host=host, port=int(port), max_connections=MAX_CONNECTIONS, **options)
    pool = redis.ConnectionPool(host=host, port=int(port), max_connections=MAX_CONNECTIONS, **options)
    return redis.Redis(connection_pool=pool)


@contextlib.contextmanager
def translated(address: str) -> Iterator[None]:
    """Raise Unavailable('task store unavailable: <address>: <reason>') for connection trouble."""
    try:
        yield
    except (redis.exceptions.AuthenticationError, redis.exceptions.AuthenticationWrongNumberOfArgsError) as exc:
        # Wrong or missing password: say so plainly (redis-py's text for a missing one is about HELLO).
        raise Unavailable(
            f"task store unavailable: {address}: authentication failed, check the password in REDIS_ADDRESS ({exc})"
        ) from None
    except _UNAVAILABLE as exc:
        reason = str(exc) or type(exc).__name__
        raise Unavailable(f"task store unavailable: {address}: {reason}") from None
    except redis.exceptions.RedisError as exc:
        raise Internal(f"task store error: {address}: {exc}") from None

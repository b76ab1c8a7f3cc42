"""How the Redis store builds the clients it owns: bounded operations, no silent resends, and
Redis Cluster (``redis+cluster://host:port``, ``rediss+cluster://``: one seed node, the rest
discovered).

Hand-written and shared by both store classes. Where redis-py's sync and asyncio cluster
clients differ (the sync one takes a pool class, the asyncio one keeps its own per-node list),
a ``sync_``/``async_`` pair of functions hides it, so that each generated twin picks its own
(the naming :mod:`idempo._primitives` uses).
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from redis import BlockingConnectionPool

from idempo.errors import StoreUnavailableError

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT",
    "async_cluster_pool",
    "async_gate",
    "client_options",
    "cluster_seed",
    "sync_cluster_pool",
    "sync_gate",
]

#: Seconds any one step of an operation may take: the connect, each reply, the wait for a
#: pooled connection. redis-py 5.0 waits forever without one.
DEFAULT_TIMEOUT = 5.0
#: Connections per server (per node on a cluster).
DEFAULT_MAX_CONNECTIONS = 50

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_seed(url: str) -> str | None:
    """The seed node of a cluster URL as redis-py reads it (``redis://``, ``rediss://``), or
    None for a URL that names no cluster."""
    scheme, sep, rest = url.partition("://")
    plain = _CLUSTER_SCHEMES.get(scheme.lower())
    if plain is None or not sep:
        return None
    database = urlsplit(url).path.strip("/")
    if database not in ("", "0"):
        # redis-py would only say so at the first operation, as an error that reads like an
        # outage.
        raise ValueError(f"a Redis Cluster has one database (0), not {database!r}: {url!r}")
    return f"{plain}://{rest}"


def client_options(timeout: float, options: dict[str, Any]) -> dict[str, Any]:
    """redis-py connection options with every step bounded by ``timeout`` unless set one by
    one (``socket_timeout=``, ``socket_connect_timeout=``)."""
    if options.pop("decode_responses", False):
        raise ValueError("the Redis client must use decode_responses=False (outcomes are bytes)")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    options.setdefault("socket_timeout", timeout)
    options.setdefault("socket_connect_timeout", timeout)
    return options


def sync_cluster_pool(max_connections: int, pool_timeout: float) -> dict[str, Any]:
    """RedisCluster options for each node's pool: a blocking one, so that a burst waits up to
    ``pool_timeout`` for a connection instead of failing at once."""
    return {
        "connection_pool_class": BlockingConnectionPool,
        "max_connections": max_connections,
        "timeout": pool_timeout,
    }


def async_cluster_pool(max_connections: int, pool_timeout: float) -> dict[str, Any]:
    """redis.asyncio RedisCluster options for each node's connections. It has no waiting pool
    (past ``max_connections`` busy connections on a node it fails at once): async_gate waits
    for it, up to ``pool_timeout``."""
    return {"max_connections": max_connections}


class _Gate:
    """At most ``limit`` operations in flight, each waiting up to ``timeout`` for its turn.

    With no more operations in flight than one node may have connections, no node runs out,
    however the keys fall: a burst waits as it does on a blocking pool, instead of failing.
    """

    __slots__ = ("_limit", "_semaphore", "_timeout")

    def __init__(self, limit: int, timeout: float) -> None:
        self._limit = limit
        self._semaphore = asyncio.Semaphore(limit)
        self._timeout = timeout

    async def __aenter__(self) -> None:
        try:
            await asyncio.wait_for(self._semaphore.acquire(), self._timeout)
        except TimeoutError:
            raise StoreUnavailableError(
                f"Redis is unavailable: no free connection within {self._timeout}s "
                f"(max_connections={self._limit})"
            ) from None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._semaphore.release()


def async_gate(
    max_connections: int | None, pool_timeout: float
) -> contextlib.AbstractAsyncContextManager[None]:
    """What an asyncio store's operation enters first: for redis.asyncio's cluster client
    (``max_connections`` given), the wait for a connection that it lacks; else nothing."""
    if max_connections is None:
        return contextlib.nullcontext()
    return _Gate(max_connections, pool_timeout)


def sync_gate(
    max_connections: int | None, pool_timeout: float
) -> contextlib.AbstractContextManager[None]:
    """Nothing: redis-py's sync pools wait for a connection themselves (BlockingConnectionPool)."""
    return contextlib.nullcontext()

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
import functools
import sys
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis import BlockingConnectionPool
from redis._parsers import AsyncCommandsParser
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.connection import parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from idempo.errors import StoreUnavailableError

__all__ = [
    "CHECKOUT_ARGS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT",
    "async_close",
    "async_cluster",
    "async_gate",
    "async_pool",
    "async_ready",
    "async_send",
    "check_cluster_options",
    "client_options",
    "cluster_seed",
    "sync_close",
    "sync_cluster",
    "sync_gate",
    "sync_pool",
    "sync_ready",
    "sync_send",
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
    seed = f"{plain}://{rest}"
    # A malformed URL is refused now, not as an outage at the first operation.
    parse_url(seed)  # type: ignore[no-untyped-call]
    return seed


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


# redis-py 6 made ``retry=`` the cluster client's own retry count; before, it was
# ``cluster_error_retry_attempts`` (now deprecated, with a warning).
_RETRY_OWNS_CLUSTER_RESENDS = int(redis.__version__.split(".")[0]) >= 6
# What a pool's get_connection() takes: redis-py before 5.3 wants a command name (it ignores
# it), 5.3 and later warn about one.
CHECKOUT_ARGS: tuple[str, ...] = (
    ("EVALSHA",) if tuple(int(p) for p in redis.__version__.split(".")[:2]) < (5, 3) else ()
)
# COMMAND while mapping the cluster goes to its first primary alone: with that one down, a
# client could not start. Mapping is read-only, so these tries may go elsewhere.
_MAPPING_TRIES = 3


def _cluster_retries(retries: int) -> dict[str, Any]:
    if _RETRY_OWNS_CLUSTER_RESENDS:
        return {}
    return {"cluster_error_retry_attempts": retries}  # pragma: no cover - redis-py 5


def check_cluster_options(options: dict[str, Any]) -> None:
    """Refuse, when the store is opened, what a cluster store cannot take."""
    if "retry" in options:
        raise ValueError(
            "a Redis Cluster store takes no retry=: it follows redirections (MOVED, ASK, "
            "TRYAGAIN: they ran nothing) and resends nothing else"
        )


def sync_cluster(
    seed: str, max_connections: int, pool_timeout: float, options: dict[str, Any]
) -> RedisCluster:
    """A RedisCluster for the seed node's URL, mapped (the sync client maps the cluster as it
    is built), that never resends a command after a timeout or a lost connection: the caller
    sees StoreUnavailableError and retries the whole operation with the same key.

    Each node's pool is a blocking one, so that a burst waits up to ``pool_timeout`` for a
    connection instead of failing at once. A node down must not make the whole cluster
    unusable: the keys of the shards that are up keep working, the others give
    StoreUnavailableError (``require_full_coverage=False``)."""
    client = RedisCluster.from_url(
        seed,
        require_full_coverage=False,
        decode_responses=False,
        connection_pool_class=functools.partial(BlockingConnectionPool, timeout=pool_timeout),
        max_connections=max_connections,
        retry=Retry(NoBackoff(), _MAPPING_TRIES),
        **_cluster_retries(_MAPPING_TRIES),
        **options,
    )
    # From here on, no resends: a script resent after a timeout may already have run.
    client.retry = Retry(NoBackoff(), 0)
    if not _RETRY_OWNS_CLUSTER_RESENDS:  # pragma: no cover - redis-py 5
        client.cluster_error_retry_attempts = 0  # type: ignore[attr-defined]
    return client


class _AnyNodeCommands(AsyncCommandsParser):
    """redis.asyncio's parser of COMMAND, asking the first node that answers: redis-py asks
    the cluster's first primary alone, so a client could not map a cluster whose first
    shard is down."""

    __slots__ = ("_cluster",)

    def __init__(self, cluster: AsyncRedisCluster) -> None:
        super().__init__()
        self._cluster = cluster

    async def initialize(self, node: AsyncClusterNode | None = None) -> None:
        candidates = [node] if node is not None else []
        candidates += [n for n in self._cluster.get_nodes() if n is not node]
        error: BaseException | None = None
        for candidate in candidates:
            try:
                await super().initialize(candidate)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                error = exc
            else:
                return
        raise error or RedisConnectionError("no cluster node to ask for COMMAND")


def async_cluster(
    seed: str, max_connections: int, pool_timeout: float, options: dict[str, Any]
) -> AsyncRedisCluster:
    """A redis.asyncio RedisCluster for the seed node's URL (it maps the cluster at its first
    command), that never resends a command after a timeout or a lost connection.

    It has no waiting pool (past ``max_connections`` busy connections on a node it fails at
    once): async_gate waits for it, up to ``pool_timeout``. Shards down: as for
    sync_cluster."""
    client = AsyncRedisCluster.from_url(
        seed,
        require_full_coverage=False,
        decode_responses=False,
        max_connections=max_connections,
        retry=AsyncRetry(NoBackoff(), 0),
        **_cluster_retries(0),
        **options,
    )
    client.commands_parser = _AnyNodeCommands(client)
    return client


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
        if not self._semaphore.locked():
            # A free turn is taken at once: wait_for would wrap the acquire in a task of its
            # own (Python 3.11), the dearest step of the whole operation.
            await self._semaphore.acquire()
            return
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


def sync_pool(
    url: str, max_connections: int, pool_timeout: float, options: dict[str, Any]
) -> tuple[BlockingConnectionPool, contextlib.AbstractContextManager[None]]:
    """The pool of a plain client for ``url``, and the gate its operations enter. A blocking
    pool: under a burst, callers wait for a connection (up to ``pool_timeout``) instead of
    failing with "Too many connections"; so the gate is nothing.

    No silent client-side retries: a script resent after a timeout may already have run (a
    claim would then find its own lease "in progress"). The caller sees StoreUnavailableError
    and retries the whole operation with the same key."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout,
        decode_responses=False,
        **{"retry": Retry(NoBackoff(), 0), **options},
    )
    return pool, sync_gate(max_connections, pool_timeout)


def async_pool(
    url: str, max_connections: int, pool_timeout: float, options: dict[str, Any]
) -> tuple[redis.asyncio.ConnectionPool, contextlib.AbstractAsyncContextManager[None]]:
    """The pool of a plain redis.asyncio client for ``url``, and the gate its operations
    enter: a plain pool, and the gate to wait for a connection (up to ``pool_timeout``), as
    the cluster client has. redis.asyncio's blocking pool does the same wait for every
    connection it hands out, under a condition and a timeout of its own, at three times the
    cost; the gate's free turn costs next to nothing. No silent resends, as for sync_pool."""
    pool = redis.asyncio.ConnectionPool.from_url(
        url,
        max_connections=max_connections,
        decode_responses=False,
        **{"retry": AsyncRetry(NoBackoff(), 0), **options},
    )
    return pool, async_gate(max_connections, pool_timeout)


# Python 3.12 made wait_for a plain timeout; before, it runs what it waits for in a task.
_WAIT_FOR_TASK = sys.version_info < (3, 12)


async def async_send(connection: Any, command: list[bytes]) -> None:
    """``connection.send_packed_command(command)``, bounded by the connection's timeout as
    redis.asyncio bounds it, for less: on Python 3.11 its wait_for runs each send in a task
    of its own (~10 us of CPU), where asyncio.timeout costs a timer. Only for a connection
    that is up and wants no health check (else connecting and the PING would run unbounded);
    its own send, with its error handling (a failed or cut send disconnects), does the work.
    The connection is checked out by this caller alone, so lending its timeout is safe."""
    timeout = connection.socket_timeout
    if not (
        _WAIT_FOR_TASK
        and timeout
        and connection.is_connected
        and not connection.health_check_interval
    ):
        await connection.send_packed_command(command)
        return
    connection.socket_timeout = None
    try:
        async with asyncio.timeout(timeout):
            await connection.send_packed_command(command)
    except TimeoutError:
        # redis.asyncio's own words for it
        raise RedisTimeoutError("Timeout writing to socket") from None
    finally:
        connection.socket_timeout = timeout


def sync_send(connection: Any, command: list[bytes]) -> None:
    """``connection.send_packed_command(command)`` (see async_send)."""
    connection.send_packed_command(command)


async def async_ready(client: object) -> None:
    """Map the cluster before a command is routed: redis.asyncio's cluster client routes a
    command it sends before its first mapping (or after a reset) to an arbitrary node, and
    under concurrency the MOVED replies then make it close every connection, in-flight
    commands' included. Nothing for a mapped or a plain client."""
    if isinstance(client, AsyncRedisCluster):
        await client.initialize()


def sync_ready(client: object) -> None:
    """Nothing: the sync cluster client maps the cluster as it is built, and again inline
    after an error."""


async def async_close(client: Any) -> None:
    """Close a client and every connection it opened."""
    await client.aclose()
    if isinstance(client, AsyncRedisCluster):
        # Its aclose() does nothing while it is due to map the cluster again (after a
        # connection error, say): its nodes' connections would be left open.
        await client.nodes_manager.aclose()
        await client.nodes_manager.aclose("startup_nodes")


def sync_close(client: Any) -> None:
    """Close a client and every connection it opened."""
    client.close()

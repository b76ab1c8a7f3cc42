# DO NOT EDIT: generated from src/idempo/stores/_async/redis.py by scripts/unasync.py
"""The Redis store: one hash per record, one Lua script per call.

Every operation is a single EVALSHA of a script that touches exactly one key, declared in KEYS,
so it is atomic on its own, costs one round trip and works unchanged on Redis Cluster. The
scripts read the time with ``TIME`` (the server's clock, never the client's) and implement the
decision table of :mod:`idempo.stores.base` exactly as :mod:`idempo.core.transitions` does. They
live, with the helpers that read their replies, in :mod:`idempo.stores._redis_lua`; this module
holds only the store class.

Record layout, at ``prefix + "<len(scope)>:<scope>:<key>"`` (the length makes the encoding
injective: ``("a:b", "c")`` and ``("a", "b:c")`` cannot collide)::

    v               record format, "1" (idempo.stores._rows.RECORD_FORMAT)
    fingerprint     the request's fingerprint
    state           "in_progress" | "completed"
    token           the fencing token (in_progress only)
    lease_until     ms since the epoch, server clock (in_progress only)
    created_at      ms
    expires_at      ms; the key also carries PEXPIREAT expires_at
    outcome         bytes (completed only)
    recovery_point  bytes (optional)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from redis import Redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from idempo.core.records import ClaimResult, ClaimStatus, Record, State
from idempo.errors import StoreError
from idempo.stores import _redis_connect as connect
from idempo.stores import _redis_lua as lua
from idempo.stores import _redis_scan as rscan
from idempo.stores import _scan
from idempo.stores.base import Page, Stats

__all__ = ["RedisStore"]


class RedisStore:
    """An idempotency store in Redis (5 or later), for a ``redis`` client.

    ``client`` must keep ``decode_responses=False`` (outcomes are bytes). On Redis Cluster pass a
    ``RedisCluster`` client (or open ``redis+cluster://``): each operation touches one key, so it
    runs on one shard. Keep hash tags (``{...}``) out of ``prefix``, or every record lands on the
    same shard.

    Every error the client raises, the cluster ones included, is translated here:
    :class:`~idempo.errors.StoreUnavailableError` when the store cannot serve now (down, stalled,
    failing over, a shard's slots uncovered), :class:`~idempo.errors.StoreError` otherwise (a
    ``redis://`` URL pointed at a cluster node says so).

    Durability: Redis replicates asynchronously, so a primary that fails over right after
    acknowledging a write can lose it, and a completed record may vanish: the operation would
    then run again on retry. ``wait_replicas=n`` makes complete() send ``WAIT n`` (on the same
    connection, in the same round trip) and raise :class:`~idempo.errors.StoreError` if fewer
    than ``n`` replicas confirmed within ``wait_timeout`` seconds. That narrows the window, it
    does not close it (WAIT is not a consensus: a failover may still promote a replica that had
    not confirmed). Where losing a record is unacceptable use PostgreSQL in transactional mode.
    WAIT needs a plain client (not ``RedisCluster``, whose WAIT goes to every primary), and
    ``wait_timeout`` must be well below the client's socket timeout.

    A store from from_url sends its scripts itself, straight onto its pool's connections,
    which costs less client CPU than redis-py's generic command path (decision 0011); a client
    passed in is used through its own command path, so its retries and wrappers keep working.

    A reply lost after a script ran (timeout, dropped connection) surfaces as
    :class:`~idempo.errors.StoreUnavailableError` although the write happened; a later claim then
    sees the record as it is. A client passed in keeps its own timeouts and retries; redis-py
    retries such commands by default (``retry=``), and a retried claim or complete may then
    answer IN_PROGRESS or LeaseLostError for a write of its own. Clients from from_url never
    resend.
    """

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = "idempo:",
        wait_replicas: int = 0,
        wait_timeout: float = 0.1,
    ) -> None:
        if client.get_encoder().decode_responses:
            raise ValueError(
                "the Redis client must use decode_responses=False (outcomes are bytes)"
            )
        if wait_replicas and isinstance(client, RedisCluster):
            raise ValueError("wait_replicas needs a plain Redis client, not RedisCluster")
        self._setup(prefix, wait_replicas, wait_timeout)
        self._client: Redis | RedisCluster | None = client
        self._encoding = client.get_encoder().encoding

    def _setup(self, prefix: str, wait_replicas: int, wait_timeout: float) -> None:
        if wait_replicas < 0 or wait_timeout <= 0:
            raise ValueError("wait_replicas must be >= 0 and wait_timeout > 0 (WAIT 0 blocks)")
        self.prefix = prefix
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self._owns_client = False
        # The pool of a plain client this store built (from_url), which scripts use directly
        # (Any: redis-py types the sync one's methods loosely).
        self._pool: Any = None
        self._encoding = "utf-8"
        self._connect: Callable[[], Redis | RedisCluster] | None = None
        self._connecting = threading.Lock()
        self._gate = connect.sync_gate(None, 0)
        self._claim = lua.Script(lua.CLAIM)
        self._complete = lua.Script(lua.COMPLETE)
        self._extend = lua.Script(lua.EXTEND)
        self._release = lua.Script(lua.RELEASE)
        self._get = lua.Script(lua.GET)
        self._delete = lua.Script(lua.DELETE)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "idempo:",
        wait_replicas: int = 0,
        wait_timeout: float = 0.1,
        timeout: float = connect.DEFAULT_TIMEOUT,
        **client_options: Any,
    ) -> RedisStore:
        """A store over a new client for ``url``, closed by close(): ``redis://``, ``rediss://``,
        or ``redis+cluster://host:port`` and ``rediss+cluster://`` (a Redis Cluster: one seed
        node, the rest discovered).

        ``timeout`` (seconds, default 5) bounds each step of an operation: connecting, each
        reply, and the wait for a free pooled connection, so a stalled server gives
        StoreUnavailableError instead of a hang. ``client_options`` go to redis-py
        (``socket_timeout=`` and ``socket_connect_timeout=`` to set one step alone,
        ``max_connections=`` (default 50, per node on a cluster), ``pool_timeout=`` (the wait
        for a connection; default ``timeout``)).

        Nothing connects before the first operation, so a server down at start gives
        StoreUnavailableError then, and the store works as soon as the server is back.
        """
        options = connect.client_options(timeout, client_options)
        max_connections = options.pop("max_connections", connect.DEFAULT_MAX_CONNECTIONS)
        pool_timeout = options.pop("pool_timeout", timeout)
        seed = connect.cluster_seed(url)
        if seed is not None:
            if wait_replicas:
                raise ValueError("wait_replicas needs a plain Redis client, not RedisCluster")
            connect.check_cluster_options(options)

            def cluster() -> RedisCluster:
                return connect.sync_cluster(seed, max_connections, pool_timeout, options)

            store = cls.__new__(cls)
            store._setup(prefix, wait_replicas, wait_timeout)
            store._client = None
            # The sync RedisCluster maps the cluster as it is built: building it at the first
            # operation keeps opening a store free of I/O, and its failure a translated one.
            store._connect = cluster
            store._gate = connect.sync_gate(max_connections, pool_timeout)
        else:
            pool, gate = connect.sync_pool(url, max_connections, pool_timeout, options)
            # the client owns the pool: close() disconnects it
            store = cls(
                Redis.from_pool(pool),
                prefix=prefix,
                wait_replicas=wait_replicas,
                wait_timeout=wait_timeout,
            )
            store._pool = pool
            store._gate = gate
        store._owns_client = True
        return store

    @property
    def client(self) -> Redis | RedisCluster:
        """The redis-py client (for a cluster URL, built at the first operation)."""
        client = self._client
        if client is None:
            with self._connecting:
                if self._client is None:
                    assert self._connect is not None
                    self._client = self._connect()
                client = self._client
        return client

    def redis_key(self, scope: str, key: str) -> str:
        """The Redis key holding (scope, key): the scope's length makes it unambiguous."""
        return f"{self.prefix}{len(scope)}:{scope}:{key}"

    def _eval(self, script: lua.Script, scope: str, key: str, *args: Any) -> Any:
        """One EVALSHA (straight to the client: redis-py's Script wrapper costs more than it
        does here). If the server lost the script (restart, failover, SCRIPT FLUSH), the refused
        EVALSHA ran nothing: send the script itself once (EVAL)."""
        redis_key = self.redis_key(scope, key)
        if self._pool is not None:
            with self._gate:
                return self._eval_on_pool(self._pool, script, redis_key, args)
        try:
            with self._gate:
                client = self.client
                connect.sync_ready(client)
                try:
                    return client.evalsha(script.sha, 1, redis_key, *args)
                except NoScriptError:
                    # EVAL goes where the key lives, as EVALSHA did, and leaves the script
                    # cached on that node under its SHA1; SCRIPT LOAD would go to every primary
                    # of a cluster, and fail while any of them is down.
                    script.sha = script.digest()
                    return client.eval(script.script, 1, redis_key, *args)
        except lua.CLIENT_ERRORS as exc:
            raise lua.translated(exc) from exc

    def _eval_on_pool(
        self, pool: Any, script: lua.Script, redis_key: str, args: tuple[Any, ...]
    ) -> Any:
        """_eval for a client this store built: the command goes straight onto a connection
        of its pool, packed here. That is what the client's own command path does for this
        client (pooled connection, its timeouts, no resends: its retry is none), less the
        layers this store does not use (retries, response callbacks, redis-py's command
        telemetry), which cost more than the packing and parsing themselves. A connection is
        disconnected by the failed send or read itself, so none goes back to the pool with a
        reply left unread."""
        try:
            connection = pool.get_connection(*connect.CHECKOUT_ARGS)
            try:
                connect.sync_send(
                    connection, script.evalsha(redis_key, args, self._encoding)
                )
                try:
                    return connection.read_response()
                except NoScriptError:
                    script.sha = script.digest()
                    connect.sync_send(
                        connection, script.eval(redis_key, args, self._encoding)
                    )
                    return connection.read_response()
            finally:
                pool.release(connection)
        except lua.CLIENT_ERRORS as exc:
            raise lua.translated(exc) from exc

    def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        lease_ms, ttl_ms = lua.ms(lease), lua.ms(ttl)
        reply = self._eval(self._claim, scope, key, fingerprint, token, lease_ms, ttl_ms)
        if type(reply) is int:
            # A fresh record: the script answered only its clock; the rest is ours already.
            record = Record(
                scope=scope,
                key=key,
                fingerprint=fingerprint,
                state=State.IN_PROGRESS,
                token=token,
                lease_until=(reply + lease_ms) / 1000,
                outcome=None,
                created_at=reply / 1000,
                expires_at=(reply + max(ttl_ms, lease_ms)) / 1000,
            )
            return ClaimResult(ClaimStatus.ACQUIRED, record, reply / 1000)
        try:
            status = lua.STATUS[reply[0]]
            now, takeover = reply[9] / 1000, reply[10] == 1
        except (KeyError, TypeError, IndexError) as exc:
            raise StoreError(f"unexpected reply from the claim script: {reply!r}") from exc
        return ClaimResult(status, lua.record(scope, key, reply), now, takeover=takeover)

    def complete(
        self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float
    ) -> None:
        args = (token, outcome, lua.ms(ttl))
        if not self.wait_replicas:
            lua.check_completed(self._eval(self._complete, scope, key, *args))
            return
        status, acked = self._complete_and_wait(self.redis_key(scope, key), args)
        lua.check_completed(status)
        if acked < self.wait_replicas:
            raise StoreError(
                f"the outcome of {scope!r}/{key!r} is stored on the Redis primary, but only "
                f"{acked} of {self.wait_replicas} replicas confirmed it within "
                f"{self.wait_timeout}s: a failover now could lose it"
            )

    def _complete_and_wait(self, redis_key: str, args: tuple[Any, ...]) -> tuple[Any, int]:
        """EVALSHA and WAIT pipelined on one connection: WAIT counts the writes of the connection
        it runs on, so a WAIT sent on another pooled connection would confirm nothing."""
        client = self.client
        assert isinstance(client, Redis)
        timeout = max(1, lua.ms(self.wait_timeout))
        try:
            for _ in range(2):
                with self._gate, client.pipeline(transaction=False) as pipe:
                    pipe.evalsha(self._complete.sha, 1, redis_key, *args)
                    pipe.wait(self.wait_replicas, timeout)
                    status, acked = pipe.execute(raise_on_error=False)
                if not isinstance(status, NoScriptError):
                    break
                # The server lost its script cache (restart, failover, SCRIPT FLUSH): the
                # refused EVALSHA ran nothing, so load the script and send both again.
                self._complete.sha = client.script_load(self._complete.script)
            for result in (status, acked):
                if isinstance(result, Exception):
                    raise result
        except lua.CLIENT_ERRORS as exc:
            raise lua.translated(exc) from exc
        return status, int(acked)

    def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        return lua.lease_until(self._eval(self._extend, scope, key, token, lua.ms(lease)))

    def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        reply = self._eval(self._extend, scope, key, token, lua.ms(lease), recovery_point)
        return lua.lease_until(reply)

    def release(self, scope: str, key: str, token: str) -> bool:
        return bool(self._eval(self._release, scope, key, token))

    def get(self, scope: str, key: str) -> Record | None:
        reply = self._eval(self._get, scope, key)
        return None if reply is None else lua.record(scope, key, reply)

    def delete(self, scope: str, key: str) -> bool:
        return bool(self._eval(self._delete, scope, key))

    def purge_expired(self, limit: int = 1000) -> int:
        """Nothing to do: every record carries PEXPIREAT its expires_at, so Redis removes it
        itself (and the scripts treat a record past expires_at as absent until it does)."""
        return 0

    def scan(
        self,
        *,
        state: State | None = None,
        scope: str | None = None,
        older_than: float = 0.0,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        """One SCAN page of the prefix (MATCH on the scope's keys when ``scope`` is given,
        COUNT ``limit``), then its records in one pipeline: two round trips, three on Redis
        Cluster (see :mod:`idempo.stores._redis_scan`). The cursor is Redis's own (on a
        cluster, with the primary it is at). SCAN may return a key twice, and a few more than
        COUNT."""
        state = _scan.check(state, limit, older_than)
        following, now, redis_keys, replies = self._page(
            cursor, scope, limit, rscan.SCAN_FIELDS
        )
        found = (rscan.record(self.prefix, k, r) for k, r in zip(redis_keys, replies, strict=True))
        records = tuple(r for r in found if r and _scan.shown(r, now, state, older_than))
        return Page(records, following, now)

    def stats(self) -> Stats:
        """Counted over a SCAN of the prefix, 1000 keys a page (two round trips each; see
        :mod:`idempo.stores._redis_scan` for the cost), by the clock of the first page. No
        counters are kept: an INCR per claim on one shared key would add a write to every
        operation (and a second key, which a Cluster script may not touch), and keys that
        Redis expires by itself would leave the counts wrong."""
        following, now, redis_keys, replies = self._page(None, None, 1000, rscan.STATS_FIELDS)
        counter = _scan.Counter(now)
        while True:
            rscan.count(counter, self.prefix, redis_keys, replies)
            if following is None:
                return counter.stats()
            following, _, redis_keys, replies = self._page(
                following, None, 1000, rscan.STATS_FIELDS
            )

    def _page(
        self, cursor: str | None, scope: str | None, count: int, fields: tuple[str, ...]
    ) -> tuple[str | None, float, list[bytes], list[Any]]:
        """One SCAN step from ``cursor``, then an HMGET of ``fields`` per key found, pipelined:
        (the next cursor or None, the server's clock, the keys, their replies)."""
        pattern = rscan.match(self.prefix, scope)
        with self._gate:
            return self._page_steps(cursor, pattern, count, fields)

    def _page_steps(
        self, cursor: str | None, pattern: str, count: int, fields: tuple[str, ...]
    ) -> tuple[str | None, float, list[bytes], list[Any]]:
        try:
            if isinstance(self.client, RedisCluster):
                # A cluster pipeline refuses TIME, and TIME also makes a new client learn the
                # topology: one round trip more, then SCAN one primary at a time.
                # redis-py types the cluster client loosely (SCAN answers {node name: cursor}).
                cluster: Any = self.client
                now = rscan.clock(cluster.time())
                primaries = sorted(cluster.get_primaries(), key=lambda n: str(n.name))
                index, at = rscan.cluster_position(cursor, len(primaries))
                node = primaries[index]
                ats, redis_keys = cluster.scan(
                    at, match=pattern, count=count, target_nodes=node
                )
                following = rscan.cluster_cursor(index, int(ats[node.name]), len(primaries))
                with cluster.pipeline() as pipe:
                    for redis_key in redis_keys:
                        pipe.hmget(redis_key, fields)
                    replies = pipe.execute(raise_on_error=False)
            else:
                at, redis_keys = self.client.scan(
                    rscan.position(cursor), match=pattern, count=count
                )
                following = str(at) if int(at) else None
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.time()
                    for redis_key in redis_keys:
                        pipe.hmget(redis_key, fields)
                    # A key under the prefix that is no hash answers WRONGTYPE: it is skipped.
                    time_reply, *replies = pipe.execute(raise_on_error=False)
                if isinstance(time_reply, RedisError):
                    raise time_reply
                now = rscan.clock(time_reply)
        except rscan.BadCursor:
            raise
        except lua.CLIENT_ERRORS as exc:
            raise lua.translated(exc) from exc
        keys = [k if isinstance(k, bytes) else k.encode() for k in redis_keys]
        return following, now, keys, replies

    def migrate(self) -> None:
        """Nothing to create: records are self-describing hashes (schema field ``v``)."""

    def close(self) -> None:
        """Close the client if this store created it (from_url); a client passed in is the
        caller's to close."""
        if self._owns_client and self._client is not None:
            connect.sync_close(self._client)

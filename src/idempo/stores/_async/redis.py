"""The Redis store: one hash per record, one Lua script per call.

Every operation is a single EVALSHA of a script that touches exactly one key, declared in KEYS,
so it is atomic on its own, costs one round trip and works unchanged on Redis Cluster. The
scripts read the time with ``TIME`` (the server's clock, never the client's) and implement the
decision table of :mod:`idempo.stores.base` exactly as :mod:`idempo.core.transitions` does.

Record layout, at ``prefix + "<len(scope)>:<scope>:<key>"`` (the length makes the encoding
injective: ``("a:b", "c")`` and ``("a", "b:c")`` cannot collide)::

    v               schema version, "1"
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

import contextlib
from collections.abc import Iterator
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from idempo.core.records import ClaimResult, ClaimStatus, Record, State
from idempo.errors import LeaseLostError, StoreError, StoreUnavailableError

__all__ = ["AsyncRedisStore"]

# -- Lua ---------------------------------------------------------------------------------------
# Each script is PRELUDE + its own body, run as one EVALSHA on KEYS[1] alone. Times are integer
# milliseconds (exact in Lua's doubles; PEXPIREAT takes them as they are). Missing hash fields
# read as false, never nil: a nil inside a returned table would truncate the reply.

_PRELUDE = """
-- The server's clock is the only one: clients' clocks may disagree with each other.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local FIELDS = {'v', 'fingerprint', 'state', 'token', 'lease_until', 'created_at',
                'expires_at', 'outcome', 'recovery_point'}
local raw = redis.call('HMGET', KEYS[1], unpack(FIELDS))
local rec = {}
for i, name in ipairs(FIELDS) do rec[name] = raw[i] end
if not rec.v then
  rec = nil
elseif rec.v ~= '1' then
  -- Written by a newer idempo: refuse rather than misread it.
  return redis.error_reply('idempo: record ' .. KEYS[1] .. ' has unknown schema v' .. rec.v)
elseif tonumber(rec.expires_at) <= now then
  -- Expired is absent, whether or not Redis has reaped the key yet.
  rec = nil
end
-- Only the current token of a live in_progress record may write (fencing). The codes name the
-- reasons transitions.require_holder gives; nil means the caller holds the claim.
local function refused(token)
  if not rec then return 'gone' end
  if rec.state ~= 'in_progress' then return 'completed' end
  if rec.token ~= token then return 'taken' end
  return nil
end
-- One reply shape for claim and get; the token only goes to a claim that acquired.
local function reply(status, token, takeover)
  return {status, rec.fingerprint, rec.state, token, rec.lease_until, rec.created_at,
          rec.expires_at, rec.outcome, rec.recovery_point, now, takeover}
end
"""

# ARGV: fingerprint, token, lease ms, ttl ms
_CLAIM = """
local fp, token, lease, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if not rec then
  -- Absent or expired: a fresh record. DEL first so an expired leftover's fields (outcome,
  -- recovery point) cannot leak into it.
  rec = {fingerprint = fp, state = 'in_progress', token = token, lease_until = now + lease,
         created_at = now, expires_at = now + math.max(ttl, lease), outcome = false,
         recovery_point = false}
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'v', '1', 'fingerprint', fp, 'state', 'in_progress',
             'token', token, 'lease_until', rec.lease_until, 'created_at', now,
             'expires_at', rec.expires_at)
  redis.call('PEXPIREAT', KEYS[1], rec.expires_at)
  return reply('acquired', token, 0)
end
-- Another request under this key is refused in any state: taking over a crashed holder's
-- claim with a different request would mix two operations' effects.
if rec.fingerprint ~= fp then return reply('mismatch', false, 0) end
if rec.state == 'completed' then return reply('completed', false, 0) end
if tonumber(rec.lease_until) > now then return reply('in_progress', false, 0) end
-- The lease ran out: the holder crashed or stalled. A new token fences it off; created_at and
-- the recovery point stay, so a multi-step operation resumes where it stopped.
rec.token, rec.lease_until = token, now + lease
rec.expires_at = math.max(tonumber(rec.expires_at), rec.lease_until)
redis.call('HSET', KEYS[1], 'token', token, 'lease_until', rec.lease_until,
           'expires_at', rec.expires_at)
redis.call('PEXPIREAT', KEYS[1], rec.expires_at)
return reply('acquired', token, 1)
"""

# ARGV: token, outcome, ttl ms
_COMPLETE = """
local why = refused(ARGV[1])
if why then return why end
-- The retention clock restarts at completion (it may shorten the record's life).
local expires_at = now + tonumber(ARGV[3])
redis.call('HDEL', KEYS[1], 'token', 'lease_until')
redis.call('HSET', KEYS[1], 'state', 'completed', 'outcome', ARGV[2], 'expires_at', expires_at)
redis.call('PEXPIREAT', KEYS[1], expires_at)
return 'ok'
"""

# ARGV: token, lease ms[, recovery point]: extend and set_recovery_point in one script.
_EXTEND = """
local why = refused(ARGV[1])
if why then return {why, 0} end
local lease_until = now + tonumber(ARGV[2])
-- The record must outlive its lease, or Redis would drop it under a live holder.
local expires_at = math.max(tonumber(rec.expires_at), lease_until)
redis.call('HSET', KEYS[1], 'lease_until', lease_until, 'expires_at', expires_at)
if #ARGV >= 3 then redis.call('HSET', KEYS[1], 'recovery_point', ARGV[3]) end
redis.call('PEXPIREAT', KEYS[1], expires_at)
return {'ok', lease_until}
"""

# ARGV: token. A completed record has no token, so it can never be released.
_RELEASE = """
if rec and rec.token == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

_GET = """
if not rec then return false end
return reply('found', false, 0)
"""

# An expired leftover is removed too, but only a live record counts as deleted.
_DELETE = """
redis.call('DEL', KEYS[1])
if rec then return 1 end
return 0
"""

# Errors meaning "the store cannot serve us now; nothing was done": retry later or elsewhere.
# ReadOnlyError is a demoted primary after a failover; the cluster ones are resharding/failover.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # also AuthenticationError, BusyLoadingError, MaxConnectionsError
    RedisTimeoutError,
    ReadOnlyError,
    ClusterDownError,
    TryAgainError,
    OSError,
)

_LEASE_LOST = {
    b"gone": "the idempotency record is gone (released, deleted or expired)",
    b"completed": "the idempotency record is already completed",
    b"taken": "the lease was taken over by another execution",
}


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """The one place where Redis client errors become idempo errors."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailableError(f"Redis is unavailable: {exc}") from exc
    except RedisError as exc:
        raise StoreError(f"Redis refused an idempo command: {exc}") from exc


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _seconds(ms: Any) -> float:
    return int(ms) / 1000


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _record(scope: str, key: str, reply: list[Any]) -> Record:
    """A Record from the scripts' reply shape (see ``reply`` in the Lua prelude)."""
    try:
        _, fingerprint, state, token, lease_until, created, expires, outcome, recovery = reply[:9]
        return Record(
            scope=scope,
            key=key,
            fingerprint=_text(fingerprint),
            state=State(_text(state)),
            token=None if token is None else _text(token),
            lease_until=None if lease_until is None else _seconds(lease_until),
            outcome=outcome,
            created_at=_seconds(created),
            expires_at=_seconds(expires),
            recovery_point=recovery,
        )
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise StoreError(f"corrupt idempotency record for {scope!r}/{key!r}: {exc}") from exc


class AsyncRedisStore:
    """An idempotency store in Redis (5 or later), for a ``redis.asyncio`` client.

    ``client`` must keep ``decode_responses=False`` (outcomes are bytes). On Redis Cluster pass a
    ``RedisCluster`` client: each operation touches one key, so it runs on one shard. Keep hash
    tags (``{...}``) out of ``prefix``, or every record lands on the same shard.

    Durability: Redis replicates asynchronously, so a primary that fails over right after
    acknowledging a write can lose it, and a completed record may vanish: the operation would
    then run again on retry. ``wait_replicas=n`` makes complete() send ``WAIT n`` (on the same
    connection, in the same round trip) and raise :class:`~idempo.errors.StoreError` if fewer
    than ``n`` replicas confirmed within ``wait_timeout`` seconds. That narrows the window, it
    does not close it (WAIT is not a consensus: a failover may still promote a replica that had
    not confirmed). Where losing a record is unacceptable use PostgreSQL in transactional mode.
    WAIT needs a plain client (not ``RedisCluster``, whose WAIT goes to every primary), and
    ``wait_timeout`` must be well below the client's socket timeout.

    A reply lost after a script ran (timeout, dropped connection) surfaces as
    :class:`~idempo.errors.StoreUnavailableError` although the write happened; a later claim then
    sees the record as it is. redis-py retries such commands by default (``retry=``); a retried
    claim or complete may therefore answer IN_PROGRESS or LeaseLostError for a write of its own.
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
        if wait_replicas < 0 or wait_timeout <= 0:
            raise ValueError("wait_replicas must be >= 0 and wait_timeout > 0 (WAIT 0 blocks)")
        if wait_replicas and isinstance(client, RedisCluster):
            raise ValueError("wait_replicas needs a plain Redis client, not RedisCluster")
        self.client = client
        self.prefix = prefix
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self._owns_client = False
        self._claim = self._script(_CLAIM)
        self._complete = self._script(_COMPLETE)
        self._extend = self._script(_EXTEND)
        self._release = self._script(_RELEASE)
        self._get = self._script(_GET)
        self._delete = self._script(_DELETE)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "idempo:",
        wait_replicas: int = 0,
        wait_timeout: float = 0.1,
        **client_options: Any,
    ) -> AsyncRedisStore:
        """A store over a new client for ``url`` (``redis://``, ``rediss://``), closed by close().

        ``client_options`` go to the connection pool (``socket_timeout=``, ``max_connections=``
        (default 50), ``pool_timeout=`` (seconds to wait for a free connection, default 5)).
        """
        if client_options.pop("decode_responses", False):
            raise ValueError(
                "the Redis client must use decode_responses=False (outcomes are bytes)"
            )
        # A blocking pool: under a burst, callers wait for a connection (up to pool_timeout)
        # instead of failing with "Too many connections".
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=client_options.pop("max_connections", 50),
            timeout=client_options.pop("pool_timeout", 5.0),
            decode_responses=False,
            # No silent client-side retries: a script resent after a timeout may already have
            # run (a claim would then find its own lease "in progress"). The caller sees
            # StoreUnavailableError and retries the whole operation with the same key.
            **{"retry": Retry(NoBackoff(), 0), **client_options},
        )
        client = Redis.from_pool(pool)  # the client owns the pool: close() disconnects it
        store = cls(client, prefix=prefix, wait_replicas=wait_replicas, wait_timeout=wait_timeout)
        store._owns_client = True
        return store

    def _script(self, body: str) -> AsyncScript:
        return self.client.register_script(_PRELUDE + body)

    def redis_key(self, scope: str, key: str) -> str:
        """The Redis key holding (scope, key): the scope's length makes it unambiguous."""
        return f"{self.prefix}{len(scope)}:{scope}:{key}"

    async def _eval(self, script: AsyncScript, scope: str, key: str, *args: Any) -> Any:
        """One EVALSHA (EVAL's text is sent again only if the server lost the script)."""
        with _translated():
            return await script(keys=[self.redis_key(scope, key)], args=args)

    async def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        reply = await self._eval(self._claim, scope, key, fingerprint, token, _ms(lease), _ms(ttl))
        try:
            status = ClaimStatus(_text(reply[0]))
            now, takeover = _seconds(reply[9]), bool(reply[10])
        except (ValueError, TypeError, IndexError) as exc:
            raise StoreError(f"unexpected reply from the claim script: {reply!r}") from exc
        return ClaimResult(status, _record(scope, key, reply), now, takeover=takeover)

    async def complete(
        self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float
    ) -> None:
        args = (token, outcome, _ms(ttl))
        if not self.wait_replicas:
            _check(await self._eval(self._complete, scope, key, *args))
            return
        status, acked = await self._complete_and_wait(self.redis_key(scope, key), args)
        _check(status)
        if acked < self.wait_replicas:
            raise StoreError(
                f"the outcome of {scope!r}/{key!r} is stored on the Redis primary, but only "
                f"{acked} of {self.wait_replicas} replicas confirmed it within "
                f"{self.wait_timeout}s: a failover now could lose it"
            )

    async def _complete_and_wait(self, redis_key: str, args: tuple[Any, ...]) -> tuple[Any, int]:
        """EVALSHA and WAIT pipelined on one connection: WAIT counts the writes of the connection
        it runs on, so a WAIT sent on another pooled connection would confirm nothing."""
        assert isinstance(self.client, Redis)
        timeout = max(1, _ms(self.wait_timeout))
        with _translated():
            for _ in range(2):
                async with self.client.pipeline(transaction=False) as pipe:
                    pipe.evalsha(self._complete.sha, 1, redis_key, *args)
                    pipe.wait(self.wait_replicas, timeout)
                    status, acked = await pipe.execute(raise_on_error=False)
                if not isinstance(status, NoScriptError):
                    break
                # The server lost its script cache (restart, failover, SCRIPT FLUSH): the
                # refused EVALSHA ran nothing, so load the script and send both again.
                self._complete.sha = await self.client.script_load(self._complete.script)
            for result in (status, acked):
                if isinstance(result, Exception):
                    raise result
        return status, int(acked)

    async def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        reply = await self._eval(self._extend, scope, key, token, _ms(lease))
        _check(reply[0])
        return _seconds(reply[1])

    async def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        reply = await self._eval(self._extend, scope, key, token, _ms(lease), recovery_point)
        _check(reply[0])
        return _seconds(reply[1])

    async def release(self, scope: str, key: str, token: str) -> bool:
        return bool(await self._eval(self._release, scope, key, token))

    async def get(self, scope: str, key: str) -> Record | None:
        reply = await self._eval(self._get, scope, key)
        return None if reply is None else _record(scope, key, reply)

    async def delete(self, scope: str, key: str) -> bool:
        return bool(await self._eval(self._delete, scope, key))

    async def purge_expired(self, limit: int = 1000) -> int:
        """Nothing to do: every record carries PEXPIREAT its expires_at, so Redis removes it
        itself (and the scripts treat a record past expires_at as absent until it does)."""
        return 0

    async def migrate(self) -> None:
        """Nothing to create: records are self-describing hashes (schema field ``v``)."""

    async def close(self) -> None:
        """Close the client if this store created it (from_url); a client passed in is the
        caller's to close."""
        if self._owns_client:
            await self.client.aclose()


def _check(status: Any) -> None:
    """Raise LeaseLostError for a fencing refusal from complete/extend/set_recovery_point."""
    if status == b"ok":
        return
    if status in _LEASE_LOST:
        raise LeaseLostError(_LEASE_LOST[status])
    raise StoreError(f"unexpected reply from an idempo script: {status!r}")

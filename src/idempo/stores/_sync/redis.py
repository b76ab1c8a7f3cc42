# DO NOT EDIT: generated from src/idempo/stores/_async/redis.py by scripts/unasync.py
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

import hashlib
from typing import Any

from redis import BlockingConnectionPool, Redis
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.backoff import NoBackoff
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

__all__ = ["RedisStore"]

# -- Lua ---------------------------------------------------------------------------------------
# Each script runs as one EVALSHA on KEYS[1] alone. Times are integer milliseconds (exact in
# Lua's doubles; PEXPIREAT takes them as they are). Missing hash fields read as false, never nil:
# a nil inside a returned table would truncate the reply.
#
# The scripts are written for Lua's per-call cost, which dominates their time on the server:
# each reads only the fields it needs with one HMGET, builds no tables or closures it can do
# without, and issues as few commands as the transition allows.

# The server's clock is the only one: clients' clocks may disagree with each other.
_NOW = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
"""

# A record written by a newer idempo is refused rather than misread. An expired record is
# absent, whether or not Redis has reaped the key yet.
_UNKNOWN_SCHEMA = "redis.error_reply('idempo: record ' .. KEYS[1] .. ' has unknown schema v' .. v)"

# ARGV: fingerprint, token, lease ms, ttl ms.
# Replies: for a fresh record, the integer ``now`` alone (the caller knows the rest); otherwise
# {status, fingerprint, state, token, lease_until, created_at, expires_at, outcome,
#  recovery_point, now, takeover}, the token only to a claim that acquired.
_CLAIM = (
    _NOW
    + """
local key = KEYS[1]
local r = redis.call('HMGET', key, 'v', 'fingerprint', 'state', 'token', 'lease_until',
                     'created_at', 'expires_at', 'outcome', 'recovery_point')
local v = r[1]
if v then
  if v ~= '1' then return """
    + _UNKNOWN_SCHEMA
    + """ end
  local expires_at = tonumber(r[7])
  if expires_at > now then
    -- Another request under this key is refused in any state: taking over a crashed holder's
    -- claim with a different request would mix two operations' effects.
    local status = 'in_progress'
    if r[2] ~= ARGV[1] then
      status = 'mismatch'
    elseif r[3] == 'completed' then
      status = 'completed'
    elseif tonumber(r[5]) <= now then
      -- The lease ran out: the holder crashed or stalled. A new token fences it off;
      -- created_at and the recovery point stay, so a multi-step operation resumes where it
      -- stopped.
      local lease_until = now + ARGV[3]
      if lease_until > expires_at then expires_at = lease_until end
      redis.call('HSET', key, 'token', ARGV[2], 'lease_until', lease_until,
                 'expires_at', expires_at)
      redis.call('PEXPIREAT', key, expires_at)
      return {'acquired', r[2], r[3], ARGV[2], lease_until, r[6], expires_at, r[8], r[9], now, 1}
    end
    return {status, r[2], r[3], false, r[5], r[6], r[7], r[8], r[9], now, 0}
  end
end
-- Absent or expired: a fresh record. Whatever is left of ours under the key (an expired record
-- not yet reaped) is deleted first, so that its fields (outcome, recovery point) cannot leak
-- into the new one. Mostly HMGET read nothing: the key is absent and there is nothing to delete.
if v or r[2] or r[3] or r[4] or r[5] or r[6] or r[7] or r[8] or r[9] then
  redis.call('DEL', key)
end
local lease = tonumber(ARGV[3])
local expires_at = now + math.max(tonumber(ARGV[4]), lease)
redis.call('HSET', key, 'v', '1', 'fingerprint', ARGV[1], 'state', 'in_progress',
           'token', ARGV[2], 'lease_until', now + lease, 'created_at', now,
           'expires_at', expires_at)
redis.call('PEXPIREAT', key, expires_at)
return now
"""
)

# Only the current token of a live in_progress record may write (fencing). The codes name the
# reasons transitions.require_holder gives. Leaves key and r (v, state, token, expires_at) to the
# body that follows.
_HOLDER = (
    """
local key = KEYS[1]
local r = redis.call('HMGET', key, 'v', 'state', 'token', 'expires_at')
local v = r[1]
if not v then return 'gone' end
if v ~= '1' then return """
    + _UNKNOWN_SCHEMA
    + """ end
if tonumber(r[4]) <= now then return 'gone' end
if r[2] ~= 'in_progress' then return 'completed' end
if r[3] ~= ARGV[1] then return 'taken' end
"""
)

# ARGV: token, outcome, ttl ms. Replies 'ok' or a refusal code.
_COMPLETE = (
    _NOW
    + _HOLDER
    + """
-- The retention clock restarts at completion (it may shorten the record's life).
local expires_at = now + ARGV[3]
redis.call('HDEL', key, 'token', 'lease_until')
redis.call('HSET', key, 'state', 'completed', 'outcome', ARGV[2], 'expires_at', expires_at)
redis.call('PEXPIREAT', key, expires_at)
return 'ok'
"""
)

# ARGV: token, lease ms[, recovery point]: extend and set_recovery_point in one script.
# Replies the new lease_until (an integer) or a refusal code.
_EXTEND = (
    _NOW
    + _HOLDER
    + """
local lease_until = now + ARGV[2]
-- The record must outlive its lease, or Redis would drop it under a live holder.
local expires_at = math.max(tonumber(r[4]), lease_until)
if #ARGV >= 3 then
  redis.call('HSET', key, 'lease_until', lease_until, 'expires_at', expires_at,
             'recovery_point', ARGV[3])
else
  redis.call('HSET', key, 'lease_until', lease_until, 'expires_at', expires_at)
end
redis.call('PEXPIREAT', key, expires_at)
return lease_until
"""
)

# ARGV: token. A completed record has no token, so it can never be released. Replies 1 or 0.
_RELEASE = (
    _NOW
    + """
local key = KEYS[1]
local r = redis.call('HMGET', key, 'v', 'token', 'expires_at')
local v = r[1]
if not v then return 0 end
if v ~= '1' then return """
    + _UNKNOWN_SCHEMA
    + """ end
if r[2] == ARGV[1] and tonumber(r[3]) > now then
  redis.call('DEL', key)
  return 1
end
return 0
"""
)

# Replies false (no live record) or the claim's long reply with status 'found' and no token.
_GET = (
    _NOW
    + """
local r = redis.call('HMGET', KEYS[1], 'v', 'fingerprint', 'state', 'token', 'lease_until',
                     'created_at', 'expires_at', 'outcome', 'recovery_point')
local v = r[1]
if not v then return false end
if v ~= '1' then return """
    + _UNKNOWN_SCHEMA
    + """ end
if tonumber(r[7]) <= now then return false end
return {'found', r[2], r[3], false, r[5], r[6], r[7], r[8], r[9], now, 0}
"""
)

# An expired leftover is removed too, but only a live record counts as deleted. Replies 1 or 0.
_DELETE = (
    _NOW
    + """
local key = KEYS[1]
local r = redis.call('HMGET', key, 'v', 'expires_at')
local v = r[1]
if v and v ~= '1' then return """
    + _UNKNOWN_SCHEMA
    + """ end
redis.call('DEL', key)
if v and tonumber(r[2]) > now then return 1 end
return 0
"""
)

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


# The scripts' status and state codes, as a client with decode_responses=False reads them.
_STATUS = {status.value.encode(): status for status in ClaimStatus}
_STATE = {state.value.encode(): state for state in State}


class _Script:
    """A Lua script and the SHA1 that EVALSHA names it by."""

    __slots__ = ("script", "sha")

    def __init__(self, script: str) -> None:
        self.script = script
        self.sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


def _translated(exc: RedisError | OSError) -> StoreUnavailableError | StoreError:
    """The idempo error for a Redis client error: the one place where they are told apart."""
    if isinstance(exc, _UNAVAILABLE):
        return StoreUnavailableError(f"Redis is unavailable: {exc}")
    return StoreError(f"Redis refused an idempo command: {exc}")


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _record(scope: str, key: str, reply: list[Any]) -> Record:
    """A Record from the scripts' long reply: {status, fingerprint, state, token, lease_until,
    created_at, expires_at, outcome, recovery_point, now, takeover}. Strings arrive as bytes,
    numbers the script computed as int."""
    try:
        _, fingerprint, state, token, lease_until, created, expires, outcome, recovery = reply[:9]
        return Record(
            scope=scope,
            key=key,
            fingerprint=fingerprint.decode(),
            state=_STATE[state],
            token=None if token is None else token.decode(),
            lease_until=None if lease_until is None else int(lease_until) / 1000,
            outcome=outcome,
            created_at=int(created) / 1000,
            expires_at=int(expires) / 1000,
            recovery_point=recovery,
        )
    except (KeyError, ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise StoreError(f"corrupt idempotency record for {scope!r}/{key!r}: {exc}") from exc


class RedisStore:
    """An idempotency store in Redis (5 or later), for a ``redis`` client.

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
        self._claim = _Script(_CLAIM)
        self._complete = _Script(_COMPLETE)
        self._extend = _Script(_EXTEND)
        self._release = _Script(_RELEASE)
        self._get = _Script(_GET)
        self._delete = _Script(_DELETE)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "idempo:",
        wait_replicas: int = 0,
        wait_timeout: float = 0.1,
        **client_options: Any,
    ) -> RedisStore:
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

    def redis_key(self, scope: str, key: str) -> str:
        """The Redis key holding (scope, key): the scope's length makes it unambiguous."""
        return f"{self.prefix}{len(scope)}:{scope}:{key}"

    def _eval(self, script: _Script, scope: str, key: str, *args: Any) -> Any:
        """One EVALSHA (straight to the client: redis-py's Script wrapper costs more than it
        does here). If the server lost the script (restart, failover, SCRIPT FLUSH), the refused
        EVALSHA ran nothing: load the script and send it once more."""
        redis_key = self.redis_key(scope, key)
        try:
            try:
                return self.client.evalsha(script.sha, 1, redis_key, *args)
            except NoScriptError:
                script.sha = self.client.script_load(script.script)
                return self.client.evalsha(script.sha, 1, redis_key, *args)
        except (RedisError, OSError) as exc:
            raise _translated(exc) from exc

    def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        lease_ms, ttl_ms = _ms(lease), _ms(ttl)
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
            status = _STATUS[reply[0]]
            now, takeover = reply[9] / 1000, reply[10] == 1
        except (KeyError, TypeError, IndexError) as exc:
            raise StoreError(f"unexpected reply from the claim script: {reply!r}") from exc
        return ClaimResult(status, _record(scope, key, reply), now, takeover=takeover)

    def complete(
        self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float
    ) -> None:
        args = (token, outcome, _ms(ttl))
        if not self.wait_replicas:
            _check(self._eval(self._complete, scope, key, *args))
            return
        status, acked = self._complete_and_wait(self.redis_key(scope, key), args)
        _check(status)
        if acked < self.wait_replicas:
            raise StoreError(
                f"the outcome of {scope!r}/{key!r} is stored on the Redis primary, but only "
                f"{acked} of {self.wait_replicas} replicas confirmed it within "
                f"{self.wait_timeout}s: a failover now could lose it"
            )

    def _complete_and_wait(self, redis_key: str, args: tuple[Any, ...]) -> tuple[Any, int]:
        """EVALSHA and WAIT pipelined on one connection: WAIT counts the writes of the connection
        it runs on, so a WAIT sent on another pooled connection would confirm nothing."""
        assert isinstance(self.client, Redis)
        timeout = max(1, _ms(self.wait_timeout))
        try:
            for _ in range(2):
                with self.client.pipeline(transaction=False) as pipe:
                    pipe.evalsha(self._complete.sha, 1, redis_key, *args)
                    pipe.wait(self.wait_replicas, timeout)
                    status, acked = pipe.execute(raise_on_error=False)
                if not isinstance(status, NoScriptError):
                    break
                # The server lost its script cache (restart, failover, SCRIPT FLUSH): the
                # refused EVALSHA ran nothing, so load the script and send both again.
                self._complete.sha = self.client.script_load(self._complete.script)
            for result in (status, acked):
                if isinstance(result, Exception):
                    raise result
        except (RedisError, OSError) as exc:
            raise _translated(exc) from exc
        return status, int(acked)

    def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        return _lease_until(self._eval(self._extend, scope, key, token, _ms(lease)))

    def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        reply = self._eval(self._extend, scope, key, token, _ms(lease), recovery_point)
        return _lease_until(reply)

    def release(self, scope: str, key: str, token: str) -> bool:
        return bool(self._eval(self._release, scope, key, token))

    def get(self, scope: str, key: str) -> Record | None:
        reply = self._eval(self._get, scope, key)
        return None if reply is None else _record(scope, key, reply)

    def delete(self, scope: str, key: str) -> bool:
        return bool(self._eval(self._delete, scope, key))

    def purge_expired(self, limit: int = 1000) -> int:
        """Nothing to do: every record carries PEXPIREAT its expires_at, so Redis removes it
        itself (and the scripts treat a record past expires_at as absent until it does)."""
        return 0

    def migrate(self) -> None:
        """Nothing to create: records are self-describing hashes (schema field ``v``)."""

    def close(self) -> None:
        """Close the client if this store created it (from_url); a client passed in is the
        caller's to close."""
        if self._owns_client:
            self.client.close()


def _check(status: Any) -> None:
    """Raise LeaseLostError for a fencing refusal from complete."""
    if status != b"ok":
        raise _refusal(status)


def _refusal(status: Any) -> StoreError | LeaseLostError:
    """The error for a fencing refusal code (or for a reply no script gives)."""
    reason = _LEASE_LOST.get(status) if isinstance(status, bytes) else None
    if reason is not None:
        return LeaseLostError(reason)
    return StoreError(f"unexpected reply from an idempo script: {status!r}")


def _lease_until(reply: Any) -> float:
    """The extend script's answer: the new lease_until (ms), or a fencing refusal."""
    if type(reply) is int:
        return reply / 1000
    raise _refusal(reply)

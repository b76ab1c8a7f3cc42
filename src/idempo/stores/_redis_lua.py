"""The Redis store's Lua scripts and the pure helpers around them.

Hand-written and shared by both store classes (:mod:`idempo.stores._async.redis` and its
generated sync twin): nothing here does I/O, so nothing here needs generating. The record
layout the scripts keep is described in :mod:`idempo.stores._async.redis`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from redis.exceptions import (
    AskError,
    ClusterError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from idempo.core.records import ClaimStatus, Record, State
from idempo.errors import LeaseLostError, StoreError, StoreUnavailableError
from idempo.stores import _rows as rows

__all__ = [
    "CLAIM",
    "CLIENT_ERRORS",
    "COMPLETE",
    "DELETE",
    "EXTEND",
    "GET",
    "RELEASE",
    "STATUS",
    "Script",
    "check_completed",
    "lease_until",
    "ms",
    "packed",
    "python_packed",
    "record",
    "translated",
]

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
CLAIM = (
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

# Only the current token of a live in_progress record may write (fencing). The codes are the
# transitions.LostReason values, the reasons transitions.require_holder gives. Leaves key and r
# (v, state, token, expires_at) to the body that follows.
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
if r[3] ~= ARGV[1] then return 'taken_over' end
"""
)

# ARGV: token, outcome, ttl ms. Replies 'ok' or a refusal code.
COMPLETE = (
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
EXTEND = (
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
RELEASE = (
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
GET = (
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
DELETE = (
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
# ReadOnlyError is a demoted primary after a failover. The cluster ones are resharding, failover
# and shards down: ClusterError covers ClusterDownError and MasterDownError and a command whose
# redirections ran out; RedisClusterException (not a RedisError) covers SlotNotCoveredError and a
# cluster the client cannot reach or map.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    RedisConnectionError,  # also AuthenticationError, BusyLoadingError, MaxConnectionsError
    RedisTimeoutError,
    ReadOnlyError,
    ClusterError,
    TryAgainError,
    RedisClusterException,
    OSError,
    # "I/O operation on closed file": redis-py's sync cluster client, re-mapping the cluster
    # after a node failed, closes connections that another thread's command is using.
    ValueError,
)

#: What a redis-py client may raise: the store translates each of these at its boundary.
CLIENT_ERRORS: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    ValueError,
)

# The scripts' status codes, as a client with decode_responses=False reads them.
STATUS = {status.value.encode(): status for status in ClaimStatus}


class Script:
    """A Lua script and the SHA1 that EVALSHA names it by."""

    __slots__ = ("script", "sha")

    def __init__(self, script: str) -> None:
        self.script = script
        self.sha = self.digest()

    def evalsha(self, redis_key: str, args: tuple[Any, ...], encoding: str) -> list[bytes]:
        """``EVALSHA sha 1 redis_key *args``, packed."""
        return packed((b"EVALSHA", self.sha.encode(), b"1", redis_key, *args), encoding)

    def eval(self, redis_key: str, args: tuple[Any, ...], encoding: str) -> list[bytes]:
        """``EVAL script 1 redis_key *args``, packed."""
        return packed((b"EVAL", self.script, b"1", redis_key, *args), encoding)

    def digest(self) -> str:
        """The SHA1 the server files the script under once EVAL or SCRIPT LOAD gave it."""
        return hashlib.sha1(self.script.encode(), usedforsecurity=False).hexdigest()


# Arguments longer than this are sent as chunks of their own rather than copied into the
# command (redis-py's packer does the same, at the same size).
_BUFFER_CUTOFF = 6000


def _hiredis_packer() -> Callable[[tuple[Any, ...]], bytes] | None:
    """hiredis's packer (C, UTF-8), where hiredis is installed and has one (2.1 and later)."""
    try:
        import hiredis
    except ImportError:
        return None
    return getattr(hiredis, "pack_command", None)


_HIREDIS_PACK = _hiredis_packer()


def packed(args: tuple[Any, ...], encoding: str) -> list[bytes]:
    """A command in the Redis protocol (RESP), as the chunks to send: ``args`` are bytes, str
    (encoded in ``encoding``, the client's) or int, as the scripts take them. It writes what
    redis-py's packer writes for these types: with hiredis's packer for UTF-8 (a third of the
    cost of the Python one), else in Python (a third of the cost of redis-py's)."""
    if _HIREDIS_PACK is not None and encoding == "utf-8":
        return [_HIREDIS_PACK(args)]
    return python_packed(args, encoding)


def python_packed(args: tuple[Any, ...], encoding: str) -> list[bytes]:
    """packed() in Python, for any encoding; TypeError for an argument no script takes."""
    chunks: list[bytes] = []
    buffer = [b"*%d\r\n" % len(args)]
    for arg in args:
        if type(arg) is str:
            arg = arg.encode(encoding)
        elif type(arg) is int:
            arg = b"%d" % arg
        elif type(arg) is not bytes:
            raise TypeError(f"an idempo script takes bytes, str or int, not {type(arg)!r}")
        if len(arg) > _BUFFER_CUTOFF:
            buffer.append(b"$%d\r\n" % len(arg))
            chunks.append(b"".join(buffer))
            chunks.append(arg)
            buffer = [b"\r\n"]
        else:
            buffer.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    chunks.append(b"".join(buffer))
    return chunks


def translated(exc: Exception) -> StoreUnavailableError | StoreError:
    """The idempo error for a Redis client error (one of CLIENT_ERRORS): the one place where
    they are told apart."""
    redirection = _redirection(exc)
    if redirection is not None:
        return StoreError(
            f"Redis answered {redirection}: this is a cluster node: use redis+cluster:// "
            "(or a RedisCluster client)"
        )
    if isinstance(exc, _UNAVAILABLE):
        return StoreUnavailableError(f"Redis is unavailable: {exc}")
    return StoreError(f"Redis refused an idempo command: {exc}")


def _redirection(exc: Exception) -> str | None:
    """The MOVED or ASK reply a plain client got from a cluster node (a cluster client follows
    them), or None. redis-py 6 and later raise MovedError and AskError, whose message keeps the
    slot and the address but drops the word that says what happened; redis-py 5 raises a bare
    ResponseError."""
    if isinstance(exc, MovedError):
        return f"MOVED {exc}"
    if isinstance(exc, AskError):
        return f"ASK {exc}"
    if isinstance(exc, ResponseError) and str(exc).startswith(("MOVED ", "ASK ")):
        return str(exc)
    return None


def ms(seconds: float) -> int:
    return round(seconds * 1000)


# The states as a client with decode_responses=False reads them.
_STATES = {state.value.encode(): state for state in State}


def record(scope: str, key: str, reply: list[Any]) -> Record:
    """A Record from the scripts' long reply: {status, fingerprint, state, token, lease_until,
    created_at, expires_at, outcome, recovery_point, now, takeover}. Strings arrive as bytes,
    numbers the script computed as int. (The row helpers' checks, done here without the row:
    the scripts refuse any record format but theirs.)"""
    try:
        _, fingerprint, state, token, lease_until, created, expires, outcome, recovery = reply[:9]
        return Record(
            scope=scope,
            key=key,
            fingerprint=fingerprint.decode(),
            state=_STATES[state],
            token=None if token is None else token.decode(),
            lease_until=None if lease_until is None else int(lease_until) / 1000,
            outcome=outcome,
            created_at=int(created) / 1000,
            expires_at=int(expires) / 1000,
            recovery_point=recovery,
        )
    except KeyError:
        raise StoreError(f"corrupt record ({scope!r}, {key!r}): state {reply[2]!r}") from None
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise StoreError(f"corrupt idempotency record for {scope!r}/{key!r}: {exc}") from exc


def check_completed(status: Any) -> None:
    """Raise LeaseLostError for a fencing refusal from complete."""
    if status != b"ok":
        raise _refusal(status)


def _refusal(status: Any) -> StoreError | LeaseLostError:
    """The error for a fencing refusal code (or for a reply no script gives)."""
    if isinstance(status, bytes):
        return rows.lease_lost(status)
    return StoreError(f"unexpected reply from an idempo script: {status!r}")


def lease_until(reply: Any) -> float:
    """The extend script's answer: the new lease_until (ms), or a fencing refusal."""
    if type(reply) is int:
        return reply / 1000
    raise _refusal(reply)

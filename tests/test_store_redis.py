"""The Redis store: the server-store tier of the public suite (sync and async), and what it
promises beyond it: one command per operation, its record layout, error translation, bounded
operations on a stalled server, WAIT, and client ownership. Redis Cluster has its own module,
test_store_redis_cluster."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from idempo import open_store
from idempo.core.records import ClaimStatus
from idempo.errors import LeaseLostError, StoreError, StoreUnavailableError
from idempo.stores.redis import AsyncRedisStore, RedisStore
from idempo.testing import AsyncServerStoreConformance, ServerStoreConformance
from tests.conftest import REDIS_URL, require_service
from tests.redis_servers import Server, redis_server, retries, wait_until

pytestmark = pytest.mark.redis

LEASE, TTL = 30.0, 60.0
DOWN_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def _no_retry() -> dict[str, Any]:
    """Client options that fail at once instead of retrying with backoff."""
    return {
        "socket_connect_timeout": 0.5,
        "socket_timeout": 0.5,
        "retry": Retry(NoBackoff(), 0),
    }


def _async_no_retry() -> dict[str, Any]:
    return {**_no_retry(), "retry": AsyncRetry(NoBackoff(), 0)}


@pytest.fixture
def prefix() -> Iterator[str]:
    require_service("redis")
    prefix = f"idempo-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    """A plain client to look behind the store's back."""
    require_service("redis")
    with redis.Redis.from_url(REDIS_URL) as client:
        yield client


@pytest.fixture
def store(prefix: str) -> Iterator[RedisStore]:
    s = RedisStore.from_url(REDIS_URL, prefix=prefix)
    yield s
    s.close()


@pytest.fixture
async def astore(prefix: str) -> AsyncIterator[AsyncRedisStore]:
    s = AsyncRedisStore.from_url(REDIS_URL, prefix=prefix)
    yield s
    await s.close()


def _key() -> str:
    return f"k-{uuid.uuid4().hex}"


def _token() -> str:
    return uuid.uuid4().hex


# -- the server-store tier of the public suite --------------------------------------------


def _redis_key(prefix: str, scope: str, key: str) -> str:
    """The record's key, as test_record_layout pins it."""
    return f"{prefix}{len(scope)}:{scope}:{key}"


class _RedisHooks:
    """What the server-store tier needs to reach a Redis store behind its back; the location is
    the test's key prefix. Redis has no schema and expires records itself."""

    has_schema = False
    expires_natively = True
    newer_format_match = "schema v2"
    unavailable_match = "Redis is unavailable"

    @pytest.fixture
    def location(self, prefix: str) -> str:
        return prefix

    def write_newer_format(self, location: str, scope: str, key: str) -> None:
        with redis.Redis.from_url(REDIS_URL) as client:
            client.hset(_redis_key(location, scope, key), "v", "2")

    def stored_lease(self, location: str, scope: str, key: str) -> tuple[Any, Any]:
        with redis.Redis.from_url(REDIS_URL, decode_responses=True) as client:
            token, lease_until = client.hmget(
                _redis_key(location, scope, key), "token", "lease_until"
            )
        return token, lease_until

    def count_records(self, location: str) -> int:
        with redis.Redis.from_url(REDIS_URL) as client:
            return sum(1 for _ in client.scan_iter(match=location + "*", count=1000))

    def schema_objects(self, location: str) -> None:
        return None


class TestRedisServerStore(_RedisHooks, ServerStoreConformance):
    @pytest.fixture
    def store(self, location: str) -> Iterator[RedisStore]:
        s = RedisStore.from_url(REDIS_URL, prefix=location)
        yield s
        s.close()

    @pytest.fixture
    def down_store(self) -> Iterator[RedisStore]:
        s = RedisStore.from_url(DOWN_URL, **_no_retry())
        yield s
        s.close()


class TestAsyncRedisServerStore(_RedisHooks, AsyncServerStoreConformance):
    @pytest.fixture
    async def store(self, location: str) -> AsyncIterator[AsyncRedisStore]:
        s = AsyncRedisStore.from_url(REDIS_URL, prefix=location)
        yield s
        await s.close()

    @pytest.fixture
    async def down_store(self) -> AsyncIterator[AsyncRedisStore]:
        s = AsyncRedisStore.from_url(DOWN_URL, **_async_no_retry())
        yield s
        await s.close()


# -- one command per operation -----------------------------------------------------------------


def _calls(client: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = client.info("commandstats")
    return {name: int(value["calls"]) for name, value in stats.items()}


def _evalsha_calls(probe: redis.Redis, op: Callable[[], object], tries: int = 5) -> int:
    """How many EVALSHA the server ran during ``op()``, per INFO commandstats.

    The server is shared: other clients may add calls, never remove any. The least delta over a
    few tries is thus an upper bound, exact as soon as one try ran alone.
    """
    deltas = []
    for _ in range(tries):
        before = _calls(probe)["cmdstat_evalsha"]
        op()
        deltas.append(_calls(probe)["cmdstat_evalsha"] - before)
        if deltas[-1] <= 1:
            break
    return min(deltas)


@contextlib.contextmanager
def _sent_by(probe: redis.Redis, client_name: str) -> Iterator[list[str]]:
    """The commands that connections named ``client_name`` sent while the block ran, as
    ``"NAME@address"`` strings.

    commandstats also counts the commands a script runs inside the server, so it cannot tell
    the store's own commands apart; MONITOR can: it names each command's connection (a
    script's are from "lua").
    """
    sent: list[str] = []
    marker = f"end-of-watch-{uuid.uuid4().hex}"
    seen = []
    with probe.monitor() as monitor:  # type: ignore[no-untyped-call]
        yield sent
        probe.echo(marker)
        while marker not in (command := monitor.next_command())["command"]:
            seen.append(command)
    mine = {c["addr"] for c in probe.client_list() if c["name"] == client_name}
    for c in seen:
        address = f"{c['client_address']}:{c['client_port']}"
        if c["client_type"] == "tcp" and address in mine:
            sent.append(f"{c['command'].split()[0]}@{address}")


def _names(sent: list[str]) -> list[str]:
    return [command.partition("@")[0] for command in sent]


def test_every_operation_is_one_evalsha(raw: redis.Redis, prefix: str) -> None:
    """Each operation is one EVALSHA at the server, and the store sends nothing else."""
    name = f"idempo-test-{uuid.uuid4().hex}"
    store = RedisStore.from_url(REDIS_URL, prefix=prefix, client_name=name)
    # Warm up: every script loaded, the pooled connection past its handshake.
    warm = _key()
    store.claim("s", warm, "fp", "t", lease=LEASE, ttl=TTL)
    store.extend("s", warm, "t", lease=LEASE)
    store.complete("s", warm, "t", b"x", ttl=TTL)
    store.release("s", warm, "t"), store.get("s", warm), store.delete("s", warm)

    # Keys claimed ahead, so that every try of a claim or complete takes the same path.
    fresh = iter([_key() for _ in range(10)])
    held = [(_key(), _token()) for _ in range(10)]
    for key, token in held:
        store.claim("s", key, "fp", token, lease=LEASE, ttl=TTL)
    to_complete = iter(held[1:])
    key, token = held[0]

    operations: dict[str, Callable[[], object]] = {
        "claim": lambda: store.claim("s", next(fresh), "fp", _token(), lease=LEASE, ttl=TTL),
        "claim held": lambda: store.claim("s", key, "fp", _token(), lease=LEASE, ttl=TTL),
        "extend": lambda: store.extend("s", key, token, lease=LEASE),
        "set_recovery_point": lambda: store.set_recovery_point("s", key, token, b"p", lease=LEASE),
        "get": lambda: store.get("s", key),
        "release": lambda: store.release("s", key, "not-the-token"),
        "delete": lambda: store.delete("s", _key()),
        "complete": lambda: store.complete("s", *next(to_complete), b"out", ttl=TTL),
    }
    try:
        for label, op in operations.items():
            assert _evalsha_calls(raw, op) == 1, label
            with _sent_by(raw, name) as sent:
                op()
            assert _names(sent) == ["EVALSHA"], label
    finally:
        store.close()


async def test_async_operations_are_one_evalsha(raw: redis.Redis, prefix: str) -> None:
    """The async store sends one EVALSHA per operation too."""
    name = f"idempo-test-{uuid.uuid4().hex}"
    store = AsyncRedisStore.from_url(REDIS_URL, prefix=prefix, client_name=name)
    try:
        key = _key()
        await store.get("s", key)  # warm up the connection
        with _sent_by(raw, name) as sent:
            claimed = await store.claim("s", key, "fp", _token(), lease=LEASE, ttl=TTL)
            await store.set_recovery_point("s", key, claimed.token, b"p", lease=LEASE)
            await store.complete("s", key, claimed.token, b"out", ttl=TTL)
            await store.claim("s", key, "fp", _token(), lease=LEASE, ttl=TTL)
        assert _names(sent) == ["EVALSHA"] * 4
    finally:
        await store.close()


def _script_commands(probe: redis.Redis, redis_key: str, op: Callable[[], object]) -> list[str]:
    """The commands the store's scripts ran on ``redis_key`` during ``op()`` (MONITOR shows a
    script's commands as from "lua"; TIME names no key and is left out)."""
    marker = f"end-of-watch-{uuid.uuid4().hex}"
    names = []
    with probe.monitor() as monitor:  # type: ignore[no-untyped-call]
        op()
        probe.echo(marker)
        while marker not in (command := monitor.next_command())["command"]:
            words = command["command"].split()
            if command["client_type"] == "lua" and redis_key in words[1:2]:
                names.append(words[0])
    return names


def test_scripts_issue_few_commands(store: RedisStore, raw: redis.Redis) -> None:
    """Lua's per-command cost dominates a script's time: the common paths stay lean (a fresh
    claim deletes nothing; extend and set_recovery_point write in one HSET)."""
    key = _key()
    redis_key = store.redis_key("s", key)
    claimed: list[Any] = []

    def claim() -> None:
        claimed.append(store.claim("s", key, "fp", _token(), lease=LEASE, ttl=TTL))

    assert _script_commands(raw, redis_key, claim) == ["HMGET", "HSET", "PEXPIREAT"]
    token = claimed[0].token
    assert _script_commands(
        raw, redis_key, lambda: store.set_recovery_point("s", key, token, b"p", lease=LEASE)
    ) == ["HMGET", "HSET", "PEXPIREAT"]
    assert _script_commands(
        raw, redis_key, lambda: store.complete("s", key, token, b"out", ttl=TTL)
    ) == ["HMGET", "HDEL", "HSET", "PEXPIREAT"]
    assert _script_commands(raw, redis_key, claim) == ["HMGET"]  # a replay writes nothing
    # An expired leftover is deleted before the fresh record is written.
    raw.hset(redis_key, "expires_at", 1)
    assert _script_commands(raw, redis_key, claim) == ["HMGET", "DEL", "HSET", "PEXPIREAT"]
    assert claimed[-1].status is ClaimStatus.ACQUIRED


# -- layout --------------------------------------------------------------------------------------


def test_record_layout(store: RedisStore, raw: redis.Redis, prefix: str) -> None:
    """A record is one hash at prefix + len(scope):scope:key, expiring at its expires_at."""
    key = _key()
    claimed = store.claim("scope:x", key, "fp", "tok", lease=LEASE, ttl=TTL)
    redis_key = f"{prefix}7:scope:x:{key}"
    assert store.redis_key("scope:x", key) == redis_key
    fields = raw.hgetall(redis_key)
    assert fields[b"v"] == b"1"
    assert fields[b"state"] == b"in_progress"
    assert fields[b"token"] == b"tok"
    assert int(fields[b"expires_at"]) == round(claimed.record.expires_at * 1000)
    # Redis expires the key itself, at expires_at exactly
    assert raw.pexpiretime(redis_key) == int(fields[b"expires_at"])
    store.complete("scope:x", key, "tok", b"\x00out", ttl=5.0)
    fields = raw.hgetall(redis_key)
    assert fields[b"state"] == b"completed"
    assert fields[b"outcome"] == b"\x00out"
    assert b"token" not in fields
    assert b"lease_until" not in fields
    assert 0 < raw.pttl(redis_key) <= 5000
    assert raw.pexpiretime(redis_key) == int(fields[b"expires_at"])
    assert store.purge_expired() == 0


def test_expired_record_not_yet_reaped_is_absent(store: RedisStore, raw: redis.Redis) -> None:
    """expires_at <= now means absent even while the key still exists; a new claim starts
    clean (no outcome or recovery point from the old record)."""
    key = _key()
    redis_key = store.redis_key("s", key)
    past = int(time.time() * 1000) - 60_000
    raw.hset(
        redis_key,
        mapping={
            "v": "1",
            "fingerprint": "old",
            "state": "completed",
            "created_at": past - 1000,
            "expires_at": past,
            "outcome": b"old",
            "recovery_point": b"old",
        },
    )
    raw.expire(redis_key, 60)
    assert store.get("s", key) is None
    assert store.release("s", key, "t") is False
    with pytest.raises(LeaseLostError, match="gone"):
        store.complete("s", key, "t", b"x", ttl=TTL)
    claimed = store.claim("s", key, "new", "t", lease=LEASE, ttl=TTL)
    assert claimed.status is ClaimStatus.ACQUIRED
    assert not claimed.takeover
    assert claimed.record.recovery_point is None
    assert claimed.record.created_at > past / 1000
    fields = raw.hgetall(redis_key)
    assert b"outcome" not in fields
    assert b"recovery_point" not in fields


def test_answers_match_the_stored_record(store: RedisStore) -> None:
    """A fresh claim's short reply (the server's clock alone) and a takeover's long one give
    the very record that is stored, to the millisecond."""
    key = _key()
    fresh = store.claim("s", key, "fp", "t1", lease=0.05, ttl=TTL)
    stored = store.get("s", key)
    assert stored is not None
    assert fresh.record == dataclasses.replace(stored, token="t1")
    assert fresh.now == fresh.record.created_at
    assert fresh.record.expires_at == pytest.approx(fresh.now + TTL, abs=1e-6)
    time.sleep(0.1)
    taken = store.claim("s", key, "fp", "t2", lease=LEASE, ttl=TTL)
    assert taken.status is ClaimStatus.ACQUIRED
    assert taken.takeover
    stored = store.get("s", key)
    assert stored is not None
    assert taken.record == dataclasses.replace(stored, token="t2")
    assert taken.record.created_at == fresh.record.created_at
    until = store.set_recovery_point("s", key, "t2", b"\x00p", lease=2 * LEASE)
    stored = store.get("s", key)
    assert stored is not None
    assert until == stored.lease_until
    assert stored.recovery_point == b"\x00p"
    assert stored.expires_at >= until
    until = store.extend("s", key, "t2", lease=LEASE)
    stored = store.get("s", key)
    assert stored is not None
    assert until == stored.lease_until


def test_stray_fields_without_version_do_not_leak(store: RedisStore, raw: redis.Redis) -> None:
    """A hash holding idempo fields but no schema version is no record: a claim replaces it
    whole, as it does an expired one."""
    key = _key()
    redis_key = store.redis_key("s", key)
    raw.hset(redis_key, mapping={"outcome": b"old", "recovery_point": b"old"})
    assert store.get("s", key) is None
    claimed = store.claim("s", key, "fp", "t", lease=LEASE, ttl=TTL)
    assert claimed.status is ClaimStatus.ACQUIRED
    assert claimed.record.recovery_point is None
    fields = raw.hgetall(redis_key)
    assert b"outcome" not in fields
    assert b"recovery_point" not in fields


def test_foreign_data_is_a_store_error(store: RedisStore, raw: redis.Redis) -> None:
    """A newer schema's record or a key of another type is a StoreError, not a crash."""
    newer, wrong_type = _key(), _key()
    raw.hset(store.redis_key("s", newer), mapping={"v": "2", "expires_at": 1})
    raw.set(store.redis_key("s", wrong_type), "not a hash")
    with pytest.raises(StoreError, match="schema v2"):
        store.claim("s", newer, "fp", "t", lease=LEASE, ttl=TTL)
    with pytest.raises(StoreError, match="WRONGTYPE"):
        store.get("s", wrong_type)


@pytest.mark.parametrize(
    "operation", ["claim", "complete", "extend", "set_recovery_point", "release", "get", "delete"]
)
def test_every_operation_refuses_a_newer_schema(
    store: RedisStore, raw: redis.Redis, operation: str
) -> None:
    """A record of a newer idempo is refused, live or not, and left as it is."""
    redis_key = store.redis_key("s", "k")
    fields = {b"v": b"2", b"expires_at": b"1", b"state": b"in_progress", b"token": b"t"}
    raw.hset(redis_key, mapping=fields)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="schema v2"):
        OPERATIONS[operation](store)
    assert raw.hgetall(redis_key) == fields


def test_unexpected_replies_are_store_errors(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies no script gives (another version's script under the same SHA, say) are
    StoreError, not a crash or a wrong answer."""
    claim_replies: list[Any] = [[b"weird"] + [None] * 10, [b"acquired"], b"ok"]
    for reply in claim_replies:
        monkeypatch.setattr(store, "_eval", lambda *a, reply=reply: reply)
        with pytest.raises(StoreError, match="unexpected reply"):
            store.claim("s", "k", "fp", "t", lease=LEASE, ttl=TTL)
    extend_replies: list[Any] = [b"what", [b"ok", 1], b"ok"]
    for reply in extend_replies:
        monkeypatch.setattr(store, "_eval", lambda *a, reply=reply: reply)
        with pytest.raises(StoreError, match="unexpected reply"):
            store.extend("s", "k", "t", lease=LEASE)
    monkeypatch.setattr(store, "_eval", lambda *a: [b"found", b"fp", b"no-such-state"] + [0] * 8)
    with pytest.raises(StoreError, match="corrupt"):
        store.get("s", "k")


def test_lost_script_cache_is_reloaded(store: RedisStore) -> None:
    """A server that forgot a script (restart, failover) gets it again, also on the
    WAIT path. A bogus sha stands in for SCRIPT FLUSH, which would touch the shared server."""
    key = _key()
    store._claim.sha = "0" * 40
    claimed = store.claim("s", key, "fp", "t", lease=LEASE, ttl=TTL)
    assert claimed.status is ClaimStatus.ACQUIRED
    waiting = RedisStore(store.client, prefix=store.prefix, wait_replicas=1, wait_timeout=0.01)
    waiting._complete.sha = "0" * 40
    with pytest.raises(StoreError, match="stored on the Redis primary"):
        waiting.complete("s", key, "t", b"x", ttl=TTL)
    assert waiting._complete.sha != "0" * 40


async def test_async_lost_script_cache_is_reloaded(astore: AsyncRedisStore) -> None:
    """The async store reloads a script the server forgot."""
    key = _key()
    astore._claim.sha = "0" * 40
    claimed = await astore.claim("s", key, "fp", "t", lease=LEASE, ttl=TTL)
    assert claimed.status is ClaimStatus.ACQUIRED
    assert astore._claim.sha != "0" * 40


# -- errors --------------------------------------------------------------------------------------

OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "claim": lambda s: s.claim("s", "k", "fp", "t", lease=LEASE, ttl=TTL),
    "complete": lambda s: s.complete("s", "k", "t", b"x", ttl=TTL),
    "extend": lambda s: s.extend("s", "k", "t", lease=LEASE),
    "set_recovery_point": lambda s: s.set_recovery_point("s", "k", "t", b"p", lease=LEASE),
    "release": lambda s: s.release("s", "k", "t"),
    "get": lambda s: s.get("s", "k"),
    "delete": lambda s: s.delete("s", "k"),
}


def test_store_down_through_open_store() -> None:
    """A store from open_store on a down server gives StoreUnavailableError."""
    store = open_store(DOWN_URL, prefix="p:", **_no_retry())
    try:
        assert isinstance(store, RedisStore)
        with pytest.raises(StoreUnavailableError):
            store.get("s", "k")
    finally:
        store.close()


def test_store_down_with_default_retries_is_unavailable() -> None:
    """redis-py retries connection errors by default; the store still ends in
    StoreUnavailableError, after the client's own backoff."""
    store = RedisStore.from_url(DOWN_URL, socket_connect_timeout=0.2)
    try:
        with pytest.raises(StoreUnavailableError):
            store.get("s", "k")
    finally:
        store.close()


# Every error a redis-py client raises, plain or cluster, and what the store makes of it.
UNAVAILABLE_ERRORS: list[Exception] = [
    RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused."),
    RedisTimeoutError("Timeout reading from socket"),
    ReadOnlyError("You can't write against a read only replica."),
    ClusterDownError("The cluster is down"),
    MasterDownError("Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
    TryAgainError("Multiple keys request during rehashing of slot"),
    ClusterError("TTL exhausted."),
    SlotNotCoveredError("Slot 1234 is not covered by the cluster."),
    RedisClusterException("Redis Cluster cannot be connected. Please provide at least one node"),
    ConnectionResetError(104, "Connection reset by peer"),
    ValueError("I/O operation on closed file."),  # seen as a cluster re-maps under a thread
]
if hasattr(redis.exceptions, "MaxConnectionsError"):  # redis-py 6 and later
    UNAVAILABLE_ERRORS.append(redis.exceptions.MaxConnectionsError("Too many connections"))


@pytest.fixture(params=["from_url", "client passed in"])
def either_store(request: pytest.FixtureRequest, prefix: str) -> Iterator[RedisStore]:
    """A store of each kind: from_url's sends its scripts on its pool's connections itself, a
    store over a client passed in goes through that client's evalsha."""
    if request.param == "from_url":
        s = RedisStore.from_url(REDIS_URL, prefix=prefix)
    else:
        s = RedisStore(redis.Redis.from_url(REDIS_URL, **_no_retry()), prefix=prefix)
    yield s
    s.close()
    s.client.close()


@pytest.fixture(params=["from_url", "client passed in"])
async def either_astore(
    request: pytest.FixtureRequest, prefix: str
) -> AsyncIterator[AsyncRedisStore]:
    """The async twin of either_store."""
    if request.param == "from_url":
        s = AsyncRedisStore.from_url(REDIS_URL, prefix=prefix)
    else:
        s = AsyncRedisStore(
            redis.asyncio.Redis.from_url(REDIS_URL, **_async_no_retry()), prefix=prefix
        )
    yield s
    await s.close()
    await s.client.aclose()


def _client_fails(store: Any, fail: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every script call of ``store`` raise through ``fail``, where the client would: its
    evalsha (a client passed in), or its connections' read of the reply (from_url's store)."""
    monkeypatch.setattr(store.client, "evalsha", fail)
    monkeypatch.setattr(store.client.connection_pool.connection_class, "read_response", fail)


@pytest.mark.parametrize("error", UNAVAILABLE_ERRORS, ids=lambda e: type(e).__name__)
def test_client_errors_are_store_unavailable(
    either_store: RedisStore, error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every outage a client reports, the cluster ones included (RedisClusterException and
    SlotNotCoveredError are no RedisError), is StoreUnavailableError: nothing raw escapes."""
    store = either_store

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    _client_fails(store, fail, monkeypatch)
    for operation in OPERATIONS.values():
        with pytest.raises(StoreUnavailableError, match="Redis is unavailable") as info:
            operation(store)
        assert info.value.__cause__ is error


@pytest.mark.parametrize("error", UNAVAILABLE_ERRORS, ids=lambda e: type(e).__name__)
async def test_async_client_errors_are_store_unavailable(
    either_astore: AsyncRedisStore, error: Exception, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The async store translates every client outage the same way."""
    astore = either_astore

    async def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    _client_fails(astore, fail, monkeypatch)
    with pytest.raises(StoreUnavailableError, match="Redis is unavailable"):
        await astore.claim("s", "k", "fp", "t", lease=LEASE, ttl=TTL)
    with pytest.raises(StoreUnavailableError, match="Redis is unavailable"):
        await astore.get("s", "k")


@pytest.mark.parametrize(
    ("error", "word"),
    [
        (MovedError("3999 127.0.0.1:7001"), "MOVED"),
        (AskError("3999 127.0.0.1:7001"), "ASK"),
        (redis.ResponseError("MOVED 3999 127.0.0.1:7001"), "MOVED"),  # as redis-py 5 raises it
    ],
)
def test_a_redirection_says_to_use_the_cluster_url(
    either_store: RedisStore, error: Exception, word: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain client at a cluster node gets redirections: the error names them, where they
    point, and the URL to use instead (the cluster module sees it on a real cluster)."""
    store = either_store

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    _client_fails(store, fail, monkeypatch)
    with pytest.raises(StoreError, match=rf"{word} 3999 127.0.0.1:7001.*use redis\+cluster://"):
        store.get("s", "k")


# -- timeouts: a stalled server ------------------------------------------------------------------

BOUND = 0.5  # the timeout the stalled-server tests give their stores


def _elapsed(started: float) -> float:
    return time.monotonic() - started


def _evalsha_count(server: Server) -> int:
    with server.client() as client:
        return _calls(client).get("cmdstat_evalsha", 0)


def test_the_default_timeout_bounds_every_step() -> None:
    """Without timeout=, the connect, each reply and the wait for a pooled connection are
    bounded by 5 s, and the client never resends; timeout= sets all three."""
    store = RedisStore.from_url(REDIS_URL)
    try:
        client = store.client
        assert isinstance(client, redis.Redis)
        pool = client.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.connection_kwargs["socket_timeout"] == 5.0
        assert pool.connection_kwargs["socket_connect_timeout"] == 5.0
        assert pool.timeout == 5.0
        assert retries(pool.connection_kwargs["retry"]) == 0
    finally:
        store.close()
    store = RedisStore.from_url(REDIS_URL, timeout=1.5, socket_connect_timeout=0.2)
    try:
        client = store.client
        assert isinstance(client, redis.Redis)
        pool = client.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.connection_kwargs["socket_timeout"] == 1.5
        assert pool.connection_kwargs["socket_connect_timeout"] == 0.2
        assert pool.timeout == 1.5
    finally:
        store.close()
    for bad in (0, -1.0):
        with pytest.raises(ValueError, match="timeout"):
            RedisStore.from_url(REDIS_URL, timeout=bad)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Server]:
    """A redis-server of this test's own, to pause."""
    with redis_server(tmp_path) as server:
        yield server


def test_stalled_server_is_unavailable_within_the_timeout(own_server: Server) -> None:
    """A paused (SIGSTOP) server gives StoreUnavailableError within about the timeout, on a
    pooled connection and on a new one, with nothing resent; it serves again once resumed."""
    store = RedisStore.from_url(own_server.url, prefix="p:", timeout=BOUND)
    other = RedisStore.from_url(own_server.url, prefix="p:", timeout=BOUND)
    try:
        # a pooled connection, and the scripts loaded (else the stalled EVALSHA would be
        # refused with NOSCRIPT, and run nothing)
        store.claim("s", "warm", "fp", "t", lease=LEASE, ttl=TTL)
        store.release("s", "warm", "t")
        before = _evalsha_count(own_server)
        own_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="Redis is unavailable"):
                store.claim("s", "k", "fp", "t1", lease=LEASE, ttl=TTL)
            assert BOUND * 0.8 <= _elapsed(started) < BOUND + 1.0
            # A new connection: the kernel accepts it for the paused server; the handshake
            # then waits for a reply that does not come.
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="Redis is unavailable"):
                other.get("s", "k")
            assert _elapsed(started) < BOUND * 2 + 1.0
        finally:
            own_server.resume()
        # Served again, on the same store.
        again = store.claim("s", "k", "fp", "t2", lease=LEASE, ttl=TTL)
        # The timed-out claim sat in the paused server's socket and ran when it resumed: the
        # reason a client must not resend it (it would find its own claim "in progress").
        # The engine releases such a claim with the token it holds.
        assert again.status is ClaimStatus.IN_PROGRESS
        assert store.release("s", "k", "t1") is True
        # EVALSHA ran for the timed-out claim once, the later claim and release once each.
        assert _evalsha_count(own_server) - before == 3
    finally:
        store.close()
        other.close()


async def test_async_stalled_server_is_unavailable_within_the_timeout(
    own_server: Server,
) -> None:
    """The async store gives StoreUnavailableError within about the timeout on a paused
    server, and serves again once it is resumed."""
    store = AsyncRedisStore.from_url(own_server.url, prefix="p:", timeout=BOUND)
    try:
        await store.get("s", "warm")
        own_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="Redis is unavailable"):
                await store.claim("s", "k", "fp", "t1", lease=LEASE, ttl=TTL)
            assert BOUND * 0.8 <= _elapsed(started) < BOUND + 1.0
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="Redis is unavailable"):
                await store.get("s", "k")
            assert _elapsed(started) < BOUND * 2 + 1.0
        finally:
            own_server.resume()
        claimed = await store.claim("s", "fresh", "fp", "t", lease=LEASE, ttl=TTL)
        assert claimed.status is ClaimStatus.ACQUIRED
    finally:
        await store.close()


def _checkout(pool: redis.BlockingConnectionPool) -> Any:
    """A connection from ``pool`` (redis-py 5 wants a command name)."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("GET")  # type: ignore[call-arg]


def test_pool_checkout_is_bounded(own_server: Server) -> None:
    """With every pooled connection busy on a stalled server, a caller waits for one no longer
    than the timeout."""
    store = RedisStore.from_url(own_server.url, prefix="p:", timeout=BOUND, max_connections=1)
    try:
        client = store.client
        assert isinstance(client, redis.Redis)
        busy = _checkout(client.connection_pool)  # the only connection, held
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="Redis is unavailable"):
                store.get("s", "k")
            assert BOUND * 0.8 <= _elapsed(started) < BOUND + 1.0
        finally:
            client.connection_pool.release(busy)
        assert store.get("s", "k") is None
    finally:
        store.close()


async def test_async_operations_in_flight_are_bounded(own_server: Server) -> None:
    """The async store keeps at most max_connections operations in flight, each waiting for
    its turn no longer than the timeout, whatever it does (scripts, scan), and never opens
    more connections than that."""
    import asyncio

    store = AsyncRedisStore.from_url(
        own_server.url, prefix="p:", timeout=BOUND * 4, max_connections=2, pool_timeout=BOUND
    )
    try:
        await store.get("s", "warm")
        own_server.pause()
        try:
            stalled = [asyncio.ensure_future(store.get("s", f"k{i}")) for i in range(2)]
            await asyncio.sleep(0.05)  # both turns taken, their replies stalled
            operations: list[Callable[[], Any]] = [
                lambda: store.get("s", "k"),
                lambda: store.scan(limit=10),
            ]
            for operation in operations:
                started = time.monotonic()
                with pytest.raises(StoreUnavailableError, match="no free connection within"):
                    await operation()
                assert BOUND * 0.8 <= _elapsed(started) < BOUND * 3
            for future in stalled:
                with pytest.raises(StoreUnavailableError, match="Redis is unavailable"):
                    await future
        finally:
            own_server.resume()
        results = await asyncio.gather(*(store.get("s", f"k{i}") for i in range(10)))
        assert results == [None] * 10
        pool = store.client.connection_pool
        assert len(pool._available_connections) + len(pool._in_use_connections) <= 2
    finally:
        await store.close()


async def test_async_stalled_send_is_unavailable_within_the_timeout(own_server: Server) -> None:
    """A send the server does not read (paused, its buffers full) ends within about the
    timeout, its connection dropped; the connections keep their own timeout throughout."""
    store = AsyncRedisStore.from_url(own_server.url, prefix="p:", timeout=BOUND)
    try:
        claimed = await store.claim("s", "k", "fp", "t", lease=LEASE, ttl=TTL)
        assert claimed.status is ClaimStatus.ACQUIRED
        pool = store.client.connection_pool
        (connection,) = pool._available_connections
        transport = connection._writer.transport
        own_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="Redis is unavailable"):
                await store.complete("s", "k", "t", b"x" * (64 << 20), ttl=TTL)
            assert _elapsed(started) < BOUND * 2 + 1.0
        finally:
            # redis.asyncio closes the cut connection without waiting: its transport would
            # linger, closing, until the server reads what is buffered, past this test's loop.
            transport.abort()
            own_server.resume()
        connections = [*pool._available_connections, *pool._in_use_connections]
        assert connections
        assert all(c.socket_timeout == BOUND for c in connections)
        assert not any(c.is_connected for c in connections)  # the cut send's was dropped
        await store.complete("s", "k", "t", b"done", ttl=TTL)
        record = await store.get("s", "k")
        assert record is not None
        assert record.outcome == b"done"
        assert all(c.socket_timeout == BOUND for c in connections)
    finally:
        await store.close()


def test_no_listener_is_unavailable_at_once() -> None:
    """A port nobody listens on is refused at once, not after the timeout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        store = RedisStore.from_url(f"redis://127.0.0.1:{port}/0", timeout=30)
        try:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError):
                store.get("s", "k")
            assert _elapsed(started) < 5
        finally:
            store.close()


def test_recovers_after_a_restart(own_server: Server) -> None:
    """A server restarted under a store: the pooled connection fails once (it is never
    resent), then the store reconnects."""
    store = RedisStore.from_url(own_server.url, prefix="p:", timeout=BOUND)
    try:
        store.get("s", "k")
        own_server.stop()
        own_server.start()

        def serves() -> bool:
            try:
                return store.get("s", "k") is None
            except StoreUnavailableError:
                return False

        wait_until("the store serves the restarted server", serves, 10)
    finally:
        store.close()


# -- WAIT ----------------------------------------------------------------------------------------


def _replicas(raw: redis.Redis) -> int:
    return int(raw.info("replication")["connected_slaves"])


def test_wait_without_enough_replicas_raises_but_keeps_the_record(
    raw: redis.Redis, prefix: str
) -> None:
    """WAIT without enough replicas raises StoreError, promptly, and the record stays stored."""
    if _replicas(raw) >= 1:
        pytest.skip("this test needs a Redis primary without replicas")
    name = f"idempo-test-{uuid.uuid4().hex}"
    store = RedisStore.from_url(
        REDIS_URL, prefix=prefix, wait_replicas=1, wait_timeout=0.05, client_name=name
    )
    try:
        key = _key()
        claimed = store.claim("s", key, "fp", _token(), lease=LEASE, ttl=TTL)
        started = time.monotonic()
        with (
            _sent_by(raw, name) as sent,
            pytest.raises(StoreError, match=r"stored on the Redis primary.*0 of 1 replicas"),
        ):
            store.complete("s", key, claimed.token, b"kept", ttl=TTL)
        assert time.monotonic() - started < 2.0
        # WAIT counts the writes of its own connection: it must follow EVALSHA on the same one
        assert _names(sent) == ["EVALSHA", "WAIT"]
        assert len({command.partition("@")[2] for command in sent}) == 1
        # the outcome is stored all the same: a retry replays it
        again = store.claim("s", key, "fp", _token(), lease=LEASE, ttl=TTL)
        assert again.status is ClaimStatus.COMPLETED
        assert again.record.outcome == b"kept"
        # a fencing refusal is still a LeaseLostError, not a replication complaint
        with pytest.raises(LeaseLostError):
            store.complete("s", key, claimed.token, b"again", ttl=TTL)
    finally:
        store.close()


async def test_async_wait_without_enough_replicas_raises(raw: redis.Redis, prefix: str) -> None:
    """The async store's WAIT without enough replicas raises and keeps the record."""
    if _replicas(raw) >= 1:
        pytest.skip("this test needs a Redis primary without replicas")
    store = AsyncRedisStore.from_url(REDIS_URL, prefix=prefix, wait_replicas=1, wait_timeout=0.05)
    try:
        key = _key()
        claimed = await store.claim("s", key, "fp", _token(), lease=LEASE, ttl=TTL)
        with pytest.raises(StoreError, match="stored on the Redis primary"):
            await store.complete("s", key, claimed.token, b"kept", ttl=TTL)
        record = await store.get("s", key)
        assert record is not None
        assert record.outcome == b"kept"
    finally:
        await store.close()


def test_wait_with_enough_replicas_passes(raw: redis.Redis, prefix: str) -> None:
    """wait_replicas=0 sends no WAIT; asking for the replicas present succeeds."""
    replicas = _replicas(raw)
    store = RedisStore.from_url(REDIS_URL, prefix=prefix, wait_replicas=replicas)
    try:
        key = _key()
        claimed = store.claim("s", key, "fp", _token(), lease=LEASE, ttl=TTL)
        store.complete("s", key, claimed.token, b"ok", ttl=TTL)
        assert (record := store.get("s", key)) is not None
        assert record.outcome == b"ok"
    finally:
        store.close()


# -- construction and ownership -------------------------------------------------------------------


def test_invalid_options_are_refused(raw: redis.Redis) -> None:
    """decode_responses=True and out-of-range WAIT options are refused."""
    with (
        redis.Redis.from_url(REDIS_URL, decode_responses=True) as decoding,
        pytest.raises(ValueError, match="decode_responses=False"),
    ):
        RedisStore(decoding)
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisStore.from_url(REDIS_URL, decode_responses=True)
    with pytest.raises(ValueError, match="wait_timeout"):
        RedisStore(raw, wait_replicas=1, wait_timeout=0)
    with pytest.raises(ValueError, match="wait_replicas"):
        RedisStore(raw, wait_replicas=-1)


def test_close_leaves_a_passed_client_open(raw: redis.Redis, prefix: str) -> None:
    """Closing a store leaves a client passed in open for its owner."""
    store = RedisStore(raw, prefix=prefix)
    store.migrate()
    assert store.get("s", _key()) is None
    store.close()
    assert raw.ping()


async def test_async_close_leaves_a_passed_client_open(prefix: str) -> None:
    """Closing an async store leaves a client passed in open for its owner."""
    async with redis.asyncio.Redis.from_url(REDIS_URL) as client:
        store = AsyncRedisStore(client, prefix=prefix)
        await store.migrate()
        assert await store.purge_expired() == 0
        assert await store.get("s", _key()) is None
        await store.close()
        assert await client.ping()


def test_missing_redis_package_names_the_extra() -> None:
    """Without redis-py, importing the store says which extra to install."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "try:\n"
        "    import idempo.stores.redis\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "pip install 'idempo[redis]'" in out


# -- the scripts' commands, packed by the store itself -------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        (b"EVALSHA", "0" * 40, b"1", "idempo:1:s:kéy", "fp", 30_000, 600_000),
        (b"EVAL", "return 1", b"1", "k", b"\x00\r\n" * 3000, b"", -5),  # a chunk of its own
        (b"EVALSHA", "a", b"1", "k", b"x" * 6001, b"y" * 6000),
    ],
)
def test_commands_are_packed_as_redis_py_packs_them(args: tuple[Any, ...]) -> None:
    """The store's own packer writes, byte for byte, what redis-py's would."""
    from redis.connection import Encoder, PythonRespSerializer

    from idempo.stores import _redis_lua as lua

    reference = b"".join(
        PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode).pack(*args)
    )
    assert b"".join(lua.packed(args, "utf-8")) == reference  # hiredis's packer, if installed
    assert b"".join(lua.python_packed(args, "utf-8")) == reference
    latin = PythonRespSerializer(6000, Encoder("latin-1", "strict", False).encode)
    assert b"".join(lua.packed(args, "latin-1")) == b"".join(latin.pack(*args))


def test_packing_refuses_what_no_script_takes() -> None:
    from idempo.stores import _redis_lua as lua

    with pytest.raises(TypeError, match="bytes, str or int"):
        lua.python_packed((b"EVALSHA", 1.5), "utf-8")


def test_a_large_outcome_round_trips(store: RedisStore, astore: AsyncRedisStore) -> None:
    """An outcome past the packer's chunk size, and one with CRLF in it, are stored whole."""
    for outcome in (bytes(range(256)) * 1000, b"\r\n" * 7000, b""):
        key = _key()
        store.claim("s", key, "fp", "t", lease=LEASE, ttl=TTL)
        store.complete("s", key, "t", outcome, ttl=TTL)
        record = store.get("s", key)
        assert record is not None
        assert record.outcome == outcome


async def test_async_large_outcome_round_trips(astore: AsyncRedisStore) -> None:
    outcome = bytes(range(256)) * 1000
    key = _key()
    await astore.claim("s", key, "fp", "t", lease=LEASE, ttl=TTL)
    await astore.complete("s", key, "t", outcome, ttl=TTL)
    record = await astore.get("s", key)
    assert record is not None
    assert record.outcome == outcome


def test_a_failed_read_leaves_no_connection_dirty(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply lost mid-read (here: a timeout raised in place of it) disconnects that
    connection: the next operation reads its own reply, not the one left on the wire."""
    key = _key()
    store.claim("s", key, "fp", "t", lease=LEASE, ttl=TTL)
    store.complete("s", key, "t", b"done", ttl=TTL)
    connection_class = store.client.connection_pool.connection_class
    real_read = connection_class.read_response

    def lose_reply(self: Any, *args: Any, **kwargs: Any) -> Any:
        self.disconnect()  # what redis-py does when a read fails
        raise RedisTimeoutError("Timeout reading from socket")

    monkeypatch.setattr(connection_class, "read_response", lose_reply)
    with pytest.raises(StoreUnavailableError):
        store.get("s", key)  # its reply, a list, would make a stale read below True
    monkeypatch.setattr(connection_class, "read_response", real_read)
    assert store.delete("s", _key()) is False
    record = store.get("s", key)
    assert record is not None
    assert record.outcome == b"done"


async def test_the_cluster_gate_bounds_operations_in_flight() -> None:
    """The asyncio cluster store's gate: free turns are taken at once, past the limit a caller
    waits for a turn and, after the timeout, is told the store is unavailable."""
    import asyncio

    from idempo.stores import _redis_connect as connect

    gate = connect.async_gate(2, 0.05)
    async with gate, gate:
        with pytest.raises(StoreUnavailableError, match=r"no free connection within 0\.05s"):
            async with gate:
                pass
        entered = asyncio.Event()

        async def third() -> None:
            async with gate:
                entered.set()

        waiting = asyncio.ensure_future(third())
        await asyncio.sleep(0.01)
        assert not entered.is_set()
    await asyncio.wait_for(waiting, 1)  # a turn freed is taken by the caller waiting for it
    assert entered.is_set()
    async with gate, gate:  # both turns are free again
        pass

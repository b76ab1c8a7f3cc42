"""The opt-in cache of completed outcomes (``replay_cache=``, DESIGN section 8): a retry of a
completed key answered from memory with no round trip, and never what the store would not say."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from idempo import Idempotency, open_store
from idempo import replay_cache as replay_cache_module
from idempo.asgi import IdempotencyMiddleware
from idempo.core.records import ClaimResult, ClaimStatus, Record, State
from idempo.errors import KeyReuseError
from idempo.replay_cache import ReplayCache, replay_cache_of
from tests.conftest import REDIS_URL, cleanup, require_service, store_url

# -- the cache itself --------------------------------------------------------------------------


def completed(key: str, *, fingerprint: str = "f", outcome: bytes = b"1", life: float = 60.0):
    now = 1000.0
    record = Record(
        scope="s",
        key=key,
        fingerprint=fingerprint,
        state=State.COMPLETED,
        token=None,
        lease_until=None,
        outcome=outcome,
        created_at=now,
        expires_at=now + life,
    )
    return ClaimResult(ClaimStatus.COMPLETED, record, now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The cache's monotonic clock, moved by hand."""
    now = [0.0]
    monkeypatch.setattr(replay_cache_module.time, "monotonic", lambda: now[0])
    return now


def test_a_kept_answer_is_found_under_its_fingerprint_only(clock: list[float]) -> None:
    cache = ReplayCache(5.0)
    answer = completed("k")
    cache.keep(answer)
    assert cache.lookup("s", "k", "f") is answer
    assert cache.lookup("s", "k", "other") is None
    assert cache.lookup("other-scope", "k", "f") is None
    assert cache.lookup("s", "other", "f") is None


def test_an_entry_lives_ttl_seconds_and_never_past_the_record(clock: list[float]) -> None:
    cache = ReplayCache(5.0)
    cache.keep(completed("long"))
    cache.keep(completed("short", life=2.0))  # the record expires before the cache's ttl
    clock[0] = 1.9
    assert cache.lookup("s", "long", "f") is not None
    assert cache.lookup("s", "short", "f") is not None
    clock[0] = 2.0
    assert cache.lookup("s", "short", "f") is None
    assert cache.lookup("s", "long", "f") is not None
    clock[0] = 5.0
    assert cache.lookup("s", "long", "f") is None
    assert len(cache) == 0  # looked-up expired entries are dropped


def test_only_completed_answers_within_the_size_bound_are_kept(clock: list[float]) -> None:
    cache = ReplayCache(5.0, max_outcome_bytes=4)
    cache.keep(completed("big", outcome=b"12345"))
    record = completed("p").record
    in_progress = Record(**{**_fields(record), "state": State.IN_PROGRESS, "outcome": None})
    cache.keep(ClaimResult(ClaimStatus.IN_PROGRESS, in_progress, 1000.0))
    cache.keep(completed("gone", life=0.0))
    assert len(cache) == 0


def _fields(record: Record) -> dict[str, Any]:
    return {name: getattr(record, name) for name in Record.__slots__}


def test_the_oldest_entry_goes_first_when_full(clock: list[float]) -> None:
    cache = ReplayCache(5.0, max_entries=2)
    for key in ("a", "b", "c"):
        cache.keep(completed(key))
    assert cache.lookup("s", "a", "f") is None
    assert cache.lookup("s", "b", "f") is not None
    assert cache.lookup("s", "c", "f") is not None
    cache.forget("s", "b")
    assert cache.lookup("s", "b", "f") is None


def test_the_option_is_checked() -> None:
    assert replay_cache_of(None) is None
    assert replay_cache_of(0) is None
    assert replay_cache_of(2).ttl == 2.0  # type: ignore[union-attr]
    shared = ReplayCache(1.0)
    assert replay_cache_of(shared) is shared
    with pytest.raises(TypeError, match="replay_cache must be seconds"):
        replay_cache_of("1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        replay_cache_of(True)
    with pytest.raises(ValueError, match="ttl must be > 0"):
        replay_cache_of(-1)
    with pytest.raises(ValueError, match="max_entries must be >= 1"):
        ReplayCache(1.0, max_entries=0)


# -- the decorator -------------------------------------------------------------------------------


def evalsha_calls() -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.redis
@pytest.mark.parametrize("cached", [False, True], ids=["no cache", "cache"])
def test_a_cached_replay_costs_no_round_trip_at_the_server(tmp_path: Path, cached: bool) -> None:
    """Counted at the Redis server: a replay is one EVALSHA without the cache, none with it."""
    require_service("redis")
    url, options = store_url("redis", tmp_path)
    idem = Idempotency(url, store_options=options, replay_cache=30 if cached else None)
    runs: list[int] = []

    @idem.idempotent(key=lambda n: "k")
    def charge(n: int) -> int:
        runs.append(n)
        return len(runs)

    try:
        assert charge(1) == 1  # the claim, and the replay that fills the cache
        assert charge(1) == 1
        before = evalsha_calls()
        for _ in range(5):
            assert charge(1) == 1
        assert evalsha_calls() - before == (0 if cached else 5)
        assert runs == [1]
    finally:
        idem.close()
        cleanup("redis", options)


@pytest.mark.sqlite
def test_a_delete_through_idem_store_is_seen_at_once(tmp_path: Path) -> None:
    idem = Idempotency(f"sqlite:///{tmp_path / 'i.db'}", replay_cache=60)
    runs: list[int] = []

    @idem.idempotent(key=lambda n: "k")
    def charge(n: int) -> int:
        runs.append(n)
        return len(runs)

    try:
        assert charge(1) == 1
        assert charge(1) == 1  # replayed from the store, now kept
        assert charge(1) == 1  # from the cache
        (record,) = idem.store.scan().records
        assert idem.store.delete(record.scope, "k") is True
        assert charge(1) == 2  # runs again: the cache forgot the key with the delete
        assert runs == [1, 1]
    finally:
        idem.close()


@pytest.mark.sqlite
def test_a_delete_elsewhere_is_seen_within_the_ttl(tmp_path: Path) -> None:
    """Another handle on the same database (as another process would be): the delete is seen
    once the cache's ttl has run out, never later."""
    url = f"sqlite:///{tmp_path / 'i.db'}"
    cache = ReplayCache(0.3)
    idem = Idempotency(url, replay_cache=cache)
    runs: list[int] = []

    @idem.idempotent(key=lambda n: "k")
    def charge(n: int) -> int:
        runs.append(n)
        return len(runs)

    other = open_store(url)
    try:
        assert charge(1) == 1
        assert charge(1) == 1  # kept now
        (record,) = other.scan().records
        assert other.delete(record.scope, "k") is True
        assert charge(1) == 1  # still within the ttl: the documented window
        time.sleep(0.35)
        assert charge(1) == 2
    finally:
        other.close()
        idem.close()


@pytest.mark.memory
def test_another_request_under_a_cached_key_is_still_refused() -> None:
    idem = Idempotency("memory://", replay_cache=60)

    @idem.idempotent(key=lambda n: "k")
    def charge(n: int) -> int:
        return n

    assert charge(1) == 1
    assert charge(1) == 1  # kept
    with pytest.raises(KeyReuseError):
        charge(2)  # the store's answer, not the cache's


@pytest.mark.memory
async def test_async_functions_use_the_cache_too() -> None:
    idem = Idempotency("memory://", replay_cache=60)
    runs: list[int] = []

    @idem.idempotent(key=lambda n: "k")
    async def charge(n: int) -> int:
        runs.append(n)
        return len(runs)

    assert await charge(1) == 1
    assert await charge(1) == 1
    assert len(idem.replay_cache or ()) == 1
    (record,) = (await idem.async_store.scan()).records
    assert await idem.async_store.delete(record.scope, "k") is True
    assert len(idem.replay_cache or ()) == 0
    assert await charge(1) == 2


# -- HTTP ----------------------------------------------------------------------------------------


@pytest.mark.sqlite
async def test_the_middleware_replays_from_the_cache_and_forgets_on_delete(
    tmp_path: Path,
) -> None:
    runs: list[int] = []

    async def create(request: Request) -> JSONResponse:
        runs.append(1)
        return JSONResponse({"n": len(runs)}, status_code=201)

    app = IdempotencyMiddleware(
        Starlette(routes=[Route("/charges", create, methods=["POST"])]),
        store=f"sqlite:///{tmp_path / 'h.db'}",
        replay_cache=60,
    )
    claims = _count_claims(app)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        headers = {"Idempotency-Key": "abc"}
        first = await client.post("/charges", json={"a": 1}, headers=headers)
        assert first.status_code == 201
        for _ in range(3):
            again = await client.post("/charges", json={"a": 1}, headers=headers)
            assert (again.status_code, again.content) == (201, first.content)
        assert runs == [1]
        assert claims == [1, 1]  # the new key, then the replay that filled the cache
        other = await client.post("/charges", json={"a": 2}, headers=headers)
        assert other.status_code == 422  # still the store's refusal
        assert await app.store.delete(_scope_of(app), "abc") is True
        fresh = await client.post("/charges", json={"a": 1}, headers=headers)
        assert fresh.status_code == 201
        assert fresh.json() == {"n": 2}
    await app.store.close()


def _count_claims(app: IdempotencyMiddleware) -> list[int]:
    """Count the claims that reach the real store behind the cache."""
    store = app.store.wrapped  # type: ignore[attr-defined]
    calls: list[int] = []
    real = store.claim

    async def claim(*args: Any, **kwargs: Any) -> ClaimResult:
        calls.append(1)
        return await real(*args, **kwargs)

    store.claim = claim
    return calls


def _scope_of(app: IdempotencyMiddleware) -> str:
    """The principal an anonymous request is stored under."""
    return app.front.scope_fn({})


@pytest.mark.sqlite
def test_transactional_mode_binds_the_store_behind_the_cache(tmp_path: Path) -> None:
    """With the cache on, idem.transaction() still binds the real store to the caller's
    connection: the record commits with the effect, and a repeat replays."""
    import sqlite3

    path = tmp_path / "t.db"
    idem = Idempotency(f"sqlite:///{path}", replay_cache=60)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE charges (k TEXT)")
    try:
        for _ in range(2):
            with idem.transaction(conn, key="t-1") as tx:
                if not tx.replayed:
                    conn.execute("INSERT INTO charges VALUES ('t-1')")
                    tx.result = {"ok": True}
            if conn.in_transaction:
                conn.execute("COMMIT")
        assert conn.execute("SELECT count(*) FROM charges").fetchone() == (1,)
        assert idem.store.get("", "t-1") is not None
    finally:
        conn.close()
        idem.close()

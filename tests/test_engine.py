"""The engine's lifecycle: acquire() returns its decision, and the lease handle (Held) owns the
heartbeat and every way an execution ends."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from idempo import Idempotency
from idempo._async.engine import AsyncEngine, AsyncHeld
from idempo._sync.engine import Engine, Held
from idempo.core.decide import Reject, Replay
from idempo.core.outcome import RELEASE, Keep, encode_value
from idempo.core.policy import Policy
from idempo.errors import (
    InProgressError,
    KeyReuseError,
    LeaseLostError,
    SerializationError,
    StoreUnavailableError,
)
from idempo.phases import AsyncPhase, Phase
from idempo.stores.memory import AsyncMemoryStore, MemoryStore

POLICY = Policy(ttl=60, lease=30)


class FlakyStore(MemoryStore):
    """A real MemoryStore whose ``extend`` fails as told: the next ``blips`` calls with
    StoreUnavailableError (a store blip), and every call after ``lose`` with LeaseLostError."""

    def __init__(self) -> None:
        super().__init__()
        self.extends = 0
        self.blips = 0
        self.lose: int | None = None
        self.beat = threading.Event()

    def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        self.extends += 1
        self.beat.set()
        if self.blips:
            self.blips -= 1
            raise StoreUnavailableError("blip")
        if self.lose is not None and self.extends >= self.lose:
            raise LeaseLostError("taken over")
        return super().extend(scope, key, token, lease=lease)


def wait_for_extends(store: FlakyStore, n: int, timeout: float = 5.0) -> None:
    """Block until the store has seen ``n`` extend calls (or fail after ``timeout``)."""
    while store.extends < n:
        store.beat.clear()
        assert store.beat.wait(timeout), f"only {store.extends} beats, wanted {n}"


def test_acquire_returns_every_decision_instead_of_raising() -> None:
    """acquire() answers Held, Reject(InProgressError), Reject(KeyReuseError) and Replay as
    values; only run() raises."""
    engine = Engine(MemoryStore())
    held = engine.acquire("s", "k", "fp", POLICY)
    assert isinstance(held, Held)
    assert (held.scope, held.key, held.takeover, held.recovery_point) == ("s", "k", False, None)
    busy = engine.acquire("s", "k", "fp", POLICY)
    assert isinstance(busy, Reject)
    assert isinstance(busy.error, InProgressError)
    other = engine.acquire("s", "k", "other", POLICY)
    assert isinstance(other, Reject)
    assert isinstance(other.error, KeyReuseError)
    assert held.finish({"v": 1}) == {"v": 1}
    replay = engine.acquire("s", "k", "fp", POLICY)
    assert isinstance(replay, Replay)
    assert engine.replay(replay.outcome, scope="s", key="k", policy=POLICY) == {"v": 1}
    with pytest.raises(KeyReuseError):
        engine.run(lambda: 2, scope="s", key="k", fingerprint="other", policy=POLICY)


def test_heartbeat_rides_out_a_store_blip() -> None:
    """A renewal that fails with a transient error does not stop the heartbeat: the next beat
    renews the lease, so a live holder keeps its claim through a store blip."""
    store = FlakyStore()
    store.blips = 2
    held = Engine(store).acquire("s", "k", "fp", Policy(ttl=60, lease=0.15))
    assert isinstance(held, Held)
    with held.heartbeat():
        wait_for_extends(store, 4)  # two failed beats, then two that renewed
    assert store.blips == 0
    held.finish("done")  # still ours


def test_heartbeat_stops_for_good_on_a_lost_lease() -> None:
    """LeaseLostError stops the beats: the claim is someone else's, renewing is pointless."""
    store = FlakyStore()
    store.lose = 2
    held = Engine(store).acquire("s", "k", "fp", Policy(ttl=60, lease=0.15))
    assert isinstance(held, Held)
    with held.heartbeat():
        wait_for_extends(store, 2)
        seen = store.extends
        # Several intervals with no beat: nothing calls extend after the loss.
        assert not store.beat.wait(0.3) or store.extends == seen
    assert store.extends == seen


async def test_async_heartbeat_rides_out_a_blip_and_stops_on_loss() -> None:
    """The async heartbeat has the same rule: blips are ridden out, a lost lease stops it."""
    store = FlakyStore()
    store.blips = 1
    store.lose = 3
    held = await AsyncEngine(AsyncMemoryStore(store)).acquire(
        "s", "k", "fp", Policy(ttl=60, lease=0.15)
    )
    assert isinstance(held, AsyncHeld)
    async with held.heartbeat():
        await asyncio.to_thread(wait_for_extends, store, 3)
        seen = store.extends
        await asyncio.sleep(0.3)
    assert store.extends == seen == 3


def test_finish_hands_back_the_live_value_when_the_lease_is_lost() -> None:
    """A holder whose claim was taken over learns it at finish(): LeaseLostError says the
    operation ran and carries its live result."""
    store = MemoryStore()
    engine = Engine(store)
    held = engine.acquire("s", "k", "fp", POLICY)
    assert isinstance(held, Held)
    store.delete("s", "k")
    with pytest.raises(LeaseLostError) as info:
        held.finish({"charge": 7})
    assert info.value.executed is True
    assert info.value.value == {"charge": 7}


def test_finish_unstorable_modes() -> None:
    """An unkeepable result: "raise" keeps a not-stored marker and raises; "raise_before_write"
    raises with nothing written; "log" keeps the marker and returns the value."""
    store = MemoryStore()
    engine = Engine(store)
    value = {1, 2}  # a set: not JSON
    for mode, kept in (("raise", True), ("raise_before_write", False), ("log", True)):
        held = engine.acquire("s", mode, "fp", POLICY)
        assert isinstance(held, Held)
        if mode == "log":
            assert held.finish(value, unstorable="log") is value
        else:
            with pytest.raises(SerializationError) as info:
                held.finish(value, unstorable=mode)  # type: ignore[arg-type]
            assert info.value.value is value
        record = store.get("s", mode)
        assert record is not None
        assert (record.outcome is not None) is kept


def test_settle_keeps_or_releases_and_never_raises() -> None:
    """settle() is for answers already sent: Keep completes, Release frees the key, and a
    store failure is logged, not raised."""
    store = MemoryStore()
    engine = Engine(store)
    kept = engine.acquire("s", "kept", "fp", POLICY)
    freed = engine.acquire("s", "freed", "fp", POLICY)
    lost = engine.acquire("s", "lost", "fp", POLICY)
    assert isinstance(kept, Held)
    assert isinstance(freed, Held)
    assert isinstance(lost, Held)
    kept.settle(Keep(encode_value(POLICY.serializer, b'"ok"')))
    freed.settle(RELEASE)
    store.delete("s", "lost")
    lost.settle(Keep(b"x"))  # LeaseLostError inside: logged
    assert isinstance(engine.acquire("s", "kept", "fp", POLICY), Replay)
    assert isinstance(engine.acquire("s", "freed", "fp", POLICY), Held)


def test_phases_keep_the_live_result_when_the_lease_is_lost() -> None:
    """A phased operation whose claim was taken over still hands back its last phase's
    result on LeaseLostError (it used to drop it)."""
    store = MemoryStore()
    idem = Idempotency(store=store, lease=30)

    def last(ctx: Any) -> dict[str, int]:
        store.delete(ctx.scope, ctx.key)  # another worker's takeover, as far as we can tell
        return {"paid": 10}

    with pytest.raises(LeaseLostError) as info:
        idem.run_phases([Phase("pay", last)], key="order-1")
    assert info.value.executed is True
    assert info.value.value == {"paid": 10}


async def test_async_local_phases_refuse_a_sqlite_connection_clearly(tmp_path: Path) -> None:
    """Async local phases need a psycopg AsyncConnection: a sqlite3 connection is a clear
    TypeError before anything runs (the async twin used to await sqlite3's commit)."""
    idem = Idempotency(store=f"sqlite:///{tmp_path / 'idempo.db'}")
    conn = sqlite3.connect(tmp_path / "app.db")
    ran = []

    async def write(ctx: Any) -> int:
        ran.append(1)
        return 1

    try:
        with pytest.raises(TypeError, match="psycopg"):
            await idem.arun_phases([AsyncPhase("write", write, local=True)], key="k", conn=conn)
    finally:
        conn.close()
        await idem.aclose()
    assert ran == []


class LostReplyStore(MemoryStore):
    """A real MemoryStore whose next claim is written, then its reply lost on the way back."""

    lose_next = True

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        result = super().claim(*args, **kwargs)
        if self.lose_next:
            self.lose_next = False
            raise StoreUnavailableError("the reply was lost")
        return result


def test_a_claim_whose_reply_was_lost_is_released() -> None:
    """The client saw StoreUnavailableError, but the claim had been written: the engine knows
    its token and releases it, so the retry runs at once instead of getting 409 for a lease."""
    store = LostReplyStore()
    engine = Engine(store)
    with pytest.raises(StoreUnavailableError):
        engine.acquire("s", "k", "fp", POLICY)
    # Released in the background (the caller hears of the failure at once): wait, bounded.
    deadline = time.monotonic() + 5
    while store.get("s", "k") is not None:
        assert time.monotonic() < deadline, "the unknown claim was never released"
        time.sleep(0.01)
    retry = engine.acquire("s", "k", "fp", POLICY)
    assert isinstance(retry, Held)


async def test_async_a_claim_whose_reply_was_lost_is_released() -> None:
    """The same through the async engine."""
    store = LostReplyStore()
    engine = AsyncEngine(AsyncMemoryStore(store))
    with pytest.raises(StoreUnavailableError):
        await engine.acquire("s", "k", "fp", POLICY)
    await asyncio.sleep(0)  # the release runs as a task of this loop: let it
    assert store.get("s", "k") is None
    assert isinstance(await engine.acquire("s", "k", "fp", POLICY), AsyncHeld)


class SlowReplyStore(AsyncMemoryStore):
    """A real store whose next claim is written, then its reply takes a long while."""

    slow_next = True

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        result = await super().claim(*args, **kwargs)
        if self.slow_next:
            self.slow_next = False
            await asyncio.sleep(30)
        return result


async def test_async_a_claim_cancelled_on_its_way_is_released() -> None:
    """A caller cancelled while its claim was on its way (its own timeout, a server
    cancelling the request) leaves no claim behind: the engine releases it by its token, so
    the retry runs at once instead of getting 409 for a whole lease."""
    backing = MemoryStore()
    store = SlowReplyStore(backing)
    engine = AsyncEngine(store)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await engine.acquire("s", "k", "fp", Policy(ttl=60, lease=60))
    deadline = time.monotonic() + 5
    while backing.get("s", "k") is not None:
        assert time.monotonic() < deadline, "the cancelled claim was never released"
        await asyncio.sleep(0.01)
    assert isinstance(await engine.acquire("s", "k", "fp", POLICY), AsyncHeld)


class SlowCompleteStore(AsyncMemoryStore):
    """A real store whose next complete (or release) is slow: before it reaches the store
    (``written=False``) or after (``written=True``, its reply is slow)."""

    def __init__(self, backing: MemoryStore, *, written: bool) -> None:
        super().__init__(backing)
        self.written = written
        self.slow_next = True

    async def _slow(self) -> None:
        if self.slow_next:
            self.slow_next = False
            await asyncio.sleep(30)

    async def complete(self, *args: Any, **kwargs: Any) -> None:
        if not self.written:
            await self._slow()
        await super().complete(*args, **kwargs)
        if self.written:
            await self._slow()

    async def release(self, *args: Any, **kwargs: Any) -> bool:
        if not self.written:
            await self._slow()
        released = await super().release(*args, **kwargs)
        if self.written:
            await self._slow()
        return released


async def _eventually(check: Any, what: str) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("written", [False, True], ids=["before-the-write", "after-the-write"])
async def test_async_an_outcome_cut_short_by_a_cancellation_is_still_kept(written: bool) -> None:
    """The operation ran, then its caller was cancelled while the outcome was on its way to
    the store: the outcome is sent again in the background (fenced by the token, so a second
    send of one that landed does nothing), and the retry replays it instead of meeting "in
    progress" for a lease and then running the operation a second time."""
    backing = MemoryStore()
    engine = AsyncEngine(SlowCompleteStore(backing, written=written))
    runs = []

    async def op() -> int:
        runs.append(1)
        return 42

    policy = Policy(ttl=60, lease=60)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await engine.run(op, scope="s", key="k", fingerprint="fp", policy=policy)

    def kept() -> bool:
        record = backing.get("s", "k")
        return record is not None and record.outcome is not None

    await _eventually(kept, "the outcome was never kept")
    assert await engine.run(op, scope="s", key="k", fingerprint="fp", policy=policy) == 42
    assert runs == [1]


class DownAfterCancelStore(SlowCompleteStore):
    """Its first complete is slow, and every later one finds the store down."""

    async def complete(self, *args: Any, **kwargs: Any) -> None:
        if self.slow_next:
            await self._slow()
        raise StoreUnavailableError("down")


async def test_async_an_outcome_that_cannot_be_resent_is_logged_as_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If the store stays down until the lease would have run out, the resend gives up and
    says so, with the store's error: a retry after the lease may run the operation again."""
    engine = AsyncEngine(DownAfterCancelStore(MemoryStore(), written=False))

    async def op() -> int:
        return 42

    policy = Policy(ttl=60, lease=0.6)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await engine.run(op, scope="s", key="k", fingerprint="fp", policy=policy)

    def warned() -> bool:
        return any("could not record the outcome" in r.getMessage() for r in caplog.records)

    await _eventually(warned, "the failed resend was never logged")
    record = next(r for r in caplog.records if "could not record the outcome" in r.getMessage())
    assert record.levelname == "WARNING"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], StoreUnavailableError)


@pytest.mark.parametrize("written", [False, True], ids=["before-the-write", "after-the-write"])
async def test_async_a_release_cut_short_by_a_cancellation_still_frees_the_key(
    written: bool,
) -> None:
    """A failed response (settled as a release) whose release was cut short by a
    cancellation: the release is sent again in the background, so the retry runs at once."""
    backing = MemoryStore()
    engine = AsyncEngine(SlowCompleteStore(backing, written=written))
    held = await engine.acquire("s", "k", "fp", POLICY)
    assert isinstance(held, AsyncHeld)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await held.settle(RELEASE)
    await _eventually(lambda: backing.get("s", "k") is None, "the key was never freed")
    assert isinstance(await engine.acquire("s", "k", "fp", POLICY), AsyncHeld)


class StalledStore(MemoryStore):
    """A real MemoryStore that is unreachable for its first ``down`` calls after the claim's
    lost reply (a store that stays down a little while)."""

    def __init__(self, down: int) -> None:
        super().__init__()
        self.down = down
        self.lose_next = True

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        result = super().claim(*args, **kwargs)
        if self.lose_next:
            self.lose_next = False
            raise StoreUnavailableError("the reply was lost")
        return result

    def release(self, scope: str, key: str, token: str) -> bool:
        if self.down:
            self.down -= 1
            raise StoreUnavailableError("still down")
        return super().release(scope, key, token)


def test_the_release_of_an_unknown_claim_is_retried_while_the_store_is_down() -> None:
    """A store that is still down when the release is first tried is asked again, with
    backoff, within the lease: the key is freed once the store is back."""
    store = StalledStore(down=2)
    engine = Engine(store)
    with pytest.raises(StoreUnavailableError):
        engine.acquire("s", "k", "fp", POLICY)
    deadline = time.monotonic() + 10
    while store.get("s", "k") is not None:
        assert time.monotonic() < deadline, "the unknown claim was never released"
        time.sleep(0.05)
    assert store.down == 0


async def test_async_block_ending_mid_beat_lets_the_beat_finish() -> None:
    """A beat in flight when its block ends is awaited, not cancelled (cancelling a driver
    mid-round-trip discards its connection), and no beat starts after the block ended."""
    from idempo._primitives import async_periodic

    started, finished = asyncio.Event(), []

    async def beat() -> None:
        started.set()
        await asyncio.sleep(0.1)
        finished.append(asyncio.get_running_loop().time())

    block = async_periodic(beat, 0.03)
    await block.__aenter__()
    await asyncio.wait_for(started.wait(), 2)
    await block.__aexit__(None, None, None)
    assert len(finished) == 1  # the beat ran to its end before the block's exit returned
    await asyncio.sleep(0.1)
    assert len(finished) == 1  # and nothing beat after it


async def test_async_block_cancelled_mid_beat_cancels_the_beat() -> None:
    """If the task leaving the block is itself cancelled while it waits for the beat, the
    beat is cancelled with it."""
    from idempo._primitives import async_periodic

    started, cancelled = asyncio.Event(), asyncio.Event()

    async def beat() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    block = async_periodic(beat, 0.03)

    async def run() -> None:
        await block.__aenter__()
        await started.wait()
        await block.__aexit__(None, None, None)

    task = asyncio.create_task(run())
    await asyncio.wait_for(started.wait(), 2)
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(cancelled.wait(), 2)


async def test_async_block_ending_while_its_beat_is_cancelled_elsewhere_ends_cleanly() -> None:
    """A beat cancelled by someone else while the block waits for it does not turn into a
    cancellation of the block's own task."""
    from idempo._primitives import async_periodic

    started = asyncio.Event()

    async def beat() -> None:
        started.set()
        await asyncio.sleep(30)

    block = async_periodic(beat, 0.03)
    await block.__aenter__()
    await asyncio.wait_for(started.wait(), 2)
    beat_task = block._task  # type: ignore[attr-defined]
    assert beat_task is not None
    asyncio.get_running_loop().call_later(0.05, beat_task.cancel)
    await block.__aexit__(None, None, None)  # returns: this task was never cancelled
    assert beat_task.cancelled()


async def test_async_blocks_started_together_share_one_timer_for_their_first_beat() -> None:
    """Periodic blocks entered close together schedule one timer between them, not one each
    (a guarded HTTP request enters one): each still gets its first beat within its interval
    and keeps beating after it, and a block that ended before its beat is never called."""
    from idempo._primitives import async_periodic

    loop = asyncio.get_running_loop()
    scheduled: list[float] = []
    call_at, call_later = loop.call_at, loop.call_later

    def counting_call_at(when: float, *args: Any, **kwargs: Any) -> Any:
        scheduled.append(when)
        return call_at(when, *args, **kwargs)

    def counting_call_later(delay: float, *args: Any, **kwargs: Any) -> Any:
        scheduled.append(loop.time() + delay)
        return call_later(delay, *args, **kwargs)

    beats = {name: 0 for name in ("a", "b", "c", "gone")}

    def beat(name: str) -> Any:
        async def fn() -> None:
            beats[name] += 1

        return fn

    interval = 0.15
    loop.call_at, loop.call_later = counting_call_at, counting_call_later  # type: ignore[method-assign]
    try:
        blocks = {name: async_periodic(beat(name), interval) for name in beats}
        started = loop.time()
        for block in blocks.values():
            await block.__aenter__()
        assert len(scheduled) == 1  # one timer for the four first beats
        await blocks["gone"].__aexit__(None, None, None)
        await asyncio.sleep(interval + 0.05)
        assert beats == {"a": 1, "b": 1, "c": 1, "gone": 0}
        await asyncio.sleep(interval)
        for name in ("a", "b", "c"):
            await blocks[name].__aexit__(None, None, None)
    finally:
        del loop.call_at, loop.call_later  # the loop's own methods again
    assert beats["a"] == beats["b"] == beats["c"] == 2
    assert interval * 2 / 3 <= scheduled[0] - started <= interval + 0.01

"""The @idempotent decorator end to end, on def and async def, over every store. What reads the
same on both is written once, in ``tests/_async/test_idempotent.py``, and generated to
``tests/_sync/``."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from idempo import Idempotency, PickleSerializer
from idempo.errors import (
    FingerprintError,
    InProgressError,
    InvalidKeyError,
    KeyReuseError,
    LeaseLostError,
    OutcomeNotStoredError,
    SerializationError,
)
from idempo.stores.memory import AsyncMemoryStore, MemoryStore
from tests.conftest import (
    STORE_KINDS,
    async_idempotency_on,
    sync_idempotency_on,
)


@pytest.fixture(params=STORE_KINDS)
def idem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Idempotency]:
    with sync_idempotency_on(request.param, tmp_path) as idem:
        yield idem


@pytest.fixture(params=STORE_KINDS)
async def aidem(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Idempotency]:
    async with async_idempotency_on(request.param, tmp_path) as idem:
        yield idem


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def bump(self) -> int:
        with self.lock:
            self.calls += 1
            return self.calls


# -- sync -------------------------------------------------------------------------------------


def test_key_reuse_with_other_arguments_is_refused(idem: Idempotency) -> None:
    """Same key, different arguments: KeyReuseError, and the function does not run."""
    c = Counter()

    @idem.idempotent(key=lambda order_id, amount: order_id)
    def charge(order_id: str, amount: int) -> int:
        return c.bump()

    charge("o-1", 10)
    with pytest.raises(KeyReuseError) as info:
        charge("o-1", 99)
    assert info.value.key == "o-1"
    assert info.value.status == 422
    assert c.calls == 1


def test_positional_and_keyword_calls_are_the_same_request(idem: Idempotency) -> None:
    """f(1, b=2), f(a=1, b=2) and f(1, 2) fingerprint alike; defaults are filled in."""
    c = Counter()

    @idem.idempotent(key=lambda a, b, c_=0: str(a))
    def f(a: int, b: int, c_: int = 0) -> int:
        return c.bump()

    assert f(1, b=2) == f(a=1, b=2) == f(1, 2) == f(1, 2, 0) == 1
    with pytest.raises(KeyReuseError):
        f(1, 2, 3)


def test_without_key_the_arguments_are_the_key(idem: Idempotency) -> None:
    """No key=: each distinct argument set runs once."""
    c = Counter()

    @idem.idempotent
    def provision(name: str, size: int) -> int:
        return c.bump()

    assert provision("db", 2) == provision("db", 2) == 1
    assert provision("db", 3) == 2
    assert c.calls == 2


def test_duplicate_in_flight_is_refused(idem: Idempotency) -> None:
    """While the first call runs, a duplicate gets InProgressError with a retry hint."""
    started, release = threading.Event(), threading.Event()
    c = Counter()

    @idem.idempotent(key=lambda x: x)
    def slow(x: str) -> int:
        started.set()
        release.wait(10)
        return c.bump()

    result: list[int] = []
    first = threading.Thread(target=lambda: result.append(slow("k")))
    first.start()
    assert started.wait(10)
    try:
        with pytest.raises(InProgressError) as info:
            slow("k")
        assert 0 < info.value.retry_after <= 5.5
        assert info.value.status == 409
    finally:
        release.set()
        first.join(10)
    assert result == [1]
    assert slow("k") == 1


def test_wait_is_bounded(idem: Idempotency) -> None:
    """A waiting duplicate gives up with InProgressError once its wait runs out."""
    started, release = threading.Event(), threading.Event()

    @idem.idempotent(key=lambda x: x, wait=0.3)
    def slow(x: str) -> int:
        started.set()
        release.wait(10)
        return 1

    first = threading.Thread(target=slow, args=("k",))
    first.start()
    assert started.wait(10)
    t0 = time.monotonic()
    try:
        with pytest.raises(InProgressError):
            slow("k")
        assert time.monotonic() - t0 < 3.0
    finally:
        release.set()
        first.join(10)


def test_stale_holder_is_fenced(idem: Idempotency) -> None:
    """A call that outlives its lease is taken over; it gets LeaseLostError with its live
    result, and cannot overwrite the new holder's outcome."""
    c = Counter()
    taken_over = threading.Event()

    # heartbeat=False: the first call stalls as a paused process would, renewing nothing.
    @idem.idempotent(key=lambda x: x, lease=0.3, heartbeat=False)
    def op(x: str) -> int:
        n = c.bump()
        if n == 1:
            entered.set()
            taken_over.wait(10)  # outlive the lease until the second call has finished
        return n

    errors: list[BaseException] = []
    entered = threading.Event()

    def stale() -> None:
        try:
            op("k")
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=stale)
    first.start()
    assert entered.wait(10)  # the first call holds the claim
    time.sleep(0.35)
    deadline = time.monotonic() + 10
    while True:  # a loaded machine may start the lease late: retry until it has run out
        try:
            second = op("k")
            break
        except InProgressError:
            assert time.monotonic() < deadline, "the stale lease never ran out"
            time.sleep(0.05)
    assert second == 2  # took over the expired lease
    taken_over.set()
    first.join(10)
    assert len(errors) == 1
    assert isinstance(errors[0], LeaseLostError)
    assert errors[0].executed
    assert errors[0].value == 1
    assert op("k") == 2  # the new holder's outcome stands


def test_scopes_keep_tenants_apart(idem: Idempotency) -> None:
    """The same key under two scopes runs twice; each scope replays its own result."""
    c = Counter()

    @idem.idempotent(key=lambda tenant, key: key, scope=lambda tenant, key: tenant)
    def op(tenant: str, key: str) -> str:
        return f"{tenant}:{c.bump()}"

    assert op("acme", "k") == "acme:1"
    assert op("globex", "k") == "globex:2"
    assert op("acme", "k") == "acme:1"


def test_functions_do_not_share_records(idem: Idempotency) -> None:
    """Two functions keyed by the same value are two operations."""

    @idem.idempotent(key=lambda order_id: order_id)
    def charge(order_id: str) -> str:
        return "charged"

    @idem.idempotent(key=lambda order_id: order_id)
    def refund(order_id: str) -> str:
        return "refunded"

    assert charge("o") == "charged"
    assert refund("o") == "refunded"


def test_unserializable_result_is_an_error_and_not_run_twice(idem: Idempotency) -> None:
    """A result JSON cannot keep raises SerializationError carrying the live value; a retry
    is refused (OutcomeNotStoredError) rather than running the effect again."""
    c = Counter()
    marker = object()

    @idem.idempotent(key=lambda x: x)
    def op(x: str) -> object:
        c.bump()
        return marker

    with pytest.raises(SerializationError) as info:
        op("k")
    assert info.value.value is marker
    with pytest.raises(OutcomeNotStoredError, match="not serializable"):
        op("k")
    assert c.calls == 1


def test_too_large_result_is_returned_once_then_refused(idem: Idempotency, tmp_path: Path) -> None:
    """Above max_outcome_bytes: the live result is returned, a retry gets a clear error."""
    small = Idempotency(idem.store, max_outcome_bytes=100)
    c = Counter()

    @small.idempotent(key=lambda x: x)
    def op(x: str) -> str:
        c.bump()
        return "x" * 1000

    assert op("k") == "x" * 1000
    with pytest.raises(OutcomeNotStoredError, match="too large") as info:
        op("k")
    assert info.value.status == 409
    assert c.calls == 1


def test_invalid_key_is_refused_before_running(idem: Idempotency) -> None:
    """Empty, overlong or non-printable keys raise InvalidKeyError; nothing runs."""
    c = Counter()

    @idem.idempotent(key=lambda k: k)
    def op(k: str) -> int:
        return c.bump()

    for bad in ["", "x" * 256, "tab\there", "caf\u00e9"]:
        with pytest.raises(InvalidKeyError):
            op(bad)
    assert c.calls == 0


def test_unfingerprintable_argument_is_a_clear_error(idem: Idempotency) -> None:
    """An argument with no canonical form raises FingerprintError naming it; nothing runs."""

    @idem.idempotent(key=lambda obj: "k")
    def op(obj: object) -> int:
        return 1

    with pytest.raises(FingerprintError, match="object"):
        op(object())


def test_pickle_serializer_keeps_python_types(tmp_path: Path) -> None:
    """With PickleSerializer a tuple replays as a tuple (JSON would give a list)."""
    idem = Idempotency(MemoryStore(), serializer=PickleSerializer())

    @idem.idempotent(key=lambda: "k")
    def op() -> tuple[int, frozenset[int]]:
        return (1, frozenset({2}))

    assert op() == op() == (1, frozenset({2}))
    assert isinstance(op(), tuple)


def test_store_kind_is_checked_at_decoration() -> None:
    """A sync store cannot serve an async def, and the error comes when decorating."""
    sync_only = Idempotency(MemoryStore())
    with pytest.raises(TypeError, match="async def"):

        @sync_only.idempotent
        async def a() -> None: ...

    async_only = Idempotency(AsyncMemoryStore())
    with pytest.raises(TypeError, match="def"):

        @async_only.idempotent
        def b() -> None: ...


# -- async ------------------------------------------------------------------------------------


async def test_async_concurrent_duplicates_run_once(aidem: Idempotency) -> None:
    """64 concurrent calls with one key: one runs, the rest are refused or replay."""
    c = Counter()

    @aidem.idempotent(key=lambda k: k)
    async def op(k: str) -> int:
        await asyncio.sleep(0.05)
        return c.bump()

    results = await asyncio.gather(*(op("k") for _ in range(64)), return_exceptions=True)
    assert c.calls == 1
    assert all(r == 1 or isinstance(r, InProgressError) for r in results), results
    assert await op("k") == 1


async def test_async_cancelled_call_is_not_kept(aidem: Idempotency) -> None:
    """A cancelled task releases its claim, so the retry runs."""
    c = Counter()
    started = asyncio.Event()

    @aidem.idempotent(key=lambda k: k)
    async def op(k: str) -> int:
        n = c.bump()
        if n == 1:
            started.set()
            await asyncio.sleep(10)
        return n

    task = asyncio.create_task(op("k"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await op("k") == 2


def test_unusual_function_names_and_bad_durations() -> None:
    """A non-ASCII function name gets a stable hashed namespace; infinite or NaN durations are
    refused when configured, not at the store."""
    idem = Idempotency(MemoryStore())

    @idem.idempotent(key=lambda x: x)
    def café(x: str) -> int:
        return 1

    assert café("k") == café("k") == 1
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite"):
            Idempotency(MemoryStore(), lease=bad)
        with pytest.raises(ValueError, match="finite"):
            Idempotency(MemoryStore(), ttl=bad)

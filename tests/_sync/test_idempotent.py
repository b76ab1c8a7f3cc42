# DO NOT EDIT: generated from tests/_async/test_idempotent.py by scripts/unasync.py
"""The @idempotent decorator over every store: the scenarios that read the same on a function and
on a coroutine function (``tests/_sync/`` is generated from ``tests/_async/``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idempo import Idempotency
from idempo._primitives import sync_gather, sync_sleep
from idempo.errors import InProgressError
from tests._primitives import Event
from tests.conftest import (
    STORE_KINDS,
    sync_idempotency_on,
)


@pytest.fixture(params=STORE_KINDS)
def idem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Idempotency]:
    with sync_idempotency_on(request.param, tmp_path) as idem:
        yield idem


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.lock = threading.Lock()

    def bump(self) -> int:
        with self.lock:
            self.calls += 1
            return self.calls


def test_first_call_runs_and_repeat_replays(idem: Idempotency) -> None:
    """The first call runs; a repeat with the same key returns the kept result, unrun."""
    c = Counter()

    @idem.idempotent(key=lambda order_id, amount: order_id)
    def charge(order_id: str, amount: int) -> dict[str, Any]:
        sync_sleep(0)
        return {"order": order_id, "amount": amount, "run": c.bump()}

    first = charge("o-1", 10)
    again = charge("o-1", 10)
    assert first == again == {"order": "o-1", "amount": 10, "run": 1}
    assert c.calls == 1
    other = charge("o-2", 10)
    assert other["run"] == 2


def test_exception_is_not_kept(idem: Idempotency) -> None:
    """A raising call releases its claim: the retry runs again, and its result is kept."""
    c = Counter()

    @idem.idempotent(key=lambda x: x)
    def flaky(x: str) -> int:
        if c.bump() == 1:
            raise RuntimeError("transient")
        return c.calls

    with pytest.raises(RuntimeError, match="transient"):
        flaky("k")
    assert flaky("k") == 2
    assert flaky("k") == 2


def test_heartbeat_keeps_a_slow_call_from_being_taken_over(idem: Idempotency) -> None:
    """A live call longer than its lease keeps renewing it: a duplicate during that time is
    refused (in progress), never run, and the first call's result is kept."""
    c = Counter()
    started, release = Event(), Event()

    @idem.idempotent(key=lambda x: x, lease=0.3)
    def slow(x: str) -> int:
        n = c.bump()
        if n == 1:
            started.set()
            release.wait()
        return n

    def first() -> int:
        return slow("k")

    def duplicate() -> None:
        started.wait()
        try:
            sync_sleep(0.7)  # the lease would have run out twice without the heartbeat
            with pytest.raises(InProgressError):
                slow("k")
        finally:
            release.set()

    results = sync_gather([first, duplicate])
    assert results == [1, None]
    assert slow("k") == 1
    assert c.calls == 1


def test_duplicate_can_wait_for_the_first(idem: Idempotency) -> None:
    """With wait=, a duplicate waits for the first call and replays its result."""
    c = Counter()
    started, release = Event(), Event()

    @idem.idempotent(key=lambda x: x, wait=10)
    def slow(x: str) -> int:
        started.set()
        release.wait()
        return c.bump()

    def first() -> int:
        return slow("k")

    def duplicate() -> int:
        started.wait()
        return slow("k")

    def releaser() -> None:
        started.wait()
        sync_sleep(0.2)  # time for the duplicate to start waiting; it replays either way
        release.set()

    results = sync_gather([first, duplicate, releaser])
    assert results == [1, 1, None]
    assert c.calls == 1

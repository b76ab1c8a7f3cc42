"""Checks that a function is idempotent: called twice, concurrently, and with its key reused."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from idempo.errors import InProgressError, KeyReuseError
from idempo.testing._checks import Effects, acount, check_once, count, fail

__all__ = [
    "assert_idempotent",
    "assert_idempotent_async",
    "assert_idempotent_concurrently",
    "assert_idempotent_concurrently_async",
    "assert_rejects_reuse",
    "assert_rejects_reuse_async",
]

R = TypeVar("R")


def _same(first: Any, again: Any, what: str) -> None:
    if again != first:
        raise fail(f"{what}: the repeat returned {again!r}, the first call {first!r}")


def assert_idempotent(call: Callable[[], R], *, effects: Effects | None = None) -> R:
    """Call ``call`` twice: the same result both times, the effect once. Returns the result."""
    before = count(effects)
    first = call()
    again = call()
    _same(first, again, "called twice")
    check_once(before, count(effects), "called twice")
    return first


async def assert_idempotent_async(
    call: Callable[[], Awaitable[R]], *, effects: Effects | None = None
) -> R:
    """:func:`assert_idempotent` for ``async def``."""
    before = await acount(effects)
    first = await call()
    again = await call()
    _same(first, again, "called twice")
    check_once(before, await acount(effects), "called twice")
    return first


def _settle_race(outcomes: list[tuple[bool, Any]], what: str) -> Any:
    """The one result of a race: every call returned it or was refused as in progress."""
    values = [v for ok, v in outcomes if ok]
    for ok, v in outcomes:
        if not ok and not isinstance(v, InProgressError):
            raise fail(f"{what}: a call raised {v!r}") from v
    if not values:
        raise fail(f"{what}: every call was refused as in progress; none ran")
    for v in values[1:]:
        _same(values[0], v, what)
    return values[0]


def assert_idempotent_concurrently(
    call: Callable[[], R], *, effects: Effects | None = None, workers: int = 8
) -> R:
    """Call ``call`` from ``workers`` threads at once: the effect once; every call returns the
    same result or raises InProgressError (a duplicate of a call still running). Then once
    more: the kept result. Returns it."""
    before = count(effects)
    barrier = threading.Barrier(workers)
    outcomes: list[tuple[bool, Any]] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        try:
            outcome: tuple[bool, Any] = (True, call())
        except BaseException as exc:
            outcome = (False, exc)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=one) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    what = f"called by {workers} threads at once"
    value: R = _settle_race(outcomes, what)
    _same(value, call(), what + ", then again")
    check_once(before, count(effects), what)
    return value


async def assert_idempotent_concurrently_async(
    call: Callable[[], Awaitable[R]], *, effects: Effects | None = None, workers: int = 8
) -> R:
    """:func:`assert_idempotent_concurrently` for ``async def``: ``workers`` tasks at once."""
    before = await acount(effects)
    results = await asyncio.gather(*(call() for _ in range(workers)), return_exceptions=True)
    outcomes = [(not isinstance(r, BaseException), r) for r in results]
    what = f"called by {workers} tasks at once"
    value: R = _settle_race(outcomes, what)
    _same(value, await call(), what + ", then again")
    check_once(before, await acount(effects), what)
    return value


def _reuse_refused(exc: BaseException | None) -> None:
    if exc is None:
        raise fail("the same key with other arguments ran instead of raising KeyReuseError")
    if not isinstance(exc, KeyReuseError):
        raise fail(f"the same key with other arguments raised {exc!r}, not KeyReuseError")


def assert_rejects_reuse(
    first: Callable[[], Any], second: Callable[[], Any], *, effects: Effects | None = None
) -> None:
    """``first`` runs; ``second`` (the same key, other arguments) raises KeyReuseError and has
    no effect."""
    before = count(effects)
    first()
    try:
        second()
    except BaseException as exc:
        _reuse_refused(exc)
    else:
        _reuse_refused(None)
    check_once(before, count(effects), "key reused")


async def assert_rejects_reuse_async(
    first: Callable[[], Awaitable[Any]],
    second: Callable[[], Awaitable[Any]],
    *,
    effects: Effects | None = None,
) -> None:
    """:func:`assert_rejects_reuse` for ``async def``."""
    before = await acount(effects)
    await first()
    try:
        await second()
    except BaseException as exc:
        _reuse_refused(exc)
    else:
        _reuse_refused(None)
    check_once(before, await acount(effects), "key reused")

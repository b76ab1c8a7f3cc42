"""Assertions for your own code: is this function, or this endpoint, idempotent?

Each check runs the real thing (your function and its store, your server and its middleware)
and raises AssertionError saying what went wrong. ``effects`` is a callable returning how many
times the effect happened so far (rows in a table, calls to a fake provider); each check then
asserts the effect happened exactly once.

Functions (the key comes from the arguments, so each check takes zero-argument callables)::

    assert_idempotent(lambda: charge("o-1", 10), effects=charges.count)
    assert_idempotent_concurrently(lambda: charge("o-2", 10), effects=charges.count)
    assert_rejects_reuse(lambda: charge("o-3", 10), lambda: charge("o-3", 99))

Endpoints (a fresh key per check; ``client`` is an ``httpx.Client`` or a base URL)::

    assert_endpoint_idempotent(client, "POST", "/orders", json={"sku": "a"})
    assert_endpoint_idempotent_concurrently(client, "POST", "/orders", json={"sku": "a"})
    assert_endpoint_rejects_reuse(client, "POST", "/orders", json={"sku": "a"},
                                  changed={"json": {"sku": "b"}})

Each has an ``_async`` twin for ``async def`` functions and ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from idempo.errors import InProgressError, KeyReuseError

if TYPE_CHECKING:
    import httpx

__all__ = [
    "assert_endpoint_idempotent",
    "assert_endpoint_idempotent_async",
    "assert_endpoint_idempotent_concurrently",
    "assert_endpoint_idempotent_concurrently_async",
    "assert_endpoint_rejects_reuse",
    "assert_endpoint_rejects_reuse_async",
    "assert_idempotent",
    "assert_idempotent_async",
    "assert_idempotent_concurrently",
    "assert_idempotent_concurrently_async",
    "assert_rejects_reuse",
    "assert_rejects_reuse_async",
]

R = TypeVar("R")
Effects = Callable[[], Any]  # returns an int, or (in the _async checks) an awaitable of one

REPLAYED = "idempotent-replayed"


def _fail(message: str) -> AssertionError:
    # Raised by hand, not with assert: pytest rewrites asserts only in test modules.
    return AssertionError(f"not idempotent: {message}")


def _count(effects: Effects | None) -> int | None:
    return None if effects is None else int(effects())


async def _acount(effects: Effects | None) -> int | None:
    if effects is None:
        return None
    n = effects()
    return int(await n) if inspect.isawaitable(n) else int(n)


def _check_once(before: int | None, after: int | None, what: str) -> None:
    if before is not None and after is not None and after - before != 1:
        raise _fail(f"{what}: the effect happened {after - before} times, expected once")


# -- functions -------------------------------------------------------------------------------


def _same(first: Any, again: Any, what: str) -> None:
    if again != first:
        raise _fail(f"{what}: the repeat returned {again!r}, the first call {first!r}")


def assert_idempotent(call: Callable[[], R], *, effects: Effects | None = None) -> R:
    """Call ``call`` twice: the same result both times, the effect once. Returns the result."""
    before = _count(effects)
    first = call()
    again = call()
    _same(first, again, "called twice")
    _check_once(before, _count(effects), "called twice")
    return first


async def assert_idempotent_async(
    call: Callable[[], Awaitable[R]], *, effects: Effects | None = None
) -> R:
    """:func:`assert_idempotent` for ``async def``."""
    before = await _acount(effects)
    first = await call()
    again = await call()
    _same(first, again, "called twice")
    _check_once(before, await _acount(effects), "called twice")
    return first


def _settle_race(outcomes: list[tuple[bool, Any]], what: str) -> Any:
    """The one result of a race: every call returned it or was refused as in progress."""
    values = [v for ok, v in outcomes if ok]
    for ok, v in outcomes:
        if not ok and not isinstance(v, InProgressError):
            raise _fail(f"{what}: a call raised {v!r}") from v
    if not values:
        raise _fail(f"{what}: every call was refused as in progress; none ran")
    for v in values[1:]:
        _same(values[0], v, what)
    return values[0]


def assert_idempotent_concurrently(
    call: Callable[[], R], *, effects: Effects | None = None, workers: int = 8
) -> R:
    """Call ``call`` from ``workers`` threads at once: the effect once; every call returns the
    same result or raises InProgressError (a duplicate of a call still running). Then once
    more: the kept result. Returns it."""
    before = _count(effects)
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
    _check_once(before, _count(effects), what)
    return value


async def assert_idempotent_concurrently_async(
    call: Callable[[], Awaitable[R]], *, effects: Effects | None = None, workers: int = 8
) -> R:
    """:func:`assert_idempotent_concurrently` for ``async def``: ``workers`` tasks at once."""
    before = await _acount(effects)
    results = await asyncio.gather(*(call() for _ in range(workers)), return_exceptions=True)
    outcomes = [(not isinstance(r, BaseException), r) for r in results]
    what = f"called by {workers} tasks at once"
    value: R = _settle_race(outcomes, what)
    _same(value, await call(), what + ", then again")
    _check_once(before, await _acount(effects), what)
    return value


def _reuse_refused(exc: BaseException | None) -> None:
    if exc is None:
        raise _fail("the same key with other arguments ran instead of raising KeyReuseError")
    if not isinstance(exc, KeyReuseError):
        raise _fail(f"the same key with other arguments raised {exc!r}, not KeyReuseError")


def assert_rejects_reuse(
    first: Callable[[], Any], second: Callable[[], Any], *, effects: Effects | None = None
) -> None:
    """``first`` runs; ``second`` (the same key, other arguments) raises KeyReuseError and has
    no effect."""
    before = _count(effects)
    first()
    try:
        second()
    except BaseException as exc:
        _reuse_refused(exc)
    else:
        _reuse_refused(None)
    _check_once(before, _count(effects), "key reused")


async def assert_rejects_reuse_async(
    first: Callable[[], Awaitable[Any]],
    second: Callable[[], Awaitable[Any]],
    *,
    effects: Effects | None = None,
) -> None:
    """:func:`assert_rejects_reuse` for ``async def``."""
    before = await _acount(effects)
    await first()
    try:
        await second()
    except BaseException as exc:
        _reuse_refused(exc)
    else:
        _reuse_refused(None)
    _check_once(before, await _acount(effects), "key reused")


# -- endpoints -------------------------------------------------------------------------------


def _key() -> str:
    return f"idempo-test-{uuid.uuid4().hex}"


def _with_key(request: Mapping[str, Any], key: str, header: str) -> dict[str, Any]:
    headers = dict(request.get("headers") or {})
    headers[header] = f'"{key}"'  # an RFC 9651 String, as DESIGN's key header grammar asks
    return {**request, "headers": headers}


def _same_response(first: httpx.Response, again: httpx.Response, what: str) -> None:
    if again.headers.get(REPLAYED) != "true":
        raise _fail(
            f"{what}: the repeat was not replayed (status {again.status_code}, no "
            "Idempotent-Replayed: true); is the idempotency middleware mounted on this route?"
        )
    if (again.status_code, again.content) != (first.status_code, first.content):
        raise _fail(
            f"{what}: the replay ({again.status_code}, {again.content[:200]!r}) differs from "
            f"the first response ({first.status_code}, {first.content[:200]!r})"
        )


def _kept(first: httpx.Response) -> None:
    if first.status_code >= 500:
        raise _fail(f"the first response was {first.status_code}; idempo does not keep a 5xx")
    if first.headers.get(REPLAYED) == "true":
        raise _fail("the first request with a fresh key was answered as a replay")


@contextlib.contextmanager
def _client(client: httpx.Client | str) -> Iterator[httpx.Client]:
    if not isinstance(client, str):
        yield client
        return
    import httpx

    with httpx.Client(base_url=client) as owned:
        yield owned


@contextlib.asynccontextmanager
async def _aclient(client: httpx.AsyncClient | str) -> AsyncIterator[httpx.AsyncClient]:
    if not isinstance(client, str):
        yield client
        return
    import httpx

    async with httpx.AsyncClient(base_url=client) as owned:
        yield owned


def assert_endpoint_idempotent(
    client: httpx.Client | str,
    method: str,
    url: str,
    *,
    effects: Effects | None = None,
    key_header: str = "Idempotency-Key",
    **request: Any,
) -> httpx.Response:
    """Send the request twice with one fresh key: the second is a replay (same status, same
    body, ``Idempotent-Replayed: true``), the effect once. ``request``: httpx's arguments
    (``json=``, ``content=``, ``headers=``...). Returns the first response."""
    sent = _with_key(request, _key(), key_header)
    with _client(client) as http:
        before = _count(effects)
        first = http.request(method, url, **sent)
        _kept(first)
        _same_response(first, http.request(method, url, **sent), "sent twice")
        _check_once(before, _count(effects), "sent twice")
    return first


async def assert_endpoint_idempotent_async(
    client: httpx.AsyncClient | str,
    method: str,
    url: str,
    *,
    effects: Effects | None = None,
    key_header: str = "Idempotency-Key",
    **request: Any,
) -> httpx.Response:
    """:func:`assert_endpoint_idempotent` with an ``httpx.AsyncClient``."""
    sent = _with_key(request, _key(), key_header)
    async with _aclient(client) as http:
        before = await _acount(effects)
        first = await http.request(method, url, **sent)
        _kept(first)
        _same_response(first, await http.request(method, url, **sent), "sent twice")
        _check_once(before, await _acount(effects), "sent twice")
    return first


def _settle_responses(responses: list[httpx.Response | BaseException], what: str) -> Any:
    """The original among racing responses: exactly one was not a replay and not a 409."""
    for r in responses:
        if isinstance(r, BaseException):
            raise _fail(f"{what}: a request failed: {r!r}") from r
    answered = [r for r in responses if not isinstance(r, BaseException) and r.status_code != 409]
    originals = [r for r in answered if r.headers.get(REPLAYED) != "true"]
    if len(originals) != 1:
        raise _fail(f"{what}: {len(originals)} requests ran the handler, expected one")
    original = originals[0]
    _kept(original)
    for r in answered:
        if r is not original:
            _same_response(original, r, what)
    return original


def assert_endpoint_idempotent_concurrently(
    client: httpx.Client | str,
    method: str,
    url: str,
    *,
    effects: Effects | None = None,
    workers: int = 8,
    key_header: str = "Idempotency-Key",
    **request: Any,
) -> httpx.Response:
    """Send the request from ``workers`` threads at once with one key: one runs the handler,
    every other is a 409 (in progress) or its replay; the effect once. A last request is then
    replayed. Returns the original response."""
    sent = _with_key(request, _key(), key_header)
    what = f"sent by {workers} threads at once"
    with _client(client) as http:
        before = _count(effects)
        barrier = threading.Barrier(workers)
        responses: list[httpx.Response | BaseException] = []
        lock = threading.Lock()

        def one() -> None:
            barrier.wait()
            try:
                r: httpx.Response | BaseException = http.request(method, url, **sent)
            except BaseException as exc:
                r = exc
            with lock:
                responses.append(r)

        threads = [threading.Thread(target=one) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        original: httpx.Response = _settle_responses(responses, what)
        _same_response(original, http.request(method, url, **sent), what + ", then again")
        _check_once(before, _count(effects), what)
    return original


async def assert_endpoint_idempotent_concurrently_async(
    client: httpx.AsyncClient | str,
    method: str,
    url: str,
    *,
    effects: Effects | None = None,
    workers: int = 8,
    key_header: str = "Idempotency-Key",
    **request: Any,
) -> httpx.Response:
    """:func:`assert_endpoint_idempotent_concurrently` with an ``httpx.AsyncClient``."""
    sent = _with_key(request, _key(), key_header)
    what = f"sent by {workers} tasks at once"
    async with _aclient(client) as http:
        before = await _acount(effects)
        responses = await asyncio.gather(
            *(http.request(method, url, **sent) for _ in range(workers)), return_exceptions=True
        )
        original: httpx.Response = _settle_responses(list(responses), what)
        _same_response(original, await http.request(method, url, **sent), what + ", then again")
        _check_once(before, await _acount(effects), what)
    return original


def _refused(first: httpx.Response, reused: httpx.Response) -> None:
    _kept(first)
    if reused.status_code != 422:
        raise _fail(
            f"the same key with another request got {reused.status_code}, expected 422 "
            f"(key reused): {reused.content[:200]!r}"
        )


def assert_endpoint_rejects_reuse(
    client: httpx.Client | str,
    method: str,
    url: str,
    *,
    changed: Mapping[str, Any],
    effects: Effects | None = None,
    key_header: str = "Idempotency-Key",
    **request: Any,
) -> httpx.Response:
    """Send the request, then the same key with ``changed`` applied to the request (e.g.
    ``changed={"json": {...}}``): 422, and the effect once. Returns the 422."""
    key = _key()
    with _client(client) as http:
        before = _count(effects)
        first = http.request(method, url, **_with_key(request, key, key_header))
        reused = http.request(method, url, **_with_key({**request, **changed}, key, key_header))
        _refused(first, reused)
        _check_once(before, _count(effects), "key reused")
    return reused


async def assert_endpoint_rejects_reuse_async(
    client: httpx.AsyncClient | str,
    method: str,
    url: str,
    *,
    changed: Mapping[str, Any],
    effects: Effects | None = None,
    key_header: str = "Idempotency-Key",
    **request: Any,
) -> httpx.Response:
    """:func:`assert_endpoint_rejects_reuse` with an ``httpx.AsyncClient``."""
    key = _key()
    async with _aclient(client) as http:
        before = await _acount(effects)
        first = await http.request(method, url, **_with_key(request, key, key_header))
        reused = await http.request(
            method, url, **_with_key({**request, **changed}, key, key_header)
        )
        _refused(first, reused)
        _check_once(before, await _acount(effects), "key reused")
    return reused

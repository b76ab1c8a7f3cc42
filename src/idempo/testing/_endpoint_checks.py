"""Checks that an HTTP endpoint is idempotent, through an httpx client or a base URL: sent
twice, sent concurrently, and sent again with another body. Each uses a fresh key."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from idempo.testing._checks import REPLAYED, Effects, acount, check_once, count, fail

if TYPE_CHECKING:
    import httpx

__all__ = [
    "assert_endpoint_idempotent",
    "assert_endpoint_idempotent_async",
    "assert_endpoint_idempotent_concurrently",
    "assert_endpoint_idempotent_concurrently_async",
    "assert_endpoint_rejects_reuse",
    "assert_endpoint_rejects_reuse_async",
]


def _key() -> str:
    return f"idempo-test-{uuid.uuid4().hex}"


def _with_key(request: Mapping[str, Any], key: str, header: str) -> dict[str, Any]:
    headers = dict(request.get("headers") or {})
    headers[header] = f'"{key}"'  # an RFC 9651 String, as DESIGN's key header grammar asks
    return {**request, "headers": headers}


def _same_response(first: httpx.Response, again: httpx.Response, what: str) -> None:
    if again.headers.get(REPLAYED) != "true":
        raise fail(
            f"{what}: the repeat was not replayed (status {again.status_code}, no "
            "Idempotent-Replayed: true); is the idempotency middleware mounted on this route?"
        )
    if (again.status_code, again.content) != (first.status_code, first.content):
        raise fail(
            f"{what}: the replay ({again.status_code}, {again.content[:200]!r}) differs from "
            f"the first response ({first.status_code}, {first.content[:200]!r})"
        )


def _kept(first: httpx.Response) -> None:
    if first.status_code >= 500:
        raise fail(f"the first response was {first.status_code}; idempo does not keep a 5xx")
    if first.headers.get(REPLAYED) == "true":
        raise fail("the first request with a fresh key was answered as a replay")


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
        before = count(effects)
        first = http.request(method, url, **sent)
        _kept(first)
        _same_response(first, http.request(method, url, **sent), "sent twice")
        check_once(before, count(effects), "sent twice")
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
        before = await acount(effects)
        first = await http.request(method, url, **sent)
        _kept(first)
        _same_response(first, await http.request(method, url, **sent), "sent twice")
        check_once(before, await acount(effects), "sent twice")
    return first


def _settle_responses(responses: list[httpx.Response | BaseException], what: str) -> Any:
    """The original among racing responses: exactly one was not a replay and not a 409."""
    for r in responses:
        if isinstance(r, BaseException):
            raise fail(f"{what}: a request failed: {r!r}") from r
    answered = [r for r in responses if not isinstance(r, BaseException) and r.status_code != 409]
    originals = [r for r in answered if r.headers.get(REPLAYED) != "true"]
    if len(originals) != 1:
        raise fail(f"{what}: {len(originals)} requests ran the handler, expected one")
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
        before = count(effects)
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
        check_once(before, count(effects), what)
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
        before = await acount(effects)
        responses = await asyncio.gather(
            *(http.request(method, url, **sent) for _ in range(workers)), return_exceptions=True
        )
        original: httpx.Response = _settle_responses(list(responses), what)
        _same_response(original, await http.request(method, url, **sent), what + ", then again")
        check_once(before, await acount(effects), what)
    return original


def _refused(first: httpx.Response, reused: httpx.Response) -> None:
    _kept(first)
    if reused.status_code != 422:
        raise fail(
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
        before = count(effects)
        first = http.request(method, url, **_with_key(request, key, key_header))
        reused = http.request(method, url, **_with_key({**request, **changed}, key, key_header))
        _refused(first, reused)
        check_once(before, count(effects), "key reused")
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
        before = await acount(effects)
        first = await http.request(method, url, **_with_key(request, key, key_header))
        reused = await http.request(
            method, url, **_with_key({**request, **changed}, key, key_header)
        )
        _refused(first, reused)
        check_once(before, await acount(effects), "key reused")
    return reused

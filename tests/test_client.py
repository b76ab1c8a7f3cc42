"""idempo.client: one key per logical request, safe retries, and what happened on the response.

Behaviour tests use ``httpx.MockTransport``; the end-to-end tests run a tiny Starlette app under
uvicorn on 127.0.0.1. Backoff is made fast through the clients' own wait parameters (and, in one
test, stamina's testing mode), so waits are recorded rather than slept through where possible.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import stamina
import uvicorn
from stamina.instrumentation import RetryDetails, get_on_retry_hooks, set_on_retry_hooks
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from idempo.client import (
    AsyncClient,
    Client,
    encode_key,
    retry_info,
    was_replayed,
)
from idempo.client._policy import _parse_retry_after
from idempo.core.http import parse_key_header
from idempo.errors import InvalidKeyError

KEY = "Idempotency-Key"
Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A MockTransport handler that answers from a script and records every request."""

    def __init__(self, *answers: int | Exception | httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.bodies.append(request.content)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(answer, json={"n": len(self.requests)})

    @property
    def keys(self) -> list[str | None]:
        return [r.headers.get(KEY) for r in self.requests]


def client(handler: Handler, **kwargs: Any) -> Client:
    """A Client on a MockTransport with fast, jitter-free backoff."""
    options: dict[str, Any] = {"wait_initial": 0.001, "wait_max": 0.05, "wait_jitter": 0.0}
    options.update(kwargs)
    return Client(base_url="http://test", transport=httpx.MockTransport(handler), **options)


def async_client(handler: Handler, **kwargs: Any) -> AsyncClient:
    """An AsyncClient on a MockTransport with fast, jitter-free backoff."""
    options: dict[str, Any] = {"wait_initial": 0.001, "wait_max": 0.05, "wait_jitter": 0.0}
    options.update(kwargs)
    return AsyncClient(base_url="http://test", transport=httpx.MockTransport(handler), **options)


@pytest.fixture
def waits() -> Iterator[list[float]]:
    """The backoffs stamina schedules, recorded through its retry hooks (a recorded clock)."""
    recorded: list[float] = []

    def hook(details: RetryDetails) -> None:
        recorded.append(details.wait_for)

    old = get_on_retry_hooks()
    set_on_retry_hooks([hook])
    yield recorded
    set_on_retry_hooks(old)


# --- keys --------------------------------------------------------------------------------------


def test_post_gets_one_key_reused_across_retries() -> None:
    """A POST without a key gets a uuid4 key, sent quoted, the same on every retry."""
    rec = Recorder(503, 503, 201)
    with client(rec) as c:
        response = c.post("/charges", json={"amount": 10})
    assert response.status_code == 201
    assert len(rec.requests) == 3
    assert len(set(rec.keys)) == 1
    wire = rec.keys[0]
    assert wire is not None
    assert wire.startswith('"')
    assert wire.endswith('"')
    key = parse_key_header([wire])
    assert len(key or "") == 36
    assert retry_info(response) == {"key": key, "attempts": 3, "retryable": True}
    assert response.extensions["idempo"]["attempts"] == 3


def test_each_logical_request_gets_its_own_key() -> None:
    """Two calls are two operations: two keys (a key is never shared between them)."""
    rec = Recorder(201)
    with client(rec) as c:
        c.post("/a")
        c.patch("/a")
    assert rec.keys[0] != rec.keys[1]
    assert all(k is not None for k in rec.keys)


def test_caller_key_is_reused_and_not_regenerated() -> None:
    """``idempotency_key=`` is sent (quoted) on every attempt; no key is generated."""
    rec = Recorder(503, 429, 200)
    with client(rec) as c:
        response = c.post("/charges", idempotency_key="order-42", json={"a": 1})
    assert rec.keys == ['"order-42"'] * 3
    assert retry_info(response) == {"key": "order-42", "attempts": 3, "retryable": True}


def test_explicit_header_is_reused_verbatim() -> None:
    """An explicit header is sent as given on every attempt; its key is reported unquoted."""
    rec = Recorder(503, 200)
    with client(rec) as c:
        bare = c.post("/a", headers={KEY: "raw-1"})
        quoted = c.post("/a", headers={KEY: '"q-1"'})
    assert rec.keys == ["raw-1", "raw-1", '"q-1"']
    assert retry_info(bare) == {"key": "raw-1", "attempts": 2, "retryable": True}
    assert retry_info(quoted) == {"key": "q-1", "attempts": 1, "retryable": True}


def test_key_argument_that_contradicts_header_is_refused() -> None:
    """Two different keys for one request is a mistake: ValueError, nothing sent."""
    rec = Recorder(200)
    with client(rec) as c, pytest.raises(ValueError, match="contradicts"):
        c.post("/a", idempotency_key="k1", headers={KEY: "k2"})
    assert rec.requests == []


def test_same_request_object_sent_twice_keeps_its_key() -> None:
    """Sending one httpx.Request again (a manual retry) reuses the key it was given."""
    rec = Recorder(200)
    with client(rec) as c:
        request = c.build_request("POST", "/a", json={})
        c.send(request)
        c.send(request)
    assert rec.keys[0] == rec.keys[1] is not None


@pytest.mark.parametrize(
    ("key", "wire"),
    [
        ("abc", '"abc"'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ('\\"', r'"\\\""'),
        (" spaced ", '" spaced "'),
    ],
)
def test_key_is_a_structured_field_string(key: str, wire: str) -> None:
    """Keys are RFC 8941 strings: quoted, with backslash and double quote escaped."""
    assert encode_key(key) == wire
    assert parse_key_header([wire]) == key
    rec = Recorder(200)
    with client(rec) as c:
        c.post("/a", idempotency_key=key)
    assert rec.keys == [wire]


def test_quote_key_false_sends_bare_keys() -> None:
    """``quote_key=False`` sends the key bare, as Stripe documents it."""
    rec = Recorder(200)
    with client(rec, quote_key=False) as c:
        c.post("/a", idempotency_key="k-1")
    assert rec.keys == ["k-1"]


@pytest.mark.parametrize("bad", ["", "é", "tab\there", "x" * 256])
def test_malformed_key_is_refused_before_sending(bad: str) -> None:
    """A key that is not 1-255 printable ASCII characters raises InvalidKeyError."""
    rec = Recorder(200)
    with client(rec) as c, pytest.raises(InvalidKeyError):
        c.post("/a", idempotency_key=bad)
    assert rec.requests == []


def test_key_header_and_methods_are_configurable() -> None:
    """Another header name; PUT gets an automatic key when listed; DELETE does not."""
    rec = Recorder(200)
    with client(rec, key_header="X-Request-Key", key_methods=["put", "post"]) as c:
        c.put("/a")
        c.delete("/a")
        c.patch("/a")
    assert rec.requests[0].headers.get("X-Request-Key") is not None
    assert rec.requests[1].headers.get("X-Request-Key") is None
    assert rec.requests[2].headers.get("X-Request-Key") is None


def test_client_wide_key_header_is_refused() -> None:
    """A key in the client's default headers would reuse one key for everything."""
    with pytest.raises(ValueError, match="same key"):
        Client(headers={KEY: "fixed"})


def test_get_carries_no_key_unless_asked() -> None:
    """Idempotent methods get no automatic key, but take one when given."""
    rec = Recorder(200)
    with client(rec) as c:
        c.get("/a")
        c.get("/a", idempotency_key="g")
    assert rec.keys == [None, '"g"']


# --- what is retried -----------------------------------------------------------------------


def in_flight() -> httpx.Response:
    return httpx.Response(409, headers={"Retry-After": "0"}, json={"title": "in progress"})


def test_409_in_flight_is_retried_a_final_409_is_not() -> None:
    """A 409 with Retry-After (the request is still in flight) is retried with the same key; a
    409 without it (e.g. "the first response was not kept") is final: one attempt."""
    rec = Recorder(in_flight(), in_flight(), 201)
    with client(rec) as c:
        assert c.post("/a").status_code == 201
    assert len(rec.requests) == 3
    assert len(set(rec.keys)) == 1
    final = Recorder(409, 201)
    with client(final) as c:
        assert c.post("/a").status_code == 409
    assert len(final.requests) == 1


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    """429, 503 and other transient statuses are retried with the same key."""
    rec = Recorder(status, status, 201)
    with client(rec) as c:
        response = c.post("/a")
    assert response.status_code == 201
    assert len(rec.requests) == 3
    assert len(set(rec.keys)) == 1


@pytest.mark.parametrize("status", [200, 201, 400, 401, 404, 422, 501, 505])
def test_final_statuses_are_not_retried(status: int) -> None:
    """Successes, client errors (422: key reused with another body) and 501/505: one attempt."""
    rec = Recorder(status, 200)
    with client(rec) as c:
        response = c.post("/a")
    assert response.status_code == status
    assert len(rec.requests) == 1


def test_409_without_a_key_is_not_retried() -> None:
    """A 409 to a request without a key is an ordinary conflict: a retry would repeat it."""
    rec = Recorder(409, 200)
    with client(rec) as c:
        response = c.put("/a")
    assert response.status_code == 409
    assert len(rec.requests) == 1


def test_post_without_key_is_sent_once() -> None:
    """With ``auto_key=False`` a POST without a key is never retried, whatever happens."""
    rec = Recorder(503, 200)
    with client(rec, auto_key=False) as c:
        response = c.post("/a", json={"a": 1})
        assert response.status_code == 503
        assert retry_info(response) == {"key": None, "attempts": 1, "retryable": False}
        rec.answers = [httpx.ConnectError("refused")]
        with pytest.raises(httpx.ConnectError):
            c.post("/a")
    assert len(rec.requests) == 2
    assert rec.keys == [None, None]


def test_post_with_explicit_key_is_retried_even_without_auto_keys() -> None:
    """``auto_key=False`` only stops generating keys; a given key still makes retries safe."""
    rec = Recorder(503, 200)
    with client(rec, auto_key=False) as c:
        response = c.post("/a", idempotency_key="mine")
    assert response.status_code == 200
    assert rec.keys == ['"mine"', '"mine"']


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "OPTIONS"])
def test_idempotent_methods_are_retried_without_a_key(method: str) -> None:
    """GET, HEAD, PUT, DELETE and OPTIONS are idempotent by definition: retried, no key."""
    rec = Recorder(503, 502, 200)
    with client(rec) as c:
        response = c.request(method, "/a")
    assert response.status_code == 200
    assert len(rec.requests) == 3
    assert rec.keys == [None, None, None]
    assert retry_info(response) == {"key": None, "attempts": 3, "retryable": True}


def test_attempts_bound_returns_last_response() -> None:
    """After ``attempts`` sends the last response is returned, not raised."""
    rec = Recorder(503)
    with client(rec, attempts=3) as c:
        response = c.post("/a")
    assert response.status_code == 503
    assert len(rec.requests) == 3
    assert retry_info(response) == {
        "key": parse_key_header([rec.keys[0] or ""]),
        "attempts": 3,
        "retryable": True,
    }
    with pytest.raises(httpx.HTTPStatusError):
        response.raise_for_status()


def test_total_time_bound() -> None:
    """``retry_timeout`` bounds the whole retry loop even with unlimited attempts."""
    rec = Recorder(503)
    start = time.monotonic()
    with client(rec, attempts=None, retry_timeout=0.3, wait_initial=0.02, wait_max=0.02) as c:
        response = c.post("/a")
    elapsed = time.monotonic() - start
    assert response.status_code == 503
    assert elapsed >= 0.3
    assert elapsed < 3.0  # generous: the bound is 0.3 s plus one wait and one attempt
    assert 2 <= len(rec.requests) < 100


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("connect"),
        httpx.ReadTimeout("read"),
        httpx.WriteTimeout("write"),
        httpx.PoolTimeout("pool"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("peer closed connection"),
    ],
)
def test_transport_errors_are_retried(error: Exception) -> None:
    """Connection errors and timeouts are retried with the same key."""
    rec = Recorder(error, error, 201)
    with client(rec) as c:
        response = c.post("/a")
    assert response.status_code == 201
    assert len(rec.requests) == 3
    assert len(set(rec.keys)) == 1


def test_transport_errors_exhausted_raise_the_last_one() -> None:
    """When every attempt fails in transport, the last httpx error is raised, with a note."""
    rec = Recorder(
        httpx.ConnectError("first"), httpx.ReadTimeout("second"), httpx.ConnectError("last")
    )
    with client(rec, attempts=3) as c, pytest.raises(httpx.ConnectError, match="last") as info:
        c.post("/a")
    assert len(rec.requests) == 3
    assert any("gave up after 3 attempt(s)" in note for note in info.value.__notes__)


def test_non_transient_transport_error_is_not_retried() -> None:
    """Errors no retry can cure (a malformed request) are raised at once."""
    rec = Recorder(httpx.LocalProtocolError("bad header"), 200)
    with client(rec) as c, pytest.raises(httpx.LocalProtocolError):
        c.post("/a")
    assert len(rec.requests) == 1


def test_stamina_deactivated_sends_once() -> None:
    """``stamina.set_active(False)`` turns retries off globally: one attempt."""
    rec = Recorder(503, 200)
    stamina.set_active(False)
    try:
        with client(rec) as c:
            response = c.post("/a")
    finally:
        stamina.set_active(True)
    assert response.status_code == 503
    assert len(rec.requests) == 1


# --- backoff and Retry-After ---------------------------------------------------------------


def test_backoff_is_exponential(waits: list[float]) -> None:
    """Without Retry-After, stamina's exponential backoff applies (jitter off here)."""
    rec = Recorder(503, 503, 503, 200)
    with client(rec, wait_initial=0.01, wait_max=1.0) as c:
        c.post("/a")
    assert waits == pytest.approx([0.01, 0.02, 0.04])


def test_retry_after_seconds_is_honoured(waits: list[float]) -> None:
    """``Retry-After: 0.2`` on a 503 makes the client wait 0.2 s before the retry."""
    rec = Recorder(httpx.Response(503, headers={"Retry-After": "0.2"}), 200)
    start = time.monotonic()
    with client(rec, wait_max=5.0) as c:
        response = c.post("/a")
    elapsed = time.monotonic() - start
    assert response.status_code == 200
    assert waits == pytest.approx([0.2])
    assert 0.15 <= elapsed < 5.0


@pytest.mark.parametrize("status", [409, 429])
def test_retry_after_on_409_and_429(status: int, waits: list[float]) -> None:
    """The in-flight 409 and the throttling 429 honour Retry-After too."""
    rec = Recorder(httpx.Response(status, headers={"Retry-After": "0.05"}), 201)
    with client(rec, wait_max=5.0) as c:
        response = c.post("/a")
    assert response.status_code == 201
    assert waits == pytest.approx([0.05])


def test_retry_after_never_shortens_our_backoff(waits: list[float]) -> None:
    """``Retry-After: 0`` does not make the client hammer: it waits its own backoff."""
    rec = Recorder(httpx.Response(503, headers={"Retry-After": "0"}), 200)
    with client(rec, wait_initial=0.03, wait_max=1.0) as c:
        c.post("/a")
    assert waits == pytest.approx([0.03])


def test_retry_after_is_capped_at_wait_max(waits: list[float]) -> None:
    """A Retry-After of an hour is capped at ``wait_max``."""
    rec = Recorder(httpx.Response(503, headers={"Retry-After": "3600"}), 200)
    with client(rec, wait_max=0.05) as c:
        response = c.post("/a")
    assert response.status_code == 200
    assert waits == pytest.approx([0.05])


def test_retry_after_beyond_budget_stops_at_once(waits: list[float]) -> None:
    """If the server asks for a wait past ``retry_timeout``, the response is returned now."""
    rec = Recorder(httpx.Response(503, headers={"Retry-After": "60"}), 200)
    start = time.monotonic()
    with client(rec, wait_max=120.0, retry_timeout=1.0) as c:
        response = c.post("/a")
    assert response.status_code == 503
    assert len(rec.requests) == 1
    assert waits == []
    assert time.monotonic() - start < 1.0


def test_retry_after_http_date_is_honoured(waits: list[float]) -> None:
    """A Retry-After HTTP-date in the future is waited for (capped at ``wait_max``)."""
    future = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    rec = Recorder(httpx.Response(503, headers={"Retry-After": future}), 200)
    with client(rec, wait_max=0.1) as c:
        c.post("/a")
    assert waits == pytest.approx([0.1])


def test_parse_retry_after() -> None:
    """Retry-After: delay-seconds, HTTP-dates (future and past), and garbage."""
    now = datetime.now(UTC)
    in_two_minutes = format_datetime(now + timedelta(seconds=120), usegmt=True)
    assert _parse_retry_after(in_two_minutes) == pytest.approx(120, abs=3)
    assert _parse_retry_after(format_datetime(now - timedelta(hours=1), usegmt=True)) == 0
    assert _parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0
    assert _parse_retry_after("7") == 7
    assert _parse_retry_after(" 0.5 ") == 0.5
    assert _parse_retry_after("-3") == 0
    assert _parse_retry_after("nan") is None
    assert _parse_retry_after("soon") is None
    assert _parse_retry_after(None) is None


def _http_date(offset: timedelta) -> str:
    return format_datetime(datetime.now(UTC) + offset, usegmt=True)


@pytest.mark.parametrize(
    ("retry_after", "expected_waits"),
    [
        ("0.04", [0.04]),  # fractional delay-seconds
        (" 0.04 ", [0.04]),  # surrounding whitespace
        ("-3", [0.001]),  # negative means now: our own backoff
        (_http_date(-timedelta(hours=1)), [0.001]),  # a past date means now
        ("Wed, 21 Oct 2015 07:28:00 GMT", [0.001]),
        (_http_date(timedelta(seconds=120)), [0.2]),  # far future: capped at wait_max
        ("nan", None),  # unparseable: no Retry-After, so the 409 is final
        ("soon", None),
    ],
)
def test_retry_after_values_on_an_in_flight_409(
    retry_after: str, expected_waits: list[float] | None, waits: list[float]
) -> None:
    """Through the client: a 409 is retried only with a usable Retry-After, waiting what it
    says (never less than our backoff, never more than ``wait_max``)."""
    rec = Recorder(httpx.Response(409, headers={"Retry-After": retry_after}), 201)
    with client(rec, wait_initial=0.001, wait_max=0.2) as c:
        response = c.post("/a")
    if expected_waits is None:
        assert response.status_code == 409
        assert len(rec.requests) == 1
        assert waits == []
    else:
        assert response.status_code == 201
        assert len(rec.requests) == 2
        assert waits == pytest.approx(expected_waits)


def test_stamina_testing_mode() -> None:
    """Under ``stamina.set_testing`` attempts are fixed and no backoff (not even Retry-After)
    is slept: how applications test code that uses these clients."""
    rec = Recorder(httpx.Response(503, headers={"Retry-After": "5"}))
    start = time.monotonic()
    with stamina.set_testing(True, attempts=2), client(rec, wait_max=10.0) as c:
        response = c.post("/a")
    assert response.status_code == 503
    assert len(rec.requests) == 2
    assert time.monotonic() - start < 2.0


# --- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"json": {"amount": 10, "currency": "eur"}},
        {"content": b"\x00raw bytes"},
        {"content": "text"},
        {"data": {"a": "1", "b": "2"}},
        {"files": {"upload": ("a.txt", b"file contents", "text/plain")}},
    ],
)
def test_bodies_are_replayed_identically(body: dict[str, Any]) -> None:
    """content, json, data and files bodies are sent byte for byte the same on every retry."""
    rec = Recorder(503, 503, 200)
    with client(rec) as c:
        response = c.post("/a", **body)
    assert response.status_code == 200
    assert len(rec.bodies) == 3
    assert rec.bodies[0]
    assert rec.bodies[0] == rec.bodies[1] == rec.bodies[2]


def test_streaming_body_is_sent_once() -> None:
    """A generator body cannot be re-sent: the request goes out once (still with a key)."""
    rec = Recorder(503, 200)

    def chunks() -> Iterator[bytes]:
        yield b"part one, "
        yield b"part two"

    with client(rec) as c:
        response = c.post("/a", content=chunks())
    assert response.status_code == 503
    assert len(rec.requests) == 1
    assert rec.bodies == [b"part one, part two"]
    info = retry_info(response)
    assert info is not None
    assert info["retryable"] is False
    assert info["key"] is not None


def test_streamed_responses_are_retried_and_closed() -> None:
    """``client.stream`` retries too; each abandoned streamed response is closed."""
    closed: list[int] = []

    class Body(httpx.SyncByteStream):
        def __init__(self, n: int) -> None:
            self.n = n

        def __iter__(self) -> Iterator[bytes]:
            yield b"body %d" % self.n

        def close(self) -> None:
            closed.append(self.n)

    rec = Recorder(
        httpx.Response(503, stream=Body(1)),
        httpx.Response(503, stream=Body(2)),
        httpx.Response(200, stream=Body(3)),
    )
    with client(rec) as c:
        with c.stream("POST", "/a", idempotency_key="s") as response:
            assert closed == [1, 2]
            assert response.read() == b"body 3"
        assert response.is_closed
    assert rec.keys == ['"s"'] * 3


# --- what the response says ----------------------------------------------------------------


def test_was_replayed() -> None:
    """``was_replayed`` reads ``Idempotent-Replayed: true`` (and the SF boolean ``?1``)."""
    assert was_replayed(httpx.Response(200, headers={"Idempotent-Replayed": "true"}))
    assert was_replayed(httpx.Response(200, headers={"Idempotent-Replayed": "?1"}))
    assert not was_replayed(httpx.Response(200, headers={"Idempotent-Replayed": "false"}))
    assert not was_replayed(httpx.Response(200))
    assert retry_info(httpx.Response(200)) is None


def test_importing_without_httpx_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without httpx, importing idempo.client says which extra to install."""
    monkeypatch.setitem(sys.modules, "httpx", None)
    for module in (
        "idempo.client",
        "idempo.client._policy",
        "idempo.client._async.client",
        "idempo.client._sync.client",
    ):
        monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ImportError, match=r"pip install 'idempo\[client\]'"):
        importlib.import_module("idempo.client")


def test_client_is_an_httpx_client() -> None:
    """The clients are httpx clients: usable wherever one is expected."""
    with Client() as c:
        assert isinstance(c, httpx.Client)


# --- async ---------------------------------------------------------------------------------


async def test_async_same_key_across_retries() -> None:
    """AsyncClient: one key for all attempts of a POST; info on the response."""
    rec = Recorder(503, httpx.ReadTimeout("slow"), in_flight(), 201)
    async with async_client(rec) as c:
        assert isinstance(c, httpx.AsyncClient)
        response = await c.post("/a", json={"x": 1})
    assert response.status_code == 201
    assert len(rec.requests) == 4
    assert len(set(rec.keys)) == 1
    info = retry_info(response)
    assert info is not None
    assert info["attempts"] == 4


async def test_async_caller_key_and_quoting() -> None:
    """AsyncClient sends ``idempotency_key=`` as a Structured Field string."""
    rec = Recorder(200)
    async with async_client(rec) as c:
        await c.patch("/a", idempotency_key='a"b\\c')
    assert rec.keys == [r'"a\"b\\c"']


async def test_async_retry_after(waits: list[float]) -> None:
    """AsyncClient honours Retry-After, sleeping without blocking the loop."""
    rec = Recorder(httpx.Response(429, headers={"Retry-After": "0.1"}), 200)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    start = time.monotonic()
    async with async_client(rec, wait_max=5.0) as c:
        response = await c.post("/a")
    elapsed = time.monotonic() - start
    task.cancel()
    assert response.status_code == 200
    assert waits == pytest.approx([0.1])
    assert elapsed >= 0.08
    assert ticks >= 2  # the event loop kept running during the backoff


async def test_async_post_without_key_sent_once() -> None:
    """AsyncClient with ``auto_key=False``: a POST without a key is sent once."""
    rec = Recorder(503, 200)
    async with async_client(rec, auto_key=False) as c:
        response = await c.post("/a")
    assert response.status_code == 503
    assert len(rec.requests) == 1


async def test_async_get_retried_and_transport_errors_raised() -> None:
    """AsyncClient retries a GET, then raises the last transport error."""
    rec = Recorder(httpx.ConnectError("one"), httpx.ConnectError("two"))
    async with async_client(rec, attempts=2) as c:
        with pytest.raises(httpx.ConnectError, match="two"):
            await c.get("/a")
    assert len(rec.requests) == 2
    assert rec.keys == [None, None]


async def test_async_streaming_body_is_sent_once() -> None:
    """AsyncClient: an async generator body goes out once."""
    rec = Recorder(503, 200)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"

    async with async_client(rec) as c:
        response = await c.post("/a", content=chunks())
    assert response.status_code == 503
    assert len(rec.requests) == 1


async def test_async_stream_retried() -> None:
    """AsyncClient.stream retries and yields the final response."""
    rec = Recorder(503, 200)
    async with async_client(rec) as c, c.stream("POST", "/a", idempotency_key="s") as response:
        await response.aread()
        assert response.status_code == 200
    assert rec.keys == ['"s"', '"s"']


# --- end to end: a real server on 127.0.0.1 --------------------------------------------------


class CutResponse(Response):
    """A response that promises 100 bytes, sends 5, and hangs up: a reply lost in transit."""

    def __init__(self) -> None:
        super().__init__(status_code=201)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the start and part of the body, then return: uvicorn closes the connection."""
        headers = [(b"content-length", b"100"), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"cha', "more_body": True})


class Charges:
    """A toy payment service that dedupes by key: the first two attempts of each key get 503;
    the third executes (one effect) and is stored; later attempts replay it. With
    ``?lose_reply=1`` the executing attempt's reply is cut off mid-body (a lost reply)."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.effects: Counter[str] = Counter()
        self.stored: dict[str, dict[str, Any]] = {}

    async def handle(self, request: Request) -> Response:
        """POST /charges."""
        raw = request.headers.get(KEY)
        if raw is None:
            return JSONResponse({"error": "Idempotency-Key required"}, status_code=400)
        key = parse_key_header([raw])
        assert key is not None
        body = await request.json()
        self.attempts[key] += 1
        if key in self.stored:
            replayed = {"Idempotent-Replayed": "true"}
            return JSONResponse(self.stored[key], status_code=201, headers=replayed)
        if self.attempts[key] <= 2:
            return JSONResponse({"error": "busy"}, status_code=503, headers={"Retry-After": "0"})
        self.effects[key] += 1
        self.stored[key] = {"charge": sum(self.effects.values()), "amount": body["amount"]}
        if request.query_params.get("lose_reply"):
            return CutResponse()
        return JSONResponse(self.stored[key], status_code=201)


@pytest.fixture
def server() -> Iterator[tuple[str, Charges]]:
    """The toy service under uvicorn on 127.0.0.1, on an ephemeral port, in a thread."""
    charges = Charges()
    app = Starlette(routes=[Route("/charges", charges.handle, methods=["POST"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", ws="none", log_level="critical")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert thread.is_alive(), "uvicorn failed to start"
        assert time.monotonic() < deadline, "uvicorn did not start in 10 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", charges
    finally:
        srv.should_exit = True
        thread.join(10)
        sock.close()


def test_end_to_end_one_effect_per_logical_request(server: tuple[str, Charges]) -> None:
    """Against a real server that fails each key twice with 503, every logical request gets
    exactly one effect; a reply lost after the effect is recovered by a replay."""
    url, charges = server
    with Client(base_url=url, wait_initial=0.01, wait_max=0.1, wait_jitter=0.0) as c:
        responses = [c.post("/charges", json={"amount": n}) for n in range(5)]
        lost = c.post("/charges", params={"lose_reply": "1"}, json={"amount": 99})
    for n, response in enumerate(responses):
        assert response.status_code == 201
        assert response.json()["amount"] == n
        assert retry_info(response) == {
            "key": response.extensions["idempo"]["key"],
            "attempts": 3,
            "retryable": True,
        }
        assert not was_replayed(response)
    assert lost.status_code == 201
    assert lost.json()["amount"] == 99
    assert was_replayed(lost)
    lost_info = retry_info(lost)
    assert lost_info is not None
    assert lost_info["attempts"] == 4  # 503, 503, executed but reply cut, replay
    keys = [r.extensions["idempo"]["key"] for r in [*responses, lost]]
    assert len(set(keys)) == 6
    assert charges.effects == dict.fromkeys(keys, 1)


async def test_end_to_end_async(server: tuple[str, Charges]) -> None:
    """The same against the real server with AsyncClient, requests running concurrently."""
    url, charges = server
    async with AsyncClient(base_url=url, wait_initial=0.01, wait_max=0.1, wait_jitter=0.0) as c:
        responses = await asyncio.gather(
            *(c.post("/charges", json={"amount": n}) for n in range(5)),
            c.post("/charges", params={"lose_reply": "1"}, json={"amount": 7}),
        )
    assert [r.status_code for r in responses] == [201] * 6
    assert was_replayed(responses[-1])
    keys = [r.extensions["idempo"]["key"] for r in responses]
    assert charges.effects == dict.fromkeys(keys, 1)
    assert sum(charges.attempts.values()) == 5 * 3 + 4


def test_end_to_end_without_key_sends_once(server: tuple[str, Charges]) -> None:
    """With keys off, the server's 400 comes back after a single attempt."""
    url, charges = server
    with Client(base_url=url, auto_key=False) as c:
        response = c.post("/charges", json={"amount": 1})
    assert response.status_code == 400
    assert charges.effects == {}


@pytest.mark.parametrize("key", ['"abc"', "a,b", " abc", 'a"b'])
def test_a_bare_key_that_would_read_as_another_is_refused(key: str) -> None:
    """quote_key=False sends keys bare: one that the server would read as another key (a
    leading quote makes ``"abc"`` collide with ``abc``; a comma is two values; spaces are
    stripped) is refused before anything is sent, never silently changed."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201)

    with (
        Client(transport=httpx.MockTransport(handler), quote_key=False) as c,
        pytest.raises(InvalidKeyError),
    ):
        c.post("http://t/charges", idempotency_key=key)
    assert sent == []


def test_a_plain_bare_key_reads_back_as_itself() -> None:
    """A bare key without quotes, commas or edge spaces goes out as it is, and the server's
    parser reads it back unchanged."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201)

    with Client(transport=httpx.MockTransport(handler), quote_key=False) as c:
        c.post("http://t/charges", idempotency_key="order-1:a b")
    assert sent[0].headers["idempotency-key"] == "order-1:a b"
    assert parse_key_header([sent[0].headers["idempotency-key"]]) == "order-1:a b"

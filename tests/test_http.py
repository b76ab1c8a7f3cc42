"""The HTTP middleware, one suite for every adapter: each scenario runs over real sockets
against ASGI (Starlette on uvicorn), WSGI (Flask on waitress) and Django (on waitress), on
every store, so that the adapters cannot drift apart: every row of DESIGN section 6.

What only one framework has (raw ASGI messages, PEP 3333 corners, Django settings) is in
``test_http_asgi.py``, ``test_http_wsgi.py`` and ``test_http_django.py``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from idempo.core.http import fingerprint_request
from tests.http_rig import ADAPTERS, Http, StoreSpec, serve_http

STORES = [
    pytest.param("memory", marks=pytest.mark.memory),
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]

SERVERS = [
    pytest.param((adapter, store.values[0]), id=f"{adapter}-{store.values[0]}", marks=store.marks)
    for adapter in ADAPTERS
    for store in STORES
]

# The configuration every shared server runs with.
OPTIONS: dict[str, Any] = {
    "max_response_bytes": 50_000,
    "lease": 5,
    "routes": [{"path": "/open/*", "enabled": False}, {"path": "/strict/*", "required": True}],
}

STORE_DOWN = ("redis://127.0.0.1:1/0", {"socket_connect_timeout": 0.5})


@pytest.fixture(scope="module", params=SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Http]:
    """One server per adapter and store, shared by the module's tests (keys never collide:
    each test has its own key prefix)."""
    adapter, kind = request.param
    store = StoreSpec.of(kind, tmp_path_factory.mktemp(f"{adapter}-{kind}"))
    try:
        with serve_http(adapter, store, shared=True, **OPTIONS) as http:
            yield http
    finally:
        store.cleanup()


@pytest.fixture
def http(server: Http) -> Iterator[Http]:
    server.fresh()
    try:
        yield server
    finally:
        server.effects.release.set()


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.contextmanager
def served(adapter: str, store: StoreSpec, **options: Any) -> Iterator[Http]:
    """A server of its own, for a scenario that needs another configuration."""
    try:
        with serve_http(adapter, store, **options) as http:
            http.fresh()
            yield http
    finally:
        store.cleanup()


def store_down() -> StoreSpec:
    url, options = STORE_DOWN
    return StoreSpec("down", url, dict(options))


# -- the rows of DESIGN section 6 --------------------------------------------------------------


def test_new_key_executes_and_retry_replays(http: Http) -> None:
    """A new key runs the handler; the retry replays status, body and safe headers, marked,
    and never the first response's cookie."""
    with http.client() as c:
        first = c.post("/charges", json={"amount": 10}, headers=http.key("a1"))
        again = c.post("/charges", json={"amount": 10}, headers=http.key("a1"))
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"charged": 10, "execution": 1}
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-charge-id"] == "ch_1"
    assert again.headers["content-type"] == "application/json"
    assert again.headers["content-length"] == str(len(again.content))
    assert "set-cookie" in first.headers
    assert first.cookies["theme"] == "first-client-only"
    assert "set-cookie" not in again.headers  # cookies belong to the first client alone
    assert "theme" not in again.cookies
    assert http.effects.by_key["a1"] == 1


def test_same_json_serialized_differently_is_the_same_request(http: Http) -> None:
    """Member order and white space do not make a retry a different request."""
    headers = {**http.key("a2"), "content-type": "application/json"}
    with http.client() as c:
        one = c.post("/charges", content=b'{"amount": 10, "currency": "eur"}', headers=headers)
        two = c.post("/charges", content=b'{ "currency":"eur","amount":10.0 }', headers=headers)
    assert two.headers["idempotent-replayed"] == "true"
    assert one.json() == two.json()


def test_bare_token_key_is_accepted(http: Http) -> None:
    """The key header is a Structured Field string, and leniently a bare token: same key."""
    with http.client() as c:
        c.post("/charges", json={"amount": 1}, headers=http.key("tok-1"))
        again = c.post("/charges", json={"amount": 1}, headers=http.bare_key("tok-1"))
    assert again.headers["idempotent-replayed"] == "true"


def test_reuse_with_other_request_is_422(http: Http) -> None:
    """Same key, different request (body, path or query): 422 problem+json, the handler does
    not run."""
    with http.client() as c:
        c.post("/charges", json={"amount": 10}, headers=http.key("a3"))
        other = c.post("/charges", json={"amount": 99}, headers=http.key("a3"))
        other_path = c.post("/echo", content=b"x", headers=http.key("a3"))
        other_query = c.post("/charges?x=1", json={"amount": 10}, headers=http.key("a3"))
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["status"] == 422
    assert other.json()["instance"] == "/charges"
    assert other_path.status_code == 422
    assert other_query.status_code == 422
    assert http.effects.by_key["a3"] == 1


def test_in_flight_duplicate_is_409_with_retry_after(http: Http) -> None:
    """While the first runs, a duplicate gets 409 + Retry-After; afterwards it replays."""
    results: list[httpx.Response] = []

    def first() -> None:
        with http.client() as c:
            results.append(c.post("/charges?gate=1", json={"amount": 5}, headers=http.key("a4")))

    t = threading.Thread(target=first)
    t.start()
    try:
        assert http.effects.entered.wait(10)
        with http.client() as c:
            dup = c.post("/charges?gate=1", json={"amount": 5}, headers=http.key("a4"))
    finally:
        http.effects.release.set()
        t.join(10)
    with http.client() as c:
        after = c.post("/charges?gate=1", json={"amount": 5}, headers=http.key("a4"))
    assert dup.status_code == 409
    assert dup.headers["content-type"] == "application/problem+json"
    assert int(dup.headers["retry-after"]) >= 1
    assert dup.json()["title"].startswith("A request with this idempotency key")
    assert results[0].status_code == 201
    assert after.headers["idempotent-replayed"] == "true"
    assert http.effects.by_key["a4"] == 1


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ({}, "/strict/thing"),
        ({"Idempotency-Key": '""'}, "/charges"),
        ({"Idempotency-Key": '"' + "x" * 256 + '"'}, "/charges"),
        ({"Idempotency-Key": '"unterminated'}, "/charges"),
        ({"Idempotency-Key": '"a", "b"'}, "/charges"),
    ],
    ids=["missing", "empty", "too-long", "unterminated", "list"],
)
def test_missing_or_malformed_key_is_400(http: Http, headers: dict[str, str], path: str) -> None:
    """A required key missing, or a malformed key: 400 problem+json, nothing runs."""
    with http.client() as c:
        r = c.post(path, json={"amount": 1}, headers=headers)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["status"] == 400
    assert sum(http.effects.by_key.values()) == 0


def test_no_key_on_optional_route_passes_through(http: Http) -> None:
    """Without a key on a route that does not require one, the request runs unguarded."""
    with http.client() as c:
        c.post("/charges", json={"amount": 1})
        c.post("/charges", json={"amount": 1})
    assert http.effects.by_key["-"] == 2


def test_safe_methods_and_disabled_routes_pass_through(http: Http) -> None:
    """GET is idempotent by definition; a route rule can disable the middleware."""
    with http.client() as c:
        c.get("/charges", headers=http.key("g1"))
        c.get("/charges", headers=http.key("g1"))
        c.get("/open/thing", headers=http.key("g2"))
        c.get("/open/thing", headers=http.key("g2"))
        c.post("/open/thing", headers=http.key("o1"))
        c.post("/open/thing", headers=http.key("o1"))
    assert http.effects.by_key == {"g1": 2, "g2": 2, "o1": 2}


@pytest.mark.parametrize("status", [500, 503, 401, 403, 408, 409, 425, 429])
def test_errors_and_transient_answers_are_not_kept(http: Http, status: int) -> None:
    """5xx and the auth/throttling/transient statuses release the key: the retry runs."""
    key = http.key(f"s{status}")
    with http.client() as c:
        first = c.post(f"/flaky?status={status}", content=b"", headers=key)
        second = c.post(f"/flaky?status={status}", content=b"", headers=key)
        third = c.post(f"/flaky?status={status}", content=b"", headers=key)
    assert first.status_code == status
    assert second.status_code == 200
    assert second.text == "ok after 2"
    assert third.headers["idempotent-replayed"] == "true"


def test_handler_exception_releases_the_key(http: Http) -> None:
    """A crashing handler (the framework answers 500) keeps nothing: the retry runs again."""
    # uvicorn closes the connection after an unhandled exception: one client per request.
    with http.client() as c:
        first = c.post("/boom", content=b"", headers=http.key("b1"))
    with http.client() as c:
        second = c.post("/boom", content=b"", headers=http.key("b1"))
    assert first.status_code == 500
    assert second.status_code == 200
    assert http.effects.by_key["b1"] == 2


def test_scopes_isolate_principals(http: Http) -> None:
    """Three principals with the same key and body: each runs once and gets its own
    response."""
    alice = http.key("shared", Authorization="Bearer alice")
    bob = http.key("shared", Authorization="Bearer bob")
    api_key = http.key("shared", **{"X-API-Key": "carol"})
    with http.client() as c:
        a1 = c.post("/charges", json={"amount": 1}, headers=alice)
        b1 = c.post("/charges", json={"amount": 1}, headers=bob)
        c1 = c.post("/charges", json={"amount": 1}, headers=api_key)
        a2 = c.post("/charges", json={"amount": 1}, headers=alice)
        b2 = c.post("/charges", json={"amount": 1}, headers=bob)
        c2 = c.post("/charges", json={"amount": 1}, headers=api_key)
    assert a1.json()["execution"] == 1
    assert b1.json()["execution"] == 2  # bob ran his own, he did not get alice's
    assert c1.json()["execution"] == 3
    assert (a2.json(), b2.json(), c2.json()) == (a1.json(), b1.json(), c1.json())
    assert http.effects.by_key["shared"] == 3


def test_session_cookies_isolate_principals_by_default(http: Http) -> None:
    """Two users of a cookie-session app (Starlette and Flask call the cookie ``session``,
    Django ``sessionid``), no Authorization header, the default scope, the same key and body:
    the second runs its own request and never receives the first's response."""
    with http.client() as c:
        a1 = c.post("/charges", json={"amount": 1}, headers=http.key("ck", Cookie="session=alice"))
        b1 = c.post("/charges", json={"amount": 1}, headers=http.key("ck", Cookie="session=bob"))
        d1 = c.post("/charges", json={"amount": 1}, headers=http.key("ck", Cookie="sessionid=dan"))
        a2 = c.post("/charges", json={"amount": 1}, headers=http.key("ck", Cookie="session=alice"))
    assert "idempotent-replayed" not in b1.headers
    assert "idempotent-replayed" not in d1.headers
    assert (a1.json()["execution"], b1.json()["execution"], d1.json()["execution"]) == (1, 2, 3)
    assert a2.headers["idempotent-replayed"] == "true"
    assert a2.json() == a1.json()
    assert http.effects.by_key["ck"] == 3


def test_replayed_responses_keep_no_secret_headers(http: Http) -> None:
    """A handler's secret-looking headers (X-Secret-Token) reach the first client only: they
    are never stored, so a replay does not carry them; its own headers are replayed."""
    with http.client() as c:
        first = c.post("/secret", json={}, headers=http.key("sec"))
        again = c.post("/secret", json={}, headers=http.key("sec"))
    assert first.headers["x-secret-token"] == "tok_live_1"
    assert again.headers["idempotent-replayed"] == "true"
    assert "x-secret-token" not in again.headers
    assert again.headers["x-order-id"] == "o_1"


def test_problems_name_their_case(http: Http) -> None:
    """Each problem+json answer has its own type URI and a stable title (RFC 9457: about:blank
    would mean the title is just the status phrase); a key with parameters is accepted."""
    with http.client() as c:
        malformed = c.post("/charges", json={"amount": 1}, headers={"Idempotency-Key": '"a'})
        ok = c.post("/charges", json={"amount": 1}, headers={"Idempotency-Key": '"p1";v=1'})
        reused = c.post("/charges", json={"amount": 2}, headers={"Idempotency-Key": '"p1"'})
    assert malformed.status_code == 400
    assert malformed.json()["type"] == "urn:idempo:problem:invalid-key"
    assert ok.status_code == 201
    assert reused.status_code == 422
    assert reused.json()["type"] == "urn:idempo:problem:key-reused"
    assert reused.json()["title"] == "Idempotency key reused with a different request"


def test_response_over_the_limit_is_served_once_then_refused(http: Http) -> None:
    """A streamed response above the limit reaches the client whole; a retry gets a clear
    problem+json error, never a truncated replay, and the handler does not run again. A small
    one is replayed whole."""
    with http.client() as c:
        first = c.post("/big?size=80000", content=b"", headers=http.key("big"))
        again = c.post("/big?size=80000", content=b"", headers=http.key("big"))
        small = c.post("/big?size=4000", content=b"", headers=http.key("small"))
        small_again = c.post("/big?size=4000", content=b"", headers=http.key("small"))
    assert first.status_code == 200
    assert first.content == b"x" * 80000
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert "too large" in again.json()["detail"]
    assert http.effects.by_key["big"] == 1
    assert small_again.headers["idempotent-replayed"] == "true"
    assert small_again.headers["content-type"] == "application/octet-stream"
    assert small_again.content == small.content == b"x" * 4000


def test_request_body_reaches_the_handler_intact(http: Http) -> None:
    """The middleware reads the body to fingerprint it and hands it on byte for byte, with a
    Content-Length or chunked."""
    payload = bytes(range(256)) * 150  # under the 50 kB response limit

    def chunked() -> Iterator[bytes]:
        for i in range(0, len(payload), 7000):
            yield payload[i : i + 7000]

    with http.client() as c:
        r = c.post("/echo", content=payload, headers=http.key("echo"))
        again = c.post("/echo", content=payload, headers=http.key("echo"))
        streamed = c.post("/echo", content=chunked(), headers=http.key("echo"))
        other = c.post("/echo", content=payload[:-1], headers=http.key("echo"))
    assert r.content == payload
    assert again.content == payload
    assert again.headers["idempotent-replayed"] == "true"
    assert streamed.headers["idempotent-replayed"] == "true"  # same bytes, same request
    assert streamed.content == payload
    assert other.status_code == 422
    assert http.effects.by_key["echo"] == 1


def test_body_that_is_not_strict_json_is_no_error(http: Http) -> None:
    """A JSON-typed body with NaN or a lone surrogate is fingerprinted by its bytes: the
    handler answers, and the retry replays (no 500 from the middleware)."""
    headers = {**http.key("nan"), "content-type": "application/json"}
    with http.client() as c:
        one = c.post("/echo", content=b'{"amount": NaN, "s": "\\ud800"}', headers=headers)
        two = c.post("/echo", content=b'{"amount": NaN, "s": "\\ud800"}', headers=headers)
    assert one.status_code == 200
    assert two.headers["idempotent-replayed"] == "true"


def test_crashed_worker_claim_is_taken_over_after_its_lease(http: Http) -> None:
    """A claim left by a worker that died (never completed or released) answers 409 until its
    lease runs out; then a retry takes it over and executes."""
    body = b'{"amount": 3}'
    fp = fingerprint_request("POST", "/charges", "", body, "application/json")
    with http.store.handle() as crashed:
        key = f"{http.effects.prefix}dead"
        crashed.claim("anonymous", key, fp, secrets.token_hex(16), lease=1.5, ttl=60)
    headers = {**http.key("dead"), "content-type": "application/json"}
    with http.client() as c:
        while_held = c.post("/charges", content=body, headers=headers)
        deadline = time.monotonic() + 10
        taken_over = while_held
        while taken_over.status_code == 409 and time.monotonic() < deadline:
            time.sleep(0.05)  # a poll until the lease has run out, not a synchronisation
            taken_over = c.post("/charges", content=body, headers=headers)
        replayed = c.post("/charges", content=body, headers=headers)
    assert while_held.status_code == 409
    assert taken_over.status_code == 201
    assert replayed.headers["idempotent-replayed"] == "true"
    assert http.effects.by_key["dead"] == 1


def test_concurrent_identical_requests_execute_once(http: Http) -> None:
    """200 simultaneous requests with one key (50 on the thread-pool servers): exactly one
    handler execution, held until every other request was answered 409 (in flight, with
    Retry-After); 50 more once it finished are all replays of that one execution."""
    # As many as a server answers well inside the lease on 2 busy cores: 32 waitress threads
    # all writing to SQLite at once can delay the held request's heartbeat past its lease.
    n = 200 if http.adapter == "asgi" else 50

    def post(c: httpx.AsyncClient) -> asyncio.Task[httpx.Response]:
        return asyncio.create_task(
            c.post("/charges?gate=1", json={"amount": 7}, headers=http.key("burst"))
        )

    async def burst() -> tuple[list[httpx.Response], list[httpx.Response]]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with http.async_client(limits=limits) as c:
            tasks = [post(c) for _ in range(n)]
            try:
                assert await asyncio.to_thread(http.effects.entered.wait, 10)
                pending: set[asyncio.Task[httpx.Response]] = set(tasks)
                deadline = time.monotonic() + 20
                while len(pending) > 1 and time.monotonic() < deadline:
                    _, pending = await asyncio.wait(
                        pending,
                        timeout=deadline - time.monotonic(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
            finally:
                http.effects.release.set()
            during = await asyncio.gather(*tasks)
        # A new client: reusing the burst's 200 kept-alive connections at once is slow.
        async with http.async_client(limits=limits) as c:
            after = await asyncio.gather(*(post(c) for _ in range(50)))
        return during, after

    responses, replays = asyncio.run(burst())
    assert (len(responses), len(replays)) == (n, 50)
    assert http.effects.by_key["burst"] == 1
    statuses = collections.Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    assert statuses[201] == 1
    assert all(
        r.json() == {"charged": 7, "execution": 1} for r in responses if r.status_code == 201
    )
    assert all(r.headers["retry-after"] for r in responses if r.status_code == 409)
    odd = [(r.status_code, r.headers, r.text) for r in replays if r.status_code != 201]
    assert not odd, odd[:3]
    assert all(r.json() == {"charged": 7, "execution": 1} for r in replays)
    assert all(r.headers["idempotent-replayed"] == "true" for r in replays)


def test_idempo_client_over_a_lossy_network_charges_once(http: Http) -> None:
    """The retrying client against the real middleware, replies lost after processing: every
    logical request is executed exactly once; lost replies come back as replays."""
    from idempo.client import Client
    from idempo.demo import LossyTransport

    lossy = LossyTransport(0.4, seed=3)
    with Client(
        base_url=http.base,
        transport=lossy,
        attempts=10,
        retry_timeout=None,
        wait_initial=0.001,
        wait_max=0.01,
        wait_jitter=0,
    ) as client:
        for i in range(20):
            r = client.post("/charges", json={"amount": i})
            assert r.status_code == 201
            assert r.json()["charged"] == i
    assert lossy.lost > 0
    assert lossy.replays > 0
    assert len(http.effects.by_key) == 20
    assert all(n == 1 for n in http.effects.by_key.values())


# -- other configurations, one server each ----------------------------------------------------


def test_oversized_request_body_is_413(adapter: str, tmp_path: Path) -> None:
    """A request body above max_request_bytes is refused with 413 before the handler runs, by
    its Content-Length or, chunked, as it is read."""
    with (
        served(adapter, StoreSpec.of("memory", tmp_path), max_request_bytes=1000) as http,
        http.client() as c,
    ):
        r = c.post("/echo", content=b"x" * 5000, headers=http.key("huge"))
        chunked = c.post("/echo", content=iter([b"x" * 800, b"x" * 800]), headers=http.key("huge"))
        fits = c.post("/echo", content=b"x" * 1000, headers=http.key("huge"))
    assert r.status_code == chunked.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert fits.status_code == 200
    assert http.effects.by_key["huge"] == 1


def test_store_down_fails_closed_with_503(adapter: str) -> None:
    """With the store unreachable, guarded requests get 503 + Retry-After and do not run."""
    with served(adapter, store_down()) as http, http.client() as c:
        r = c.post("/charges", json={"amount": 1}, headers=http.key("down"))
        unguarded = c.get("/charges")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.headers["content-type"] == "application/problem+json"
    assert http.effects.by_key["down"] == 0
    assert unguarded.status_code == 200


def test_store_down_with_fail_open_passes_through(adapter: str) -> None:
    """fail_open=True: with the store unreachable, requests run unguarded, body intact."""
    with served(adapter, store_down(), fail_open=True) as http, http.client() as c:
        r = c.post("/charges", json={"amount": 4}, headers=http.key("open"))
        again = c.post("/charges", json={"amount": 4}, headers=http.key("open"))
    assert r.status_code == again.status_code == 201
    assert r.json() == {"charged": 4, "execution": 1}
    assert again.json() == {"charged": 4, "execution": 2}  # the price of fail_open
    assert http.effects.by_key["open"] == 2


def by_session(headers: Mapping[str, str]) -> str:
    """A scope function keyed on the ``sid`` session cookie."""
    cookies = dict(
        part.strip().split("=", 1) for part in headers.get("cookie", "").split(";") if "=" in part
    )
    return "session:" + cookies.get("sid", "none")


def test_cookie_sessions_need_a_scope_function(adapter: str, tmp_path: Path) -> None:
    """Cookie-only sessions: with scope= keyed on the session cookie, two sessions with the
    same key and body each run their own request and never see the other's response."""
    with served(adapter, StoreSpec.of("memory", tmp_path), scope=by_session) as http:
        with http.client() as c:
            a = c.post("/charges", json={"amount": 1}, headers=http.key("c1", Cookie="sid=alice"))
        with http.client() as c:
            b = c.post("/charges", json={"amount": 1}, headers=http.key("c1", Cookie="sid=bob"))
            b2 = c.post("/charges", json={"amount": 1}, headers=http.key("c1", Cookie="sid=bob"))
    assert "idempotent-replayed" not in b.headers
    assert a.json()["execution"] == 1
    assert b.json()["execution"] == 2
    assert b2.json() == b.json()
    assert b2.headers["idempotent-replayed"] == "true"

"""The ASGI middleware end to end over real sockets (uvicorn), on SQLite, Redis and PostgreSQL:
every row of DESIGN section 6."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from idempo.asgi import IdempotencyMiddleware, Route
from tests.conftest import cleanup, store_url

HTTP_STORES = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


class Effects:
    """What the handlers did, per idempotency key."""

    def __init__(self) -> None:
        self.by_key: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def record(self, request: Request) -> int:
        key = request.headers.get("idempotency-key", "-")
        with self.lock:
            self.by_key[key] += 1
            return self.by_key[key]


def make_app(effects: Effects) -> Starlette:
    async def charge(request: Request) -> Response:
        body = await request.json()
        n = effects.record(request)
        await asyncio.sleep(float(request.query_params.get("sleep", "0")))
        return JSONResponse(
            {"charged": body.get("amount"), "execution": n},
            status_code=201,
            headers={"set-cookie": "session=first-client-only", "x-charge-id": f"ch_{n}"},
        )

    async def flaky(request: Request) -> Response:
        n = effects.record(request)
        status = int(request.query_params.get("status", "500"))
        if n == 1:
            return PlainTextResponse("try again", status_code=status)
        return PlainTextResponse(f"ok after {n}", status_code=200)

    async def boom(request: Request) -> Response:
        if effects.record(request) == 1:
            raise RuntimeError("handler crashed")
        return PlainTextResponse("recovered")

    async def big(request: Request) -> Response:
        effects.record(request)
        size = int(request.query_params["size"])

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(size // 1000):
                yield b"x" * 1000

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    async def listing(request: Request) -> Response:
        effects.record(request)
        return JSONResponse({"ok": True})

    async def echo(request: Request) -> Response:
        effects.record(request)
        return Response(await request.body(), media_type="application/octet-stream")

    return Starlette(
        routes=[
            StarletteRoute("/charges", charge, methods=["POST"]),
            StarletteRoute("/charges", listing, methods=["GET"]),
            StarletteRoute("/flaky", flaky, methods=["POST"]),
            StarletteRoute("/boom", boom, methods=["POST"]),
            StarletteRoute("/big", big, methods=["POST"]),
            StarletteRoute("/echo", echo, methods=["POST"]),
            StarletteRoute("/open/thing", listing, methods=["POST"]),
            StarletteRoute("/strict/thing", listing, methods=["POST"]),
        ]
    )


@contextlib.contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1, an ephemeral port, in a thread."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(params=HTTP_STORES)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Effects]]:
    url, options = store_url(request.param, tmp_path)
    effects = Effects()
    app = make_app(effects)
    app.add_middleware(
        IdempotencyMiddleware,
        store=url,
        store_options=options,
        max_response_bytes=50_000,
        lease=5,
        routes=[Route("/open/*", enabled=False), Route("/strict/*", required=True)],
    )
    with serve(app) as base:
        yield base, effects
    cleanup(request.param, options)


def k(value: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{value}"'}


def test_new_key_executes_and_retry_replays(service: tuple[str, Effects]) -> None:
    """A new key runs the handler; the retry replays status, body and safe headers, marked."""
    base, effects = service
    with httpx.Client(base_url=base) as c:
        first = c.post("/charges", json={"amount": 10}, headers=k("a1"))
        again = c.post("/charges", json={"amount": 10}, headers=k("a1"))
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"charged": 10, "execution": 1}
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["x-charge-id"] == "ch_1"
    assert "set-cookie" in first.headers
    assert "set-cookie" not in again.headers  # cookies belong to the first client alone
    assert effects.by_key['"a1"'] == 1


def test_same_json_serialized_differently_is_the_same_request(
    service: tuple[str, Effects],
) -> None:
    """Member order and white space do not make a retry a different request."""
    base, _effects = service
    headers = {**k("a2"), "content-type": "application/json"}
    with httpx.Client(base_url=base) as c:
        one = c.post("/charges", content=b'{"amount": 10, "currency": "eur"}', headers=headers)
        two = c.post("/charges", content=b'{ "currency":"eur","amount":10.0 }', headers=headers)
    assert two.headers["idempotent-replayed"] == "true"
    assert one.json() == two.json()


def test_bare_token_key_is_accepted(service: tuple[str, Effects]) -> None:
    """The key header is a Structured Field string, and leniently a bare token: same key."""
    base, _effects = service
    with httpx.Client(base_url=base) as c:
        c.post("/charges", json={"amount": 1}, headers={"Idempotency-Key": '"tok-1"'})
        again = c.post("/charges", json={"amount": 1}, headers={"Idempotency-Key": "tok-1"})
    assert again.headers["idempotent-replayed"] == "true"


def test_reuse_with_other_body_is_422(service: tuple[str, Effects]) -> None:
    """Same key, different request: 422 problem+json, the handler does not run."""
    base, effects = service
    with httpx.Client(base_url=base) as c:
        c.post("/charges", json={"amount": 10}, headers=k("a3"))
        other = c.post("/charges", json={"amount": 99}, headers=k("a3"))
        other_path = c.post("/echo", content=b"x", headers=k("a3"))
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["status"] == 422
    assert other_path.status_code == 422
    assert effects.by_key['"a3"'] == 1


def test_in_flight_duplicate_is_409_with_retry_after(service: tuple[str, Effects]) -> None:
    """While the first runs, a duplicate gets 409 + Retry-After; afterwards it replays."""
    base, effects = service
    with httpx.Client(base_url=base, timeout=10) as c:
        results: list[httpx.Response] = []
        t = threading.Thread(
            target=lambda: results.append(
                c.post("/charges?sleep=1", json={"amount": 5}, headers=k("a4"))
            )
        )
        t.start()
        time.sleep(0.4)
        dup = c.post("/charges?sleep=1", json={"amount": 5}, headers=k("a4"))
        t.join(10)
        after = c.post("/charges?sleep=1", json={"amount": 5}, headers=k("a4"))
    assert dup.status_code == 409
    assert int(dup.headers["retry-after"]) >= 1
    assert dup.json()["title"].startswith("A request with this idempotency key")
    assert results[0].status_code == 201
    assert after.headers["idempotent-replayed"] == "true"
    assert effects.by_key['"a4"'] == 1


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        ({}, "/strict/thing"),
        ({"Idempotency-Key": '""'}, "/charges"),
        ({"Idempotency-Key": '"' + "x" * 256 + '"'}, "/charges"),
        ({"Idempotency-Key": '"unterminated'}, "/charges"),
    ],
)
def test_missing_or_malformed_key_is_400(
    service: tuple[str, Effects], headers: dict[str, str], path: str
) -> None:
    """A required key missing, or a malformed key: 400 problem+json, nothing runs."""
    base, effects = service
    with httpx.Client(base_url=base) as c:
        r = c.post(path, json={"amount": 1}, headers=headers)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert sum(effects.by_key.values()) == 0


def test_no_key_on_optional_route_passes_through(service: tuple[str, Effects]) -> None:
    """Without a key on a route that does not require one, the request runs unguarded."""
    base, effects = service
    with httpx.Client(base_url=base) as c:
        c.post("/charges", json={"amount": 1})
        c.post("/charges", json={"amount": 1})
    assert effects.by_key["-"] == 2


@pytest.mark.parametrize("status", [500, 503, 401, 403, 408, 409, 425, 429])
def test_errors_and_transient_answers_are_not_kept(
    service: tuple[str, Effects], status: int
) -> None:
    """5xx and the auth/throttling/transient statuses release the key: the retry runs."""
    base, _effects = service
    with httpx.Client(base_url=base) as c:
        first = c.post(f"/flaky?status={status}", content=b"", headers=k(f"s{status}"))
        second = c.post(f"/flaky?status={status}", content=b"", headers=k(f"s{status}"))
        third = c.post(f"/flaky?status={status}", content=b"", headers=k(f"s{status}"))
    assert first.status_code == status
    assert second.status_code == 200
    assert second.text == "ok after 2"
    assert third.headers["idempotent-replayed"] == "true"


def test_handler_exception_releases_the_key(service: tuple[str, Effects]) -> None:
    """A crashing handler (500) keeps nothing: the retry runs again."""
    base, effects = service
    # uvicorn closes the connection after an unhandled exception: one client per request.
    with httpx.Client(base_url=base) as c:
        first = c.post("/boom", content=b"", headers=k("b1"))
    with httpx.Client(base_url=base) as c:
        second = c.post("/boom", content=b"", headers=k("b1"))
    assert first.status_code == 500
    assert second.status_code == 200
    assert effects.by_key['"b1"'] == 2


def test_safe_methods_and_disabled_routes_pass_through(service: tuple[str, Effects]) -> None:
    """GET is idempotent by definition; a route rule can disable the middleware."""
    base, effects = service
    with httpx.Client(base_url=base) as c:
        c.get("/charges", headers=k("g1"))
        c.get("/charges", headers=k("g1"))
        c.post("/open/thing", headers=k("o1"))
        c.post("/open/thing", headers=k("o1"))
    assert effects.by_key['"g1"'] == 2
    assert effects.by_key['"o1"'] == 2


def test_scopes_isolate_principals(service: tuple[str, Effects]) -> None:
    """Two principals with the same key and body: each runs once and gets its own response."""
    base, effects = service
    alice = {**k("shared"), "Authorization": "Bearer alice"}
    bob = {**k("shared"), "Authorization": "Bearer bob"}
    with httpx.Client(base_url=base) as c:
        a1 = c.post("/charges", json={"amount": 1}, headers=alice)
        b1 = c.post("/charges", json={"amount": 1}, headers=bob)
        a2 = c.post("/charges", json={"amount": 1}, headers=alice)
        b2 = c.post("/charges", json={"amount": 1}, headers=bob)
    assert a1.json()["execution"] == 1
    assert b1.json()["execution"] == 2  # bob ran his own, he did not get alice's
    assert a2.json() == a1.json()
    assert b2.json() == b1.json()
    assert effects.by_key['"shared"'] == 2


def test_response_over_the_limit_is_served_once_then_refused(
    service: tuple[str, Effects],
) -> None:
    """A streamed response above the limit reaches the client whole; a retry gets a clear
    problem+json error, never a truncated replay, and the handler does not run again."""
    base, effects = service
    with httpx.Client(base_url=base) as c:
        first = c.post("/big?size=80000", content=b"", headers=k("big"))
        again = c.post("/big?size=80000", content=b"", headers=k("big"))
        small = c.post("/big?size=4000", content=b"", headers=k("small"))
        small_again = c.post("/big?size=4000", content=b"", headers=k("small"))
    assert first.status_code == 200
    assert len(first.content) == 80000
    assert again.status_code == 409
    assert "too large" in again.json()["detail"]
    assert effects.by_key['"big"'] == 1
    assert small_again.headers["idempotent-replayed"] == "true"
    assert small_again.content == small.content == b"x" * 4000


def test_request_body_reaches_the_handler_intact(service: tuple[str, Effects]) -> None:
    """The middleware reads the body to fingerprint it and hands it on byte for byte."""
    base, _effects = service
    payload = bytes(range(256)) * 150  # under the 50 kB response limit
    with httpx.Client(base_url=base) as c:
        r = c.post("/echo", content=payload, headers=k("echo"))
        again = c.post("/echo", content=payload, headers=k("echo"))
    assert r.content == payload
    assert again.content == payload


def test_oversized_request_body_is_413(tmp_path: Path) -> None:
    """A request body above max_request_bytes is refused with 413 before the handler runs."""
    effects = Effects()
    app = make_app(effects)
    app.add_middleware(IdempotencyMiddleware, store="memory://", max_request_bytes=1000)
    with serve(app) as base, httpx.Client(base_url=base) as c:
        r = c.post("/echo", content=b"x" * 5000, headers=k("huge"))
    assert r.status_code == 413
    assert effects.by_key['"huge"'] == 0


def test_store_down_fails_closed_with_503(tmp_path: Path) -> None:
    """With the store unreachable, guarded requests get 503 + Retry-After and do not run."""
    effects = Effects()
    app = make_app(effects)
    app.add_middleware(
        IdempotencyMiddleware,
        store="redis://127.0.0.1:1/0",
        store_options={"socket_connect_timeout": 0.5},
    )
    with serve(app) as base, httpx.Client(base_url=base) as c:
        r = c.post("/charges", json={"amount": 1}, headers=k("down"))
        unguarded = c.get("/charges")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.headers["content-type"] == "application/problem+json"
    assert effects.by_key['"down"'] == 0
    assert unguarded.status_code == 200


def test_200_concurrent_identical_requests_execute_once(service: tuple[str, Effects]) -> None:
    """200 simultaneous requests with one key: exactly one handler execution; every other
    answer is a 409 (in flight) or a replay of that one execution."""
    base, effects = service

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as c:
            return await asyncio.gather(
                *(
                    c.post("/charges?sleep=0.5", json={"amount": 7}, headers=k("burst"))
                    for _ in range(200)
                )
            )

    responses = asyncio.run(burst())
    assert effects.by_key['"burst"'] == 1
    statuses = collections.Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    assert statuses[201] >= 1
    assert all(
        r.json() == {"charged": 7, "execution": 1} for r in responses if r.status_code == 201
    )


async def test_client_gone_before_body_arrives_claims_nothing() -> None:
    """A request whose client disconnects mid-body is not claimed and not run."""
    from idempo.stores.memory import AsyncMemoryStore, MemoryStore

    ran = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(scope["path"])

    backing = MemoryStore()
    middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore(backing))
    messages = iter(
        [
            {"type": "http.request", "body": b'{"amou', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[Any] = []

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/charges",
        "headers": [(b"idempotency-key", b'"gone"')],
        "query_string": b"",
    }
    await middleware(scope, receive, send)
    assert ran == []
    assert sent == []
    assert len(backing) == 0


def test_idempo_client_over_a_lossy_network_charges_once(service: tuple[str, Effects]) -> None:
    """The retrying client against the real middleware, replies lost after processing: every
    logical request is executed exactly once; lost replies come back as replays."""
    from idempo.client import Client
    from idempo.demo import LossyTransport

    base, effects = service
    lossy = LossyTransport(0.4, seed=3)
    with Client(
        base_url=base,
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
    assert len(effects.by_key) == 20
    assert all(n == 1 for n in effects.by_key.values())


def test_body_that_is_not_strict_json_is_no_error(service: tuple[str, Effects]) -> None:
    """A JSON-typed body with NaN or a lone surrogate is fingerprinted by its bytes: the
    handler answers, and the retry replays (no 500 from the middleware)."""
    base, _ = service
    headers = {**k("nan"), "content-type": "application/json"}
    with httpx.Client(base_url=base) as c:
        one = c.post("/echo", content=b'{"amount": NaN, "s": "\\ud800"}', headers=headers)
        two = c.post("/echo", content=b'{"amount": NaN, "s": "\\ud800"}', headers=headers)
    assert one.status_code == 200
    assert two.headers["idempotent-replayed"] == "true"


async def test_client_gone_mid_stream_refuses_the_retry() -> None:
    """The handler answered 201 and was streaming when the client went away (sending fails):
    the key keeps a not-stored marker, so the retry gets 409 and the handler runs once."""
    from idempo.stores.memory import AsyncMemoryStore

    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"part 1", "more_body": True})
        await send({"type": "http.response.body", "body": b"part 2", "more_body": False})

    middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore())
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/charges",
        "headers": [(b"idempotency-key", b'"gone"')],
        "query_string": b"",
    }

    async def receive() -> Any:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent: list[Any] = []

    async def flaky_send(message: Any) -> None:
        if message.get("body") == b"part 1":
            raise OSError("connection reset by peer")
        sent.append(message)

    with pytest.raises(OSError, match="reset"):
        await middleware(scope, receive, flaky_send)

    retry: list[Any] = []

    async def send(message: Any) -> None:
        retry.append(message)

    await middleware(scope, receive, send)
    assert retry[0]["status"] == 409
    assert b"not delivered in full" in retry[1]["body"]
    assert runs == [1]


def test_cookie_sessions_need_a_scope_function(tmp_path: Path) -> None:
    """Cookie-only sessions: with scope= keyed on the session cookie, two sessions with the
    same key and body each run their own request and never see the other's response."""

    def by_session(headers: Any) -> str:
        cookies = dict(
            part.strip().split("=", 1)
            for part in headers.get("cookie", "").split(";")
            if "=" in part
        )
        return "session:" + cookies.get("sid", "none")

    effects = Effects()
    app = make_app(effects)
    app.add_middleware(IdempotencyMiddleware, store="memory://", scope=by_session)
    with serve(app) as base:
        with httpx.Client(base_url=base) as c:
            a = c.post("/charges", json={"amount": 1}, headers={**k("c1"), "Cookie": "sid=alice"})
        with httpx.Client(base_url=base) as c:
            b = c.post("/charges", json={"amount": 1}, headers={**k("c1"), "Cookie": "sid=bob"})
            b2 = c.post("/charges", json={"amount": 1}, headers={**k("c1"), "Cookie": "sid=bob"})
    assert "idempotent-replayed" not in b.headers
    assert a.json()["execution"] == 1
    assert b.json()["execution"] == 2
    assert b2.json() == b.json()


def test_scope_hash_is_keyed_by_the_secret() -> None:
    """The stored scope is an HMAC of the credentials: without the secret it cannot be
    recomputed from a guessed password; the same secret gives the same scope everywhere."""
    import hashlib

    from idempo.core.http import scope_from_credentials

    headers = {"authorization": "Basic dXNlcjpzdW1tZXIyMDI0"}
    one = scope_from_credentials("s3cret")(headers)
    assert one == scope_from_credentials(b"s3cret")(headers)
    assert one != scope_from_credentials("other")(headers)
    unkeyed = hashlib.sha256(headers["authorization"].encode()).hexdigest()[:40]
    assert one != f"principal:{unkeyed}"
    assert scope_from_credentials("s3cret")({}) == "anonymous"

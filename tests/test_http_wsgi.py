"""The WSGI middleware end to end over real sockets (waitress serving a Flask app), on SQLite,
Redis and PostgreSQL: every row of DESIGN section 6; then the PEP 3333 corners (exceptions,
``write()``, ``exc_info``, ``close()``) on raw WSGI apps."""

from __future__ import annotations

import collections
import contextlib
import io
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import waitress
from flask import Flask, Response, jsonify, request
from waitress import wasyncore

from idempo.core.http import fingerprint_request
from idempo.stores import open_store
from idempo.stores.memory import MemoryStore
from idempo.wsgi import IdempotencyMiddleware, Route
from tests.conftest import cleanup, store_url

HTTP_STORES = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


class Effects:
    """What the handlers did, per idempotency key (the header as sent)."""

    def __init__(self) -> None:
        self.by_key: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def record(self, key: str | None) -> int:
        with self.lock:
            self.by_key[key or "-"] += 1
            return self.by_key[key or "-"]


def make_app(effects: Effects) -> Flask:
    """The Flask app the tests call, mirroring the ASGI suite's Starlette app."""
    app = Flask(__name__)

    def record() -> int:
        return effects.record(request.headers.get("idempotency-key"))

    @app.post("/charges")
    def charge() -> Response:
        body = request.get_json()
        n = record()
        time.sleep(float(request.args.get("sleep", "0")))
        response = jsonify({"charged": body.get("amount"), "execution": n})
        response.status_code = 201
        response.set_cookie("session", "first-client-only")
        response.headers["x-charge-id"] = f"ch_{n}"
        return response

    @app.get("/charges")
    def listing() -> Response:
        record()
        return jsonify({"ok": True})

    @app.post("/flaky")
    def flaky() -> Response:
        n = record()
        if n == 1:
            return Response("try again", status=int(request.args.get("status", "500")))
        return Response(f"ok after {n}", status=200)

    @app.post("/boom")
    def boom() -> Response:
        if record() == 1:
            raise RuntimeError("handler crashed")
        return Response("recovered")

    @app.post("/big")
    def big() -> Response:
        record()
        size = int(request.args["size"])

        def chunks() -> Iterator[bytes]:
            for _ in range(size // 1000):
                yield b"x" * 1000

        return Response(chunks(), mimetype="application/octet-stream")

    @app.post("/echo")
    def echo() -> Response:
        record()
        return Response(request.get_data(), mimetype="application/octet-stream")

    @app.post("/open/thing")
    @app.post("/strict/thing")
    def thing() -> Response:
        record()
        return jsonify({"ok": True})

    return app


@contextlib.contextmanager
def serve(app: Any, *, threads: int = 8) -> Iterator[str]:
    """Run ``app`` under waitress on 127.0.0.1, an ephemeral port, in a thread; the loop
    thread shuts the worker threads down and closes every socket when the block ends."""
    sockets: dict[int, Any] = {}
    server: Any = waitress.create_server(
        app, map=sockets, host="127.0.0.1", port=0, threads=threads, channel_timeout=30
    )
    stop = threading.Event()

    def run() -> None:
        try:
            while not stop.is_set():
                wasyncore.loop(timeout=0.02, map=sockets, count=1)
        finally:
            server.task_dispatcher.shutdown()
            wasyncore.close_all(sockets)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop.set()
        thread.join(10)


@pytest.fixture(params=HTTP_STORES)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Effects]]:
    url, options = store_url(request.param, tmp_path)
    effects = Effects()
    app = make_app(effects)
    middleware = IdempotencyMiddleware(
        app.wsgi_app,
        store=url,
        store_options=options,
        max_response_bytes=50_000,
        lease=5,
        routes=[Route("/open/*", enabled=False), Route("/strict/*", required=True)],
    )
    app.wsgi_app = middleware  # type: ignore[method-assign]
    try:
        with serve(app, threads=64) as base:
            yield base, effects
    finally:
        middleware.close()
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
    assert again.headers["content-type"] == "application/json"
    assert again.headers["content-length"] == str(len(again.content))
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
    """Same key, different request (body, or path): 422 problem+json, the handler does not
    run."""
    base, effects = service
    with httpx.Client(base_url=base) as c:
        c.post("/charges", json={"amount": 10}, headers=k("a3"))
        other = c.post("/charges", json={"amount": 99}, headers=k("a3"))
        other_path = c.post("/echo", content=b"x", headers=k("a3"))
        other_query = c.post("/charges?x=1", json={"amount": 10}, headers=k("a3"))
    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["status"] == 422
    assert other.json()["instance"] == "/charges"
    assert other_path.status_code == 422
    assert other_query.status_code == 422
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
    assert dup.headers["content-type"] == "application/problem+json"
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
        ({"Idempotency-Key": '"a", "b"'}, "/charges"),
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
    assert r.json()["status"] == 400
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
    """A crashing handler (Flask answers 500) keeps nothing: the retry runs again."""
    base, effects = service
    with httpx.Client(base_url=base) as c:
        first = c.post("/boom", content=b"", headers=k("b1"))
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
    api_key = {**k("shared"), "X-API-Key": "carol"}
    with httpx.Client(base_url=base) as c:
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
    assert effects.by_key['"shared"'] == 3


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
    assert first.content == b"x" * 80000
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert "too large" in again.json()["detail"]
    assert effects.by_key['"big"'] == 1
    assert small_again.headers["idempotent-replayed"] == "true"
    assert small_again.content == small.content == b"x" * 4000


def test_request_body_reaches_the_handler_intact(service: tuple[str, Effects]) -> None:
    """The middleware reads the body to fingerprint it and hands it on byte for byte, with a
    Content-Length or chunked."""
    base, effects = service
    payload = bytes(range(256)) * 150  # under the 50 kB response limit

    def chunked() -> Iterator[bytes]:
        for i in range(0, len(payload), 7000):
            yield payload[i : i + 7000]

    with httpx.Client(base_url=base) as c:
        r = c.post("/echo", content=payload, headers=k("echo"))
        again = c.post("/echo", content=payload, headers=k("echo"))
        streamed = c.post("/echo", content=chunked(), headers=k("echo"))
        other = c.post("/echo", content=payload[:-1], headers=k("echo"))
    assert r.content == payload
    assert again.content == payload
    assert streamed.headers["idempotent-replayed"] == "true"  # same bytes, same request
    assert streamed.content == payload
    assert other.status_code == 422
    assert effects.by_key['"echo"'] == 1


def test_crashed_worker_claim_is_taken_over_after_its_lease(tmp_path: Path) -> None:
    """A claim left by a worker that died (never completed or released) answers 409 until its
    lease runs out; then a retry takes it over and executes."""
    url = f"sqlite:///{tmp_path / 'idempo.db'}"
    effects = Effects()
    app = make_app(effects)
    app.wsgi_app = middleware = IdempotencyMiddleware(app.wsgi_app, store=url)  # type: ignore[method-assign]
    body = b'{"amount": 3}'
    fp = fingerprint_request("POST", "/charges", "", body, "application/json")
    crashed = open_store(url)
    try:
        crashed.claim("anonymous", "dead", fp, secrets.token_hex(16), lease=0.5, ttl=60)
    finally:
        crashed.close()
    headers = {**k("dead"), "content-type": "application/json"}
    try:
        with serve(app) as base, httpx.Client(base_url=base) as c:
            while_held = c.post("/charges", content=body, headers=headers)
            time.sleep(0.7)
            taken_over = c.post("/charges", content=body, headers=headers)
            replayed = c.post("/charges", content=body, headers=headers)
    finally:
        middleware.close()
    assert while_held.status_code == 409
    assert taken_over.status_code == 201
    assert replayed.headers["idempotent-replayed"] == "true"
    assert effects.by_key['"dead"'] == 1


def test_oversized_request_body_is_413() -> None:
    """A request body above max_request_bytes is refused with 413 before the handler runs, by
    its Content-Length or, chunked, as it is read."""
    effects = Effects()
    app = make_app(effects)
    app.wsgi_app = middleware = IdempotencyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, store="memory://", max_request_bytes=1000
    )
    with serve(app) as base, httpx.Client(base_url=base) as c:
        r = c.post("/echo", content=b"x" * 5000, headers=k("huge"))
        chunked = c.post("/echo", content=iter([b"x" * 800, b"x" * 800]), headers=k("huge"))
        fits = c.post("/echo", content=b"x" * 1000, headers=k("huge"))
    middleware.close()
    assert r.status_code == chunked.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert fits.status_code == 200
    assert effects.by_key['"huge"'] == 1


def test_store_down_fails_closed_with_503() -> None:
    """With the store unreachable, guarded requests get 503 + Retry-After and do not run."""
    effects = Effects()
    app = make_app(effects)
    app.wsgi_app = middleware = IdempotencyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        store="redis://127.0.0.1:1/0",
        store_options={"socket_connect_timeout": 0.5},
    )
    try:
        with serve(app) as base, httpx.Client(base_url=base) as c:
            r = c.post("/charges", json={"amount": 1}, headers=k("down"))
            unguarded = c.get("/charges")
    finally:
        middleware.close()
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.headers["content-type"] == "application/problem+json"
    assert effects.by_key['"down"'] == 0
    assert unguarded.status_code == 200


def test_store_down_with_fail_open_passes_through() -> None:
    """fail_open=True: with the store unreachable, requests run unguarded, body intact."""
    effects = Effects()
    app = make_app(effects)
    app.wsgi_app = middleware = IdempotencyMiddleware(  # type: ignore[method-assign]
        app.wsgi_app,
        store="redis://127.0.0.1:1/0",
        store_options={"socket_connect_timeout": 0.5},
        fail_open=True,
    )
    try:
        with serve(app) as base, httpx.Client(base_url=base) as c:
            r = c.post("/charges", json={"amount": 4}, headers=k("open"))
            again = c.post("/charges", json={"amount": 4}, headers=k("open"))
    finally:
        middleware.close()
    assert r.status_code == again.status_code == 201
    assert r.json() == {"charged": 4, "execution": 1}
    assert again.json() == {"charged": 4, "execution": 2}  # the price of fail_open


def test_50_concurrent_identical_requests_execute_once(service: tuple[str, Effects]) -> None:
    """50 simultaneous requests with one key, each on a thread of its own: exactly one handler
    execution; every other answer is a 409 (in flight) or a replay of that one execution."""
    base, effects = service
    responses: list[httpx.Response] = []
    start = threading.Barrier(50)
    limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
    with httpx.Client(base_url=base, limits=limits, timeout=30) as c:

        def one() -> None:
            start.wait()
            r = c.post("/charges?sleep=0.5", json={"amount": 7}, headers=k("burst"))
            with effects.lock:
                responses.append(r)

        threads = [threading.Thread(target=one) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert len(responses) == 50
    assert effects.by_key['"burst"'] == 1
    statuses = collections.Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    assert statuses[201] >= 1
    assert all(
        r.json() == {"charged": 7, "execution": 1} for r in responses if r.status_code == 201
    )
    assert all(r.headers["retry-after"] for r in responses if r.status_code == 409)


# -- PEP 3333 corners, on raw WSGI apps ---------------------------------------------------------

StartResponse = Callable[..., Callable[[bytes], object]]


class Body:
    """A response body iterable that records whether the server closed it."""

    def __init__(self, chunks: Iterable[bytes], fail_after: int | None = None) -> None:
        self.chunks = list(chunks)
        self.fail_after = fail_after
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_after:
                raise RuntimeError("failed mid-stream")
            yield chunk

    def close(self) -> None:
        self.closed += 1


def call(
    middleware: IdempotencyMiddleware, body: bytes = b"", key: str = "raw", **environ: Any
) -> tuple[str, list[tuple[str, str]], bytes, Any]:
    """Call the middleware as a server would: iterate the body, then close it."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/raw",
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_IDEMPOTENCY_KEY": key,
        "wsgi.input": io.BytesIO(body),
        **environ,
    }
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and started and written:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return written.append

    result = middleware(env, start_response)
    try:
        for chunk in result:
            written.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return started[0], started[1], b"".join(written), result


def test_raw_app_raising_releases_the_key_and_reraises() -> None:
    """An app raising before it answers (or while its body is iterated) keeps nothing: the
    exception reaches the server, the body is closed, and the retry executes."""
    runs: list[int] = []
    bodies: list[Body] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("before start_response")
        start_response("200 OK", [("Content-Type", "text/plain")])
        bodies.append(Body([b"a", b"b", b"c"], fail_after=2 if len(runs) == 2 else None))
        return bodies[-1]

    backing = MemoryStore()
    middleware = IdempotencyMiddleware(app, store=backing)
    with pytest.raises(RuntimeError, match="before start_response"):
        call(middleware)
    assert len(backing) == 0
    with pytest.raises(RuntimeError, match="mid-stream"):
        call(middleware)
    assert bodies[0].closed == 1
    assert len(backing) == 0
    status, _headers, body, _ = call(middleware)
    assert (status, body) == ("200 OK", b"abc")
    assert bodies[1].closed == 1
    status, headers, body, _ = call(middleware)
    assert (status, body) == ("200 OK", b"abc")
    assert ("idempotent-replayed", "true") in headers
    assert len(runs) == 3


def test_write_callable_and_iterable_are_kept_together() -> None:
    """Bytes sent through start_response's write() come first in the kept body."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("201 Created", [("Content-Type", "text/plain")])
        write(b"written, ")
        return Body([b"then ", b"iterated"])

    middleware = IdempotencyMiddleware(app, store=MemoryStore())
    first = call(middleware)
    again = call(middleware)
    assert first[2] == again[2] == b"written, then iterated"
    assert again[0] == "201 Created"
    assert ("idempotent-replayed", "true") in again[1]


def test_exc_info_replaces_the_status_before_the_body() -> None:
    """An app that calls start_response again with exc_info (an error page instead of the
    answer it began) is captured with its final status: a 500, not kept."""
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        runs.append(1)
        start_response("200 OK", [("Content-Type", "text/plain")])
        if len(runs) == 1:
            try:
                raise ValueError("went wrong after starting")
            except ValueError as exc:
                start_response("500 Internal Server Error", [], (ValueError, exc, None))
                return [b"error page"]
        return [b"fine"]

    middleware = IdempotencyMiddleware(app, store=MemoryStore())
    assert call(middleware)[:3:2] == ("500 Internal Server Error", b"error page")
    assert call(middleware)[:3:2] == ("200 OK", b"fine")
    assert len(runs) == 2


def test_body_closed_early_refuses_the_retry() -> None:
    """A server that stops iterating (the client went away after the handler answered 200)
    closes the body: its close() runs, and the key keeps a not-stored marker, so the retry gets
    409 instead of running the handler twice. A body never iterated is treated the same."""
    runs: list[Body] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        runs.append(Body([b"1", b"2", b"3"]))
        return runs[-1]

    backing = MemoryStore()
    middleware = IdempotencyMiddleware(app, store=backing)
    env = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/raw",
        "HTTP_IDEMPOTENCY_KEY": "early",
        "wsgi.input": io.BytesIO(),
    }
    result: Any = middleware(dict(env), lambda *a: None)
    iterator = iter(result)
    assert next(iterator) == b"1"
    result.close()
    result.close()  # twice is harmless
    assert runs[0].closed == 1
    statuses: list[str] = []
    retry: Any = middleware(dict(env), lambda status, headers, exc=None: statuses.append(status))
    b"".join(retry)
    assert statuses == ["409 Conflict"]
    assert len(runs) == 1  # the handler did not run again
    never: Any = middleware(
        dict(env, HTTP_IDEMPOTENCY_KEY="never", **{"wsgi.input": io.BytesIO()}), lambda *a: None
    )
    never.close()
    assert runs[1].closed == 1
    record = backing.get("anonymous", "never")
    assert record is not None
    assert record.state == "completed"


def test_incomplete_body_claims_nothing() -> None:
    """A body shorter than its Content-Length (the client went away) is not claimed nor run."""
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        runs.append(1)
        return []

    backing = MemoryStore()
    middleware = IdempotencyMiddleware(app, store=backing)
    status, _headers, _body, _ = call(middleware, b"", CONTENT_LENGTH="10")
    assert status.startswith("400")
    assert runs == []
    assert len(backing) == 0


def test_app_sees_a_fresh_input_and_script_name_counts_in_the_path() -> None:
    """The app reads the same bytes from a fresh wsgi.input with the right CONTENT_LENGTH, and
    routes match the full path (SCRIPT_NAME + PATH_INFO, UTF-8)."""
    seen: list[tuple[bytes, str]] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        seen.append((environ["wsgi.input"].read(), environ["CONTENT_LENGTH"]))
        start_response("200 OK", [])
        return [b"ok"]

    middleware = IdempotencyMiddleware(
        app, store=MemoryStore(), routes=[Route("/mounted/café", enabled=False)]
    )
    call(middleware, b"payload", key="in")
    assert seen == [(b"payload", "7")]
    path = "/café".encode().decode("latin-1")
    call(middleware, b"x", key="in2", SCRIPT_NAME="/mounted", PATH_INFO=path)
    call(middleware, b"x", key="in2", SCRIPT_NAME="/mounted", PATH_INFO=path)
    assert len(seen) == 3  # the disabled route passed both through

"""The Django middleware in process (django.test.Client, and AsyncClient for async streaming)
on SQLite, Redis and PostgreSQL: the rows of DESIGN section 6, streaming responses, settings."""

from __future__ import annotations

import collections
import contextlib
import io
import json
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any
from wsgiref.util import FileWrapper

import django
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIHandler
from django.http import (
    FileResponse,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.test import AsyncClient, Client, override_settings
from django.urls import path

from idempo.django import close_stores
from tests.conftest import cleanup, store_url

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="idempo-tests",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
    )
    django.setup()

MIDDLEWARE = ["idempo.django.IdempotencyMiddleware"]

DJANGO_STORES = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


class Effects:
    """What the views did, per idempotency key (the header as sent); gates for slow views."""

    def __init__(self) -> None:
        self.by_key: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.entered = threading.Event()
        self.release = threading.Event()

    def record(self, request: HttpRequest) -> int:
        key = request.headers.get("idempotency-key", "-")
        with self.lock:
            self.by_key[key] += 1
            return self.by_key[key]


EFFECTS = Effects()


def charge(request: HttpRequest) -> HttpResponse:
    body = json.loads(request.body)
    n = EFFECTS.record(request)
    if request.GET.get("gate"):
        EFFECTS.entered.set()
        EFFECTS.release.wait(10)
    response = JsonResponse({"charged": body.get("amount"), "execution": n}, status=201)
    response.set_cookie("session", "first-client-only")
    response["X-Charge-Id"] = f"ch_{n}"
    return response


def flaky(request: HttpRequest) -> HttpResponse:
    n = EFFECTS.record(request)
    if n == 1:
        return HttpResponse("try again", status=int(request.GET.get("status", "500")))
    return HttpResponse(f"ok after {n}")


def boom(request: HttpRequest) -> HttpResponse:
    if EFFECTS.record(request) == 1:
        raise RuntimeError("view crashed")
    return HttpResponse("recovered")


def stream(request: HttpRequest) -> StreamingHttpResponse:
    EFFECTS.record(request)
    size = int(request.GET["size"])

    def chunks() -> Iterator[bytes]:
        for _ in range(size // 1000):
            yield b"x" * 1000

    return StreamingHttpResponse(chunks(), content_type="application/octet-stream")


def astream(request: HttpRequest) -> StreamingHttpResponse:
    EFFECTS.record(request)
    size = int(request.GET["size"])

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(size // 1000):
            yield b"y" * 1000

    return StreamingHttpResponse(chunks(), content_type="application/octet-stream")


def download(request: HttpRequest) -> FileResponse:
    EFFECTS.record(request)
    return FileResponse(io.BytesIO(b"file body " * 500), content_type="text/plain")


def echo(request: HttpRequest) -> HttpResponse:
    EFFECTS.record(request)
    return HttpResponse(request.body, content_type="application/octet-stream")


def thing(request: HttpRequest) -> HttpResponse:
    EFFECTS.record(request)
    return JsonResponse({"ok": True})


urlpatterns = [
    path("charges", charge),
    path("flaky", flaky),
    path("boom", boom),
    path("stream", stream),
    path("astream", astream),
    path("download", download),
    path("echo", echo),
    path("open/thing", thing),
    path("strict/thing", thing),
]


def tenant_scope(headers: Mapping[str, str]) -> str:
    """A scope callable named by its dotted path in the settings."""
    return "tenant:" + headers.get("x-tenant", "none")


@contextlib.contextmanager
def configured(**idempo: Any) -> Iterator[None]:
    """This module's URLs and the middleware with ``IDEMPO = idempo``; stores closed after."""
    try:
        with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=MIDDLEWARE, IDEMPO=idempo):
            yield
    finally:
        close_stores()


@pytest.fixture(autouse=True)
def effects() -> Iterator[Effects]:
    global EFFECTS
    EFFECTS = Effects()
    yield EFFECTS
    EFFECTS.release.set()


@pytest.fixture(params=DJANGO_STORES)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Effects]:
    url, options = store_url(request.param, tmp_path)
    try:
        with configured(
            store=url,
            store_options=options,
            max_response_bytes=50_000,
            lease=5,
            routes=[{"path": "/open/*", "enabled": False}, {"path": "/strict/*", "required": True}],
        ):
            yield EFFECTS
    finally:
        cleanup(request.param, options)


def k(value: str, **headers: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{value}"', **headers}


def test_new_key_executes_and_retry_replays(service: Effects) -> None:
    """A new key runs the view; the retry replays status, body and safe headers, marked, and
    never the first response's cookie."""
    c = Client()
    first = c.post("/charges", {"amount": 10}, content_type="application/json", headers=k("a1"))
    again = c.post("/charges", {"amount": 10}, content_type="application/json", headers=k("a1"))
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"charged": 10, "execution": 1}
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["X-Charge-Id"] == "ch_1"
    assert again.headers["Content-Type"] == "application/json"
    assert again.headers["Content-Length"] == str(len(again.content))
    assert first.cookies["session"].value == "first-client-only"
    assert "session" not in again.cookies
    assert "Set-Cookie" not in again.headers
    assert service.by_key['"a1"'] == 1


def test_reuse_with_other_body_is_422(service: Effects) -> None:
    """Same key, different request: 422 problem+json, the view does not run."""
    c = Client()
    c.post("/charges", {"amount": 10}, content_type="application/json", headers=k("a3"))
    other = c.post("/charges", {"amount": 99}, content_type="application/json", headers=k("a3"))
    assert other.status_code == 422
    assert other.headers["Content-Type"] == "application/problem+json"
    assert other.json()["status"] == 422
    assert other.json()["instance"] == "/charges"
    assert service.by_key['"a3"'] == 1


def test_in_flight_duplicate_is_409_with_retry_after(service: Effects) -> None:
    """While the first runs, a duplicate gets 409 + Retry-After; afterwards it replays."""
    results: list[Any] = []

    def first() -> None:
        results.append(
            Client().post(
                "/charges?gate=1", {"amount": 5}, content_type="application/json", headers=k("a4")
            )
        )

    t = threading.Thread(target=first)
    t.start()
    try:
        assert service.entered.wait(10)
        dup = Client().post(
            "/charges?gate=1", {"amount": 5}, content_type="application/json", headers=k("a4")
        )
    finally:
        service.release.set()
        t.join(10)
    after = Client().post(
        "/charges?gate=1", {"amount": 5}, content_type="application/json", headers=k("a4")
    )
    assert dup.status_code == 409
    assert dup.headers["Content-Type"] == "application/problem+json"
    assert int(dup.headers["Retry-After"]) >= 1
    assert dup.json()["title"].startswith("A request with this idempotency key")
    assert results[0].status_code == 201
    assert after.headers["Idempotent-Replayed"] == "true"
    assert service.by_key['"a4"'] == 1


@pytest.mark.parametrize(
    ("headers", "url"),
    [
        ({}, "/strict/thing"),
        ({"Idempotency-Key": '""'}, "/charges"),
        ({"Idempotency-Key": '"' + "x" * 256 + '"'}, "/charges"),
        ({"Idempotency-Key": '"unterminated'}, "/charges"),
    ],
)
def test_missing_or_malformed_key_is_400(
    service: Effects, headers: dict[str, str], url: str
) -> None:
    """A required key missing, or a malformed key: 400 problem+json, nothing runs."""
    r = Client().post(url, {"amount": 1}, content_type="application/json", headers=headers)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/problem+json"
    assert sum(service.by_key.values()) == 0


def test_unguarded_requests_pass_through(service: Effects) -> None:
    """No key on an optional route, GET, and a disabled route all run every time."""
    c = Client()
    c.post("/charges", {"amount": 1}, content_type="application/json")
    c.post("/charges", {"amount": 1}, content_type="application/json")
    c.get("/open/thing", headers=k("g1"))
    c.get("/open/thing", headers=k("g1"))
    c.post("/open/thing", headers=k("o1"))
    c.post("/open/thing", headers=k("o1"))
    assert service.by_key == {"-": 2, '"g1"': 2, '"o1"': 2}


@pytest.mark.parametrize("status", [500, 503, 401, 409, 429])
def test_errors_and_transient_answers_are_not_kept(service: Effects, status: int) -> None:
    """5xx and the auth/throttling/transient statuses release the key: the retry runs."""
    c = Client()
    first = c.post(f"/flaky?status={status}", headers=k(f"s{status}"))
    second = c.post(f"/flaky?status={status}", headers=k(f"s{status}"))
    third = c.post(f"/flaky?status={status}", headers=k(f"s{status}"))
    assert first.status_code == status
    assert second.content == b"ok after 2"
    assert third.headers["Idempotent-Replayed"] == "true"


def test_view_exception_releases_the_key(service: Effects) -> None:
    """A crashing view (Django answers 500) keeps nothing: the retry runs again."""
    c = Client(raise_request_exception=False)
    first = c.post("/boom", headers=k("b1"))
    second = c.post("/boom", headers=k("b1"))
    assert first.status_code == 500
    assert second.status_code == 200
    assert service.by_key['"b1"'] == 2


def test_scopes_isolate_principals(service: Effects) -> None:
    """Two principals with the same key and body: each runs once and gets its own response."""
    c = Client()
    alice = k("shared", Authorization="Bearer alice")
    bob = k("shared", Authorization="Bearer bob")
    body = {"amount": 1}
    a1 = c.post("/charges", body, content_type="application/json", headers=alice)
    b1 = c.post("/charges", body, content_type="application/json", headers=bob)
    a2 = c.post("/charges", body, content_type="application/json", headers=alice)
    b2 = c.post("/charges", body, content_type="application/json", headers=bob)
    assert (a1.json()["execution"], b1.json()["execution"]) == (1, 2)
    assert (a2.json(), b2.json()) == (a1.json(), b1.json())


def test_streaming_response_over_the_limit_is_served_once_then_refused(
    service: Effects,
) -> None:
    """A StreamingHttpResponse above the limit reaches the client whole; a retry gets a clear
    problem+json error, never a truncated replay. A small one is replayed whole."""
    c = Client()
    first = c.post("/stream?size=80000", headers=k("big"))
    assert b"".join(first.streaming_content) == b"x" * 80000
    again = c.post("/stream?size=80000", headers=k("big"))
    small = c.post("/stream?size=4000", headers=k("small"))
    assert b"".join(small.streaming_content) == b"x" * 4000
    small_again = c.post("/stream?size=4000", headers=k("small"))
    assert again.status_code == 409
    assert again.headers["Content-Type"] == "application/problem+json"
    assert "too large" in again.json()["detail"]
    assert service.by_key['"big"'] == 1
    assert small_again.headers["Idempotent-Replayed"] == "true"
    assert small_again.headers["Content-Type"] == "application/octet-stream"
    assert small_again.content == b"x" * 4000


def test_streaming_response_not_read_to_its_end_refuses_the_retry(service: Effects) -> None:
    """A streamed body closed before its end (the client went away after the view answered):
    the retry gets 409 problem+json, and the view does not run twice."""
    c = Client()
    first = c.post("/stream?size=4000", headers=k("cut"))
    next(iter(first.streaming_content))
    first.close()
    again = c.post("/stream?size=4000", headers=k("cut"))
    assert again.status_code == 409
    assert "not delivered in full" in again.json()["detail"]
    assert service.by_key['"cut"'] == 1


def test_request_body_reaches_the_view_intact(service: Effects) -> None:
    """The middleware reads the body to fingerprint it; the view reads the same bytes."""
    payload = bytes(range(256)) * 150
    c = Client()
    r = c.post("/echo", payload, content_type="application/octet-stream", headers=k("echo"))
    again = c.post("/echo", payload, content_type="application/octet-stream", headers=k("echo"))
    assert r.content == again.content == payload
    assert again.headers["Idempotent-Replayed"] == "true"


def test_oversized_request_body_is_413() -> None:
    """A request body above max_request_bytes is refused with 413 before the view runs."""
    with configured(store="memory://", max_request_bytes=1000):
        c = Client()
        r = c.post("/echo", b"x" * 5000, content_type="text/plain", headers=k("huge"))
        fits = c.post("/echo", b"x" * 1000, content_type="text/plain", headers=k("huge"))
    assert r.status_code == 413
    assert r.headers["Content-Type"] == "application/problem+json"
    assert fits.status_code == 200
    assert EFFECTS.by_key['"huge"'] == 1


def test_store_down_fails_closed_with_503_or_passes_through_if_fail_open() -> None:
    """With the store unreachable, guarded requests get 503 + Retry-After and do not run;
    with fail_open they run unguarded."""
    down = {"store": "redis://127.0.0.1:1/0", "store_options": {"socket_connect_timeout": 0.5}}
    body = {"amount": 1}
    with configured(**down):
        r = Client().post("/charges", body, content_type="application/json", headers=k("down"))
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert r.headers["Content-Type"] == "application/problem+json"
    assert EFFECTS.by_key['"down"'] == 0
    with configured(**down, fail_open=True):
        r = Client().post("/charges", body, content_type="application/json", headers=k("down"))
    assert r.status_code == 201
    assert EFFECTS.by_key['"down"'] == 1


def test_scope_from_a_dotted_path_and_routes_as_dicts() -> None:
    """``scope`` may name a callable by its dotted path; ``routes`` may be dicts."""
    with configured(
        store="memory://",
        scope=f"{__name__}.tenant_scope",
        routes=[{"path": "/echo", "methods": ["put"]}],
    ):
        c = Client()
        one = c.put("/echo", b"a", content_type="text/plain", headers=k("t", X_Tenant="one"))
        two = c.put("/echo", b"a", content_type="text/plain", headers=k("t", X_Tenant="two"))
        one_again = c.put("/echo", b"a", content_type="text/plain", headers=k("t", X_Tenant="one"))
        post = c.post("/echo", b"a", content_type="text/plain", headers=k("p"))
        post_again = c.post("/echo", b"a", content_type="text/plain", headers=k("p"))
    assert "Idempotent-Replayed" not in two.headers  # another tenant, another operation
    assert one_again.headers["Idempotent-Replayed"] == "true"
    assert one.content == b"a"
    assert "Idempotent-Replayed" not in post_again.headers  # the route guards PUT only
    assert post.status_code == 200
    assert EFFECTS.by_key == {'"t"': 2, '"p"': 2}


def test_unknown_setting_is_improperly_configured() -> None:
    """A misspelt IDEMPO option fails loudly when the middleware loads."""
    with configured(store="memory://", requierd=True), pytest.raises(ImproperlyConfigured):
        Client().post("/charges", headers=k("x"))


def test_file_response_is_captured_under_a_wsgi_server() -> None:
    """A FileResponse is iterated through the middleware, not handed to wsgi.file_wrapper
    uncaptured: it is kept and replayed."""
    with configured(store="memory://"):
        handler = WSGIHandler()
        bodies = []
        for _ in range(2):
            started: list[Any] = []
            environ = {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": "/download",
                "SERVER_NAME": "testserver",
                "SERVER_PORT": "80",
                "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(),
                "wsgi.file_wrapper": FileWrapper,
                "HTTP_IDEMPOTENCY_KEY": '"file"',
            }
            result = handler(environ, lambda status, headers, *_, s=started: s.extend(headers))
            try:
                bodies.append(({(n.lower(), v) for n, v in started}, b"".join(result)))
            finally:
                result.close()
    (first_headers, first), (again_headers, again) = bodies
    assert first == again == b"file body " * 500
    assert ("idempotent-replayed", "true") not in first_headers
    assert ("idempotent-replayed", "true") in again_headers
    assert ("content-type", "text/plain") in again_headers
    assert EFFECTS.by_key['"file"'] == 1


async def test_async_streaming_response_is_captured() -> None:
    """A StreamingHttpResponse over an async iterator (served by Django's ASGI handler) is
    kept before its end and replayed; over the limit, a retry gets 409."""
    with configured(store="memory://", max_response_bytes=10_000):
        c = AsyncClient()
        first = await c.post("/astream?size=4000", headers=k("as"))
        assert b"".join([chunk async for chunk in first.streaming_content]) == b"y" * 4000
        again = await c.post("/astream?size=4000", headers=k("as"))
        big = await c.post("/astream?size=20000", headers=k("abig"))
        assert len(b"".join([chunk async for chunk in big.streaming_content])) == 20000
        big_again = await c.post("/astream?size=20000", headers=k("abig"))
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == b"y" * 4000
    assert big_again.status_code == 409
    assert EFFECTS.by_key == {'"as"': 1, '"abig"': 1}


def test_session_cookie_users_are_separate_principals(service: Effects) -> None:
    """Django's default scope keys cookie-only requests on the session cookie: two sessions
    with the same key and body each run; another cookie set in between changes nothing."""
    alice, bob = Client(), Client()
    alice.cookies["sessionid"] = "alice-session"
    bob.cookies["sessionid"] = "bob-session"
    body = {"amount": 10}
    a = alice.post("/charges", body, content_type="application/json", headers=k("s1"))
    b = bob.post("/charges", body, content_type="application/json", headers=k("s1"))
    alice.cookies["tracking"] = "changed"
    a2 = alice.post("/charges", body, content_type="application/json", headers=k("s1"))
    assert a.json() != b.json()
    assert a2.json() == a.json()
    assert a2.headers["Idempotent-Replayed"] == "true"
    assert service.by_key['"s1"'] == 2

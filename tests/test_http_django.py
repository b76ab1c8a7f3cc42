"""The Django middleware in process (django.test.Client, and AsyncClient for async streaming)
for what only Django has: settings, streaming and file responses, the session-cookie scope.
The HTTP behaviour every adapter shares, Django's included, is in ``test_http.py``."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any
from wsgiref.util import FileWrapper

import pytest
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
from tests.http_apps import Effects  # also configures Django

MIDDLEWARE = ["idempo.django.IdempotencyMiddleware"]

DJANGO_STORES = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]

EFFECTS = Effects()


def record(request: HttpRequest) -> int:
    return EFFECTS.record(request.headers.get("idempotency-key"))


def charge(request: HttpRequest) -> HttpResponse:
    body = json.loads(request.body)
    n = record(request)
    return JsonResponse({"charged": body.get("amount"), "execution": n}, status=201)


def stream(request: HttpRequest) -> StreamingHttpResponse:
    record(request)
    size = int(request.GET["size"])

    def chunks() -> Iterator[bytes]:
        for _ in range(size // 1000):
            yield b"x" * 1000

    return StreamingHttpResponse(chunks(), content_type="application/octet-stream")


def astream(request: HttpRequest) -> StreamingHttpResponse:
    record(request)
    size = int(request.GET["size"])

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(size // 1000):
            yield b"y" * 1000

    return StreamingHttpResponse(chunks(), content_type="application/octet-stream")


def download(request: HttpRequest) -> FileResponse:
    record(request)
    return FileResponse(io.BytesIO(b"file body " * 500), content_type="text/plain")


def echo(request: HttpRequest) -> HttpResponse:
    record(request)
    return HttpResponse(request.body, content_type="application/octet-stream")


urlpatterns = [
    path("charges", charge),
    path("stream", stream),
    path("astream", astream),
    path("download", download),
    path("echo", echo),
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
def effects() -> Effects:
    global EFFECTS
    EFFECTS = Effects()
    return EFFECTS


@pytest.fixture(params=DJANGO_STORES)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Effects]:
    url, options = store_url(request.param, tmp_path)
    try:
        with configured(store=url, store_options=options, max_response_bytes=50_000, lease=5):
            yield EFFECTS
    finally:
        cleanup(request.param, options)


def k(value: str, **headers: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{value}"', **headers}


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
    assert service.by_key["cut"] == 1


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
    assert EFFECTS.by_key == {"t": 2, "p": 2}


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
    assert EFFECTS.by_key["file"] == 1


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
    assert EFFECTS.by_key == {"as": 1, "abig": 1}


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
    assert service.by_key["s1"] == 2

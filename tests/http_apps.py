"""The HTTP suite's app, written three times with the same routes: Starlette, Flask and Django
(this module is Django's URLconf).

Every route records what it did in an :class:`Effects`, keyed by the idempotency key it was
called with, so that a scenario written once can ask any adapter how often a handler ran.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import django
import flask
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.test import override_settings
from django.urls import path
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

if not settings.configured:
    # Django reads ROOT_URLCONF on every request, from threads the test does not control: it
    # is set once here rather than overridden per server.
    settings.configure(
        DEBUG=False,
        SECRET_KEY="idempo-tests",
        ALLOWED_HOSTS=["testserver", "127.0.0.1"],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        ROOT_URLCONF=__name__,
    )
    django.setup()


class Effects:
    """What the handlers did, per idempotency key, and a gate that holds ``?gate=1`` handlers.

    Keys are counted as the test named them: quotes and the test's prefix stripped, ``-`` for
    a request without a key.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.by_key: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.entered = threading.Event()
        self.release = threading.Event()

    def record(self, header: str | None) -> int:
        name = "-" if header is None else header.strip().strip('"')
        if self.prefix and name.startswith(self.prefix):
            name = name[len(self.prefix) :]
        with self.lock:
            self.by_key[name] += 1
            return self.by_key[name]

    def hold(self) -> None:
        """Tell the test the handler is running, then wait until the test lets it finish."""
        self.entered.set()
        self.release.wait(10)


class Current:
    """The :class:`Effects` of the test now using a server that outlives single tests."""

    def __init__(self) -> None:
        self.effects = Effects()


def chunks_of(size: int, byte: bytes = b"x") -> Iterator[bytes]:
    for _ in range(size // 1000):
        yield byte * 1000


# -- Starlette ---------------------------------------------------------------------------------


def starlette_app(current: Current) -> Starlette:
    def record(request: Request) -> int:
        return current.effects.record(request.headers.get("idempotency-key"))

    async def charge(request: Request) -> Response:
        body = await request.json()
        n = record(request)
        if request.query_params.get("gate"):
            await asyncio.to_thread(current.effects.hold)
        return JSONResponse(
            {"charged": body.get("amount"), "execution": n},
            status_code=201,
            headers={"set-cookie": "theme=first-client-only", "x-charge-id": f"ch_{n}"},
        )

    async def flaky(request: Request) -> Response:
        n = record(request)
        if n == 1:
            return PlainTextResponse("try again", status_code=int(request.query_params["status"]))
        return PlainTextResponse(f"ok after {n}")

    async def boom(request: Request) -> Response:
        if record(request) == 1:
            raise RuntimeError("handler crashed")
        return PlainTextResponse("recovered")

    async def big(request: Request) -> Response:
        record(request)
        size = int(request.query_params["size"])

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks_of(size):
                yield chunk

        return StreamingResponse(body(), media_type="application/octet-stream")

    async def echo(request: Request) -> Response:
        record(request)
        return Response(await request.body(), media_type="application/octet-stream")

    async def thing(request: Request) -> Response:
        record(request)
        return JSONResponse({"ok": True})

    async def secret(request: Request) -> Response:
        n = record(request)
        return JSONResponse(
            {"n": n}, headers={"x-secret-token": f"tok_live_{n}", "x-order-id": f"o_{n}"}
        )

    return Starlette(
        routes=[
            Route("/charges", charge, methods=["POST"]),
            Route("/charges", thing, methods=["GET"]),
            Route("/flaky", flaky, methods=["POST"]),
            Route("/boom", boom, methods=["POST"]),
            Route("/big", big, methods=["POST"]),
            Route("/echo", echo, methods=["POST"]),
            Route("/secret", secret, methods=["POST"]),
            Route("/open/thing", thing, methods=["GET", "POST"]),
            Route("/strict/thing", thing, methods=["POST"]),
        ]
    )


# -- Flask -------------------------------------------------------------------------------------


def flask_app(current: Current) -> flask.Flask:
    app = flask.Flask(__name__)

    def record() -> int:
        return current.effects.record(flask.request.headers.get("idempotency-key"))

    @app.post("/charges")
    def charge() -> flask.Response:
        body = flask.request.get_json()
        n = record()
        if flask.request.args.get("gate"):
            current.effects.hold()
        response = flask.jsonify({"charged": body.get("amount"), "execution": n})
        response.status_code = 201
        response.set_cookie("theme", "first-client-only")
        response.headers["x-charge-id"] = f"ch_{n}"
        return response

    @app.post("/flaky")
    def flaky() -> flask.Response:
        n = record()
        if n == 1:
            return flask.Response("try again", status=int(flask.request.args["status"]))
        return flask.Response(f"ok after {n}")

    @app.post("/boom")
    def boom() -> flask.Response:
        if record() == 1:
            raise RuntimeError("handler crashed")
        return flask.Response("recovered")

    @app.post("/big")
    def big() -> flask.Response:
        record()
        return flask.Response(
            chunks_of(int(flask.request.args["size"])), mimetype="application/octet-stream"
        )

    @app.post("/echo")
    def echo() -> flask.Response:
        record()
        return flask.Response(flask.request.get_data(), mimetype="application/octet-stream")

    @app.post("/secret")
    def secret() -> flask.Response:
        n = record()
        response = flask.jsonify({"n": n})
        response.headers["x-secret-token"] = f"tok_live_{n}"
        response.headers["x-order-id"] = f"o_{n}"
        return response

    @app.get("/charges")
    @app.get("/open/thing")
    @app.post("/open/thing")
    @app.post("/strict/thing")
    def thing() -> flask.Response:
        record()
        return flask.jsonify({"ok": True})

    return app


# -- Django ------------------------------------------------------------------------------------
# The views are this module's URLconf; each server tells them its Current through the environ.

CURRENT = "idempo.tests.current"


def _django_record(request: Any) -> int:
    effects: Effects = request.META[CURRENT].effects
    return effects.record(request.headers.get("idempotency-key"))


def _charge(request: Any) -> Any:
    if request.method == "GET":
        return _thing(request)
    body = json.loads(request.body)
    n = _django_record(request)
    if request.GET.get("gate"):
        request.META[CURRENT].effects.hold()
    response = JsonResponse({"charged": body.get("amount"), "execution": n}, status=201)
    response.set_cookie("theme", "first-client-only")
    response["X-Charge-Id"] = f"ch_{n}"
    return response


def _flaky(request: Any) -> Any:
    n = _django_record(request)
    if n == 1:
        return HttpResponse("try again", status=int(request.GET["status"]))
    return HttpResponse(f"ok after {n}")


def _boom(request: Any) -> Any:
    if _django_record(request) == 1:
        raise RuntimeError("view crashed")
    return HttpResponse("recovered")


def _big(request: Any) -> Any:
    _django_record(request)
    body = chunks_of(int(request.GET["size"]))
    return StreamingHttpResponse(body, content_type="application/octet-stream")


def _echo(request: Any) -> Any:
    _django_record(request)
    return HttpResponse(request.body, content_type="application/octet-stream")


def _thing(request: Any) -> Any:
    _django_record(request)
    return JsonResponse({"ok": True})


def _secret(request: Any) -> Any:
    n = _django_record(request)
    response = JsonResponse({"n": n})
    response["X-Secret-Token"] = f"tok_live_{n}"
    response["X-Order-Id"] = f"o_{n}"
    return response


def _urlpatterns() -> list[Any]:
    return [
        path("charges", _charge),
        path("flaky", _flaky),
        path("boom", _boom),
        path("big", _big),
        path("echo", _echo),
        path("secret", _secret),
        path("open/thing", _thing),
        path("strict/thing", _thing),
    ]


urlpatterns = _urlpatterns()


def django_app(current: Current, idempo: Mapping[str, Any]) -> Any:
    """Django's WSGI handler with the middleware configured from ``IDEMPO = idempo``."""
    # The middleware reads its settings once, when the handler loads it.
    with override_settings(MIDDLEWARE=["idempo.django.IdempotencyMiddleware"], IDEMPO=idempo):
        handler = WSGIHandler()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ[CURRENT] = current
        return handler(environ, start_response)

    return app

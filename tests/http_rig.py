"""The HTTP suite's rig: one app with the same routes in Starlette, Flask and Django, put
behind each adapter's public middleware and served over a real socket (uvicorn for ASGI,
waitress for WSGI and Django).

Every route records what it did in an :class:`Effects`, keyed by the idempotency key it was
called with, so that a scenario written once can ask any adapter how often a handler ran.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django
import httpx
import uvicorn
import waitress
from django.conf import settings
from waitress import wasyncore

from idempo.stores import open_store
from idempo.stores.base import Store
from idempo.stores.memory import AsyncMemoryStore, MemoryStore
from tests.conftest import cleanup, store_url

ADAPTERS = ("asgi", "wsgi", "django")

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


def starlette_app(current: Current) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
    from starlette.routing import Route

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
            headers={"set-cookie": "session=first-client-only", "x-charge-id": f"ch_{n}"},
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

    return Starlette(
        routes=[
            Route("/charges", charge, methods=["POST"]),
            Route("/charges", thing, methods=["GET"]),
            Route("/flaky", flaky, methods=["POST"]),
            Route("/boom", boom, methods=["POST"]),
            Route("/big", big, methods=["POST"]),
            Route("/echo", echo, methods=["POST"]),
            Route("/open/thing", thing, methods=["GET", "POST"]),
            Route("/strict/thing", thing, methods=["POST"]),
        ]
    )


# -- Flask -------------------------------------------------------------------------------------


def flask_app(current: Current) -> Any:
    from flask import Flask, Response, jsonify, request

    app = Flask(__name__)

    def record() -> int:
        return current.effects.record(request.headers.get("idempotency-key"))

    @app.post("/charges")
    def charge() -> Response:
        body = request.get_json()
        n = record()
        if request.args.get("gate"):
            current.effects.hold()
        response = jsonify({"charged": body.get("amount"), "execution": n})
        response.status_code = 201
        response.set_cookie("session", "first-client-only")
        response.headers["x-charge-id"] = f"ch_{n}"
        return response

    @app.post("/flaky")
    def flaky() -> Response:
        n = record()
        if n == 1:
            return Response("try again", status=int(request.args["status"]))
        return Response(f"ok after {n}")

    @app.post("/boom")
    def boom() -> Response:
        if record() == 1:
            raise RuntimeError("handler crashed")
        return Response("recovered")

    @app.post("/big")
    def big() -> Response:
        record()
        return Response(chunks_of(int(request.args["size"])), mimetype="application/octet-stream")

    @app.post("/echo")
    def echo() -> Response:
        record()
        return Response(request.get_data(), mimetype="application/octet-stream")

    @app.get("/charges")
    @app.get("/open/thing")
    @app.post("/open/thing")
    @app.post("/strict/thing")
    def thing() -> Response:
        record()
        return jsonify({"ok": True})

    return app


# -- Django ------------------------------------------------------------------------------------
# The views are this module's URLconf; each server tells them its Current through the environ.

CURRENT = "idempo.tests.current"


def _django_record(request: Any) -> int:
    effects: Effects = request.META[CURRENT].effects
    return effects.record(request.headers.get("idempotency-key"))


def _charge(request: Any) -> Any:
    from django.http import JsonResponse

    if request.method == "GET":
        return _thing(request)
    body = json.loads(request.body)
    n = _django_record(request)
    if request.GET.get("gate"):
        request.META[CURRENT].effects.hold()
    response = JsonResponse({"charged": body.get("amount"), "execution": n}, status=201)
    response.set_cookie("session", "first-client-only")
    response["X-Charge-Id"] = f"ch_{n}"
    return response


def _flaky(request: Any) -> Any:
    from django.http import HttpResponse

    n = _django_record(request)
    if n == 1:
        return HttpResponse("try again", status=int(request.GET["status"]))
    return HttpResponse(f"ok after {n}")


def _boom(request: Any) -> Any:
    from django.http import HttpResponse

    if _django_record(request) == 1:
        raise RuntimeError("view crashed")
    return HttpResponse("recovered")


def _big(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    _django_record(request)
    body = chunks_of(int(request.GET["size"]))
    return StreamingHttpResponse(body, content_type="application/octet-stream")


def _echo(request: Any) -> Any:
    from django.http import HttpResponse

    _django_record(request)
    return HttpResponse(request.body, content_type="application/octet-stream")


def _thing(request: Any) -> Any:
    from django.http import JsonResponse

    _django_record(request)
    return JsonResponse({"ok": True})


def _urlpatterns() -> list[Any]:
    from django.urls import path

    return [
        path("charges", _charge),
        path("flaky", _flaky),
        path("boom", _boom),
        path("big", _big),
        path("echo", _echo),
        path("open/thing", _thing),
        path("strict/thing", _thing),
    ]


urlpatterns = _urlpatterns()


def django_app(current: Current, idempo: Mapping[str, Any]) -> Any:
    """Django's WSGI handler with the middleware configured from ``IDEMPO = idempo``."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings

    # The middleware reads its settings once, when the handler loads it.
    with override_settings(MIDDLEWARE=["idempo.django.IdempotencyMiddleware"], IDEMPO=idempo):
        handler = WSGIHandler()

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        environ[CURRENT] = current
        return handler(environ, start_response)

    return app


# -- servers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1, an ephemeral port, in a thread."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # uvicorn offers no event to wait on
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def serve_wsgi(app: Any, *, threads: int = 32) -> Iterator[str]:
    """Run ``app`` under waitress on 127.0.0.1, an ephemeral port, in a thread; the loop
    thread shuts the worker threads down and closes every socket when the block ends."""
    sockets: dict[int, Any] = {}
    server: Any = waitress.create_server(
        app,
        map=sockets,
        host="127.0.0.1",
        port=0,
        threads=threads,
        channel_timeout=30,
        connection_limit=1000,  # the burst scenarios open hundreds of connections at once
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


# -- the rig -----------------------------------------------------------------------------------


@dataclass
class StoreSpec:
    """Where a server keeps its keys: a URL and options, or (memory) a store object."""

    kind: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    backing: MemoryStore | None = None

    @classmethod
    def of(cls, kind: str, tmp_path: Path) -> StoreSpec:
        if kind == "memory":
            return cls(kind, "memory://", backing=MemoryStore())
        url, options = store_url(kind, tmp_path)
        return cls(kind, url, options)

    @contextlib.contextmanager
    def handle(self) -> Iterator[Store]:
        """A store of its own on the same data, as another worker would open."""
        if self.backing is not None:
            yield self.backing
            return
        store = open_store(self.url, **self.options)
        try:
            yield store
        finally:
            store.close()

    def cleanup(self) -> None:
        cleanup(self.kind, self.options)


@dataclass
class Http:
    """One adapter behind a real server: what a scenario needs to talk to it and inspect it."""

    adapter: str
    store: StoreSpec
    base: str
    current: Current

    @property
    def effects(self) -> Effects:
        return self.current.effects

    def fresh(self) -> Effects:
        """New effects and a new key prefix, so a test never meets another test's keys."""
        self.current.effects.release.set()
        self.current.effects = Effects(prefix=f"t{uuid.uuid4().hex[:10]}-")
        return self.current.effects

    def key(self, value: str, **headers: str) -> dict[str, str]:
        """The Idempotency-Key header for this test's key ``value`` (plus ``headers``)."""
        return {"Idempotency-Key": f'"{self.effects.prefix}{value}"', **headers}

    def bare_key(self, value: str) -> dict[str, str]:
        return {"Idempotency-Key": f"{self.effects.prefix}{value}"}

    def client(self, **options: Any) -> httpx.Client:
        options.setdefault("timeout", 30)
        return httpx.Client(base_url=self.base, **options)

    def async_client(self, **options: Any) -> httpx.AsyncClient:
        options.setdefault("timeout", 30)
        return httpx.AsyncClient(base_url=self.base, **options)


def _routes(module: Any, rules: list[dict[str, Any]]) -> list[Any]:
    return [module.Route(**rule) for rule in rules]


@contextlib.contextmanager
def serve_http(
    adapter: str, store: StoreSpec, *, shared: bool = False, **options: Any
) -> Iterator[Http]:
    """Serve the app behind ``adapter``'s middleware on ``store``, configured with the
    middleware's own ``options`` (``routes`` given as dicts of :class:`Route` fields).

    ``shared``: the one server of its kind alive (a module's), which Django may let open its
    store from the URL, closing it with :func:`idempo.django.close_stores`, which closes every
    such store in the process; other servers get a store object of their own.
    """
    current = Current()
    rules = options.pop("routes", [])
    if adapter == "asgi":
        import idempo.asgi

        asgi_store: Any = store.url
        if store.backing is not None:
            asgi_store = AsyncMemoryStore(store.backing)
        else:
            options["store_options"] = store.options
        app = starlette_app(current)
        app.add_middleware(
            idempo.asgi.IdempotencyMiddleware,
            store=asgi_store,
            routes=_routes(idempo.asgi, rules),
            **options,
        )
        with serve_asgi(app) as base:
            yield Http(adapter, store, base, current)
    elif adapter == "wsgi":
        import idempo.wsgi

        wsgi_store: Any = store.backing
        if wsgi_store is None:  # not "or": an empty MemoryStore is falsy
            wsgi_store = store.url
            options["store_options"] = store.options
        flask = flask_app(current)
        middleware = idempo.wsgi.IdempotencyMiddleware(
            flask.wsgi_app,
            store=wsgi_store,
            routes=_routes(idempo.wsgi, rules),
            **options,
        )
        flask.wsgi_app = middleware  # type: ignore[method-assign]
        try:
            with serve_wsgi(flask) as base:
                yield Http(adapter, store, base, current)
        finally:
            middleware.close()
    elif adapter == "django":
        with _django_store(store, shared) as (django_store, store_options):
            idempo = {"store": django_store, **store_options, "routes": rules, **options}
            with serve_wsgi(django_app(current, idempo)) as base:
                yield Http(adapter, store, base, current)
    else:
        raise ValueError(adapter)


@contextlib.contextmanager
def _django_store(store: StoreSpec, shared: bool) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The settings' store and store options (see :func:`serve_http`)."""
    from idempo.django import close_stores

    if store.backing is not None:
        yield store.backing, {}
    elif shared:
        try:
            yield store.url, {"store_options": store.options}
        finally:
            close_stores()
    else:
        with store.handle() as own:
            yield own, {}

"""The HTTP suite's rig: the app of :mod:`tests.http_apps` behind each adapter's public
middleware, served over a real socket (uvicorn for ASGI, waitress for WSGI and Django)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import waitress
from waitress import wasyncore

from idempo.stores import open_store
from idempo.stores.base import Store
from idempo.stores.memory import AsyncMemoryStore, MemoryStore
from tests.conftest import cleanup, store_url
from tests.http_apps import Current, Effects, django_app, flask_app, starlette_app

ADAPTERS = ("asgi", "wsgi", "django")


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


@contextlib.contextmanager
def serve_http(
    adapter: str, store: StoreSpec, *, shared: bool = False, **options: Any
) -> Iterator[Http]:
    """Serve the app behind ``adapter``'s middleware on ``store``, configured with the
    middleware's own ``options`` (``routes`` given as dicts of :class:`Route` fields).

    ``shared``: the one server of its kind alive (a module's). Django may then open its store
    from the URL, and close it with :func:`idempo.django.close_stores`, which closes every such
    store in the process; other servers get a store object of their own.
    """
    current = Current()
    serve = {"asgi": _asgi, "wsgi": _wsgi, "django": _django}[adapter]
    with serve(current, store, shared, options) as base:
        yield Http(adapter, store, base, current)


@contextlib.contextmanager
def _asgi(current: Current, store: StoreSpec, shared: bool, options: Any) -> Iterator[str]:
    import idempo.asgi

    options = {**options, "routes": [idempo.asgi.Route(**r) for r in options.get("routes", [])]}
    if store.backing is not None:
        options["store"] = AsyncMemoryStore(store.backing)
    else:
        options.update(store=store.url, store_options=store.options)
    app = starlette_app(current)
    app.add_middleware(idempo.asgi.IdempotencyMiddleware, **options)
    with serve_asgi(app) as base:
        yield base


@contextlib.contextmanager
def _wsgi(current: Current, store: StoreSpec, shared: bool, options: Any) -> Iterator[str]:
    import idempo.wsgi

    options = {**options, "routes": [idempo.wsgi.Route(**r) for r in options.get("routes", [])]}
    if store.backing is not None:
        options["store"] = store.backing
    else:
        options.update(store=store.url, store_options=store.options)
    flask = flask_app(current)
    middleware = idempo.wsgi.IdempotencyMiddleware(flask.wsgi_app, **options)
    flask.wsgi_app = middleware  # type: ignore[method-assign]
    try:
        with serve_wsgi(flask) as base:
            yield base
    finally:
        middleware.close()


@contextlib.contextmanager
def _django(current: Current, store: StoreSpec, shared: bool, options: Any) -> Iterator[str]:
    """``IDEMPO = options``, routes as dicts (the settings' own form)."""
    from idempo.django import close_stores

    if store.backing is not None:
        with serve_wsgi(django_app(current, {**options, "store": store.backing})) as base:
            yield base
    elif shared:
        settings = {**options, "store": store.url, "store_options": store.options}
        try:
            with serve_wsgi(django_app(current, settings)) as base:
                yield base
        finally:
            close_stores()
    else:
        with (
            store.handle() as own,
            serve_wsgi(django_app(current, {**options, "store": own})) as base,
        ):
            yield base

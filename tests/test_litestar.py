"""idempo's ASGI middleware in a Litestar app, over a real server (uvicorn), on SQLite and
Redis: replay, 409 while the first request runs, 422 on a reused key, one store for all
routes."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import uvicorn
from litestar import Litestar, Request, get, post
from litestar.middleware import DefineMiddleware
from litestar.params import Body

from idempo import open_async_store
from idempo.asgi import IdempotencyMiddleware
from tests.conftest import cleanup, store_url

STORES = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("redis", marks=pytest.mark.redis),
]


class Effects:
    """What the handlers did, per idempotency key; and a gate a slow handler waits at."""

    def __init__(self) -> None:
        self.by_key: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.entered = threading.Event()
        self.release = threading.Event()

    def record(self, request: Request[Any, Any, Any]) -> int:
        key = request.headers.get("idempotency-key", "-")
        with self.lock:
            self.by_key[key] += 1
            return self.by_key[key]


def make_app(effects: Effects, store: Any = None) -> Litestar:
    @post("/orders", status_code=201)
    async def create_order(
        request: Request[Any, Any, Any], data: Annotated[dict[str, Any], Body()]
    ) -> dict[str, Any]:
        return {"order": data, "run": effects.record(request)}

    @post("/slow", status_code=201)
    async def slow(request: Request[Any, Any, Any]) -> dict[str, Any]:
        effects.entered.set()
        await asyncio.to_thread(effects.release.wait, 10)
        return {"run": effects.record(request)}

    @get("/health")
    async def health() -> str:
        return "ok"

    if store is None:  # the whole app is wrapped instead
        return Litestar(route_handlers=[create_order, slow, health])
    return Litestar(
        route_handlers=[create_order, slow, health],
        # One store for every route: Litestar builds the middleware once per route handler, so
        # a URL here would open a connection pool per route.
        middleware=[DefineMiddleware(IdempotencyMiddleware, store=store, lease=5)],
        on_shutdown=[store.close],
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


@pytest.fixture(params=STORES)
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Effects]]:
    url, options = store_url(request.param, tmp_path)
    effects = Effects()
    with serve(make_app(effects, open_async_store(url, **options))) as base:
        yield base, effects
    effects.release.set()
    cleanup(request.param, options)


def k(value: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{value}"'}


def test_a_retry_is_replayed_and_the_handler_runs_once(service: tuple[str, Effects]) -> None:
    """Same key, same body: the kept 201 and body, marked replayed; one effect."""
    base, effects = service
    with httpx.Client(base_url=base) as client:
        first = client.post("/orders", json={"sku": "a"}, headers=k("k1"))
        again = client.post("/orders", json={"sku": "a"}, headers=k("k1"))
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json() == {"order": {"sku": "a"}, "run": 1}
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert effects.by_key['"k1"'] == 1


def test_a_duplicate_while_the_first_runs_gets_409(service: tuple[str, Effects]) -> None:
    """While the first request is in the handler, its duplicate is refused with 409 and a
    Retry-After; once it finishes, the duplicate is replayed."""
    base, effects = service
    results: dict[str, httpx.Response] = {}

    def first() -> None:
        with httpx.Client(base_url=base, timeout=20) as client:
            results["first"] = client.post("/slow", headers=k("slow-1"))

    thread = threading.Thread(target=first)
    thread.start()
    assert effects.entered.wait(10)
    with httpx.Client(base_url=base) as client:
        dup = client.post("/slow", headers=k("slow-1"))
        assert dup.status_code == 409
        assert dup.headers["content-type"].startswith("application/problem+json")
        assert "retry-after" in dup.headers
        effects.release.set()
        thread.join(20)
        assert results["first"].status_code == 201
        later = client.post("/slow", headers=k("slow-1"))
    assert later.status_code == 201
    assert later.headers["idempotent-replayed"] == "true"
    assert later.json() == results["first"].json() == {"run": 1}
    assert effects.by_key['"slow-1"'] == 1


def test_a_reused_key_with_another_body_gets_422(service: tuple[str, Effects]) -> None:
    """Same key, another body: 422 problem+json, and the handler does not run again."""
    base, effects = service
    with httpx.Client(base_url=base) as client:
        assert client.post("/orders", json={"sku": "a"}, headers=k("k2")).status_code == 201
        reused = client.post("/orders", json={"sku": "b"}, headers=k("k2"))
    assert reused.status_code == 422
    assert reused.headers["content-type"].startswith("application/problem+json")
    assert reused.json()["type"].endswith("key-reused")
    assert effects.by_key['"k2"'] == 1


def test_unguarded_requests_pass_through(service: tuple[str, Effects]) -> None:
    """A GET, and a POST without a key, reach the handler every time."""
    base, effects = service
    with httpx.Client(base_url=base) as client:
        assert client.get("/health").text == "ok"
        runs = [client.post("/orders", json={"sku": "c"}).json()["run"] for _ in range(2)]
    assert runs == [1, 2]
    assert effects.by_key["-"] == 2


def test_wrapping_the_whole_app_works_too(tmp_path: Path) -> None:
    """IdempotencyMiddleware(Litestar(...), store=URL) guards every route: replay and 422."""
    effects = Effects()
    app = IdempotencyMiddleware(make_app(effects), store=f"sqlite:///{tmp_path / 'i.db'}")
    with serve(app) as base, httpx.Client(base_url=base) as client:
        first = client.post("/orders", json={"sku": "w"}, headers=k("w1"))
        again = client.post("/orders", json={"sku": "w"}, headers=k("w1"))
        assert client.post("/orders", json={"sku": "v"}, headers=k("w1")).status_code == 422
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert effects.by_key['"w1"'] == 1

"""idempo.testing.helpers: the checks users run on their own functions and endpoints pass on
idempotent code, fail with a clear message on code that is not, and the bypass is explicit."""

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
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from idempo import Idempotency
from idempo.asgi import IdempotencyMiddleware
from idempo.errors import InProgressError
from idempo.testing.helpers import (
    assert_endpoint_idempotent,
    assert_endpoint_idempotent_async,
    assert_endpoint_idempotent_concurrently,
    assert_endpoint_idempotent_concurrently_async,
    assert_endpoint_rejects_reuse,
    assert_endpoint_rejects_reuse_async,
    assert_idempotent,
    assert_idempotent_async,
    assert_idempotent_concurrently,
    assert_idempotent_concurrently_async,
    assert_rejects_reuse,
    assert_rejects_reuse_async,
)
from tests.conftest import async_idempotency_on, cleanup, store_url, sync_idempotency_on

KINDS = [
    pytest.param("memory", marks=pytest.mark.memory),
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("redis", marks=pytest.mark.redis),
]


class Ledger:
    """Counts effects, thread-safely."""

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def add(self) -> int:
        with self.lock:
            self.n += 1
            return self.n

    def count(self) -> int:
        return self.n


@pytest.fixture(params=KINDS)
def idem(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Idempotency]:
    with sync_idempotency_on(request.param, tmp_path) as idem:
        yield idem


@pytest.fixture(params=KINDS)
async def aidem(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Idempotency]:
    async with async_idempotency_on(request.param, tmp_path) as idem:
        yield idem


# -- functions -------------------------------------------------------------------------------


def test_function_checks_pass_on_an_idempotent_function(idem: Idempotency) -> None:
    """Twice, concurrently and reused: all pass on a decorated def; one effect each."""
    ledger = Ledger()

    @idem.idempotent(key=lambda order_id, amount: order_id)
    def charge(order_id: str, amount: int) -> dict[str, Any]:
        return {"order": order_id, "amount": amount, "n": ledger.add()}

    assert assert_idempotent(lambda: charge("o-1", 5), effects=ledger.count)["order"] == "o-1"
    assert assert_idempotent_concurrently(lambda: charge("o-2", 5), effects=ledger.count)["n"] == 2
    assert_rejects_reuse(lambda: charge("o-3", 5), lambda: charge("o-3", 6), effects=ledger.count)
    assert ledger.n == 3


def test_function_checks_fail_on_a_plain_function() -> None:
    """An undecorated function fails each check, saying what went wrong."""
    ledger = Ledger()

    def charge(order_id: str, amount: int) -> int:
        return ledger.add()

    with pytest.raises(AssertionError, match="the repeat returned 2, the first call 1"):
        assert_idempotent(lambda: charge("o", 1))
    with pytest.raises(AssertionError, match="the effect happened 2 times"):
        assert_idempotent(lambda: 0 * charge("o", 1), effects=ledger.count)
    with pytest.raises(AssertionError, match="the effect happened 9 times"):
        assert_idempotent_concurrently(lambda: 0 * charge("o", 1), effects=ledger.count)
    with pytest.raises(AssertionError, match="ran instead of raising KeyReuseError"):
        assert_rejects_reuse(lambda: charge("o", 1), lambda: charge("o", 2))


def test_concurrent_check_accepts_in_progress_refusals(idem: Idempotency) -> None:
    """Duplicates refused while the first call runs (wait=0) count as idempotent: the first
    call is held until every other thread was refused, so the refusals are certain."""
    ledger = Ledger()
    gate = threading.Event()
    refused = Ledger()
    workers = 6

    @idem.idempotent(key=lambda order_id: order_id)
    def charge(order_id: str) -> int:
        assert gate.wait(10)
        return ledger.add()

    def call() -> int:
        try:
            return charge("o-held")
        except InProgressError:
            if refused.add() == workers - 1:
                gate.set()
            raise

    assert assert_idempotent_concurrently(call, effects=ledger.count, workers=workers) == 1
    assert refused.n == workers - 1


def test_concurrent_check_reports_an_unexpected_error(idem: Idempotency) -> None:
    """A call that fails with anything but InProgressError fails the check, chained."""

    @idem.idempotent(key=lambda x: x)
    def broken(x: str) -> int:
        raise ValueError("boom")

    with pytest.raises(AssertionError, match="a call raised ValueError") as info:
        assert_idempotent_concurrently(lambda: broken("x"), workers=3)
    assert isinstance(info.value.__cause__, ValueError)


async def test_async_function_checks(aidem: Idempotency) -> None:
    """The _async checks pass on a decorated async def, and fail on a plain one."""
    ledger = Ledger()

    @aidem.idempotent(key=lambda order_id, amount: order_id)
    async def charge(order_id: str, amount: int) -> int:
        await asyncio.sleep(0)  # a suspension point, so that the tasks interleave
        return ledger.add()

    async def count() -> int:  # an async effects callable is awaited
        return ledger.n

    assert await assert_idempotent_async(lambda: charge("a", 1), effects=count) == 1
    assert await assert_idempotent_concurrently_async(lambda: charge("b", 1), effects=count) == 2
    await assert_rejects_reuse_async(lambda: charge("c", 1), lambda: charge("c", 2), effects=count)

    async def plain() -> int:
        ledger.add()
        return 0

    with pytest.raises(AssertionError, match="the effect happened 9 times"):
        await assert_idempotent_concurrently_async(plain, effects=count)
    with pytest.raises(AssertionError, match="ran instead"):
        await assert_rejects_reuse_async(plain, plain)


# -- the bypass ------------------------------------------------------------------------------


async def test_wrapped_calls_the_function_without_idempo() -> None:
    """fn.__wrapped__ is the undecorated function: it runs every time and never touches the
    store (here an unreachable one), for def and async def."""
    idem = Idempotency("redis://127.0.0.1:1/0")
    ledger = Ledger()

    @idem.idempotent
    def charge(order_id: str) -> int:
        return ledger.add()

    @idem.idempotent
    async def acharge(order_id: str) -> int:
        return ledger.add()

    assert [charge.__wrapped__("o"), charge.__wrapped__("o")] == [1, 2]  # type: ignore[attr-defined]
    assert await acharge.__wrapped__("o") == 3  # type: ignore[attr-defined]


# -- endpoints -------------------------------------------------------------------------------


class Effects:
    """Orders created by the app, and a gate its slow route waits at."""

    def __init__(self) -> None:
        self.by_key: collections.Counter[str] = collections.Counter()
        self.gate = threading.Event()

    def total(self) -> int:
        return sum(self.by_key.values())


def make_app(effects: Effects) -> Starlette:
    async def create(request: Request) -> JSONResponse:
        body = await request.json()
        effects.by_key[request.headers.get("idempotency-key", "-")] += 1
        return JSONResponse({"order": body, "n": effects.total()}, status_code=201)

    async def held(request: Request) -> JSONResponse:
        await asyncio.to_thread(effects.gate.wait, 10)
        return await create(request)

    return Starlette(
        routes=[
            StarletteRoute("/orders", create, methods=["POST"]),
            StarletteRoute("/held", held, methods=["POST"]),
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


@pytest.fixture(params=[pytest.param("sqlite", marks=pytest.mark.sqlite)])
def guarded(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Effects]]:
    url, options = store_url(request.param, tmp_path)
    effects = Effects()
    app = make_app(effects)
    app.add_middleware(IdempotencyMiddleware, store=url, store_options=options, lease=5)
    with serve(app) as base:
        yield base, effects
    effects.gate.set()
    cleanup(request.param, options)


@pytest.fixture
def unguarded() -> Iterator[tuple[str, Effects]]:
    effects = Effects()
    with serve(make_app(effects)) as base:
        yield base, effects


def test_endpoint_checks_pass_behind_the_middleware(guarded: tuple[str, Effects]) -> None:
    """Twice, concurrently and reused: all pass, with a client or a base URL; one effect each."""
    base, effects = guarded
    order = {"json": {"sku": "a"}}
    with httpx.Client(base_url=base) as client:
        first = assert_endpoint_idempotent(
            client, "POST", "/orders", effects=effects.total, **order
        )
        assert first.status_code == 201
        assert_endpoint_idempotent_concurrently(
            client, "POST", "/orders", effects=effects.total, **order
        )
        reused = assert_endpoint_rejects_reuse(
            client,
            "POST",
            "/orders",
            changed={"json": {"sku": "b"}},
            effects=effects.total,
            **order,
        )
        assert reused.status_code == 422
    assert_endpoint_idempotent(base, "POST", "/orders", effects=effects.total, **order)
    assert effects.total() == 4


def test_concurrent_endpoint_check_accepts_409s(guarded: tuple[str, Effects]) -> None:
    """While the original request is held in the handler, every duplicate gets 409; the check
    passes and the handler ran once. The transport opens the gate after the last 409."""
    base, effects = guarded
    workers = 5
    conflicts = 0
    lock = threading.Lock()

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            nonlocal conflicts
            response = super().handle_request(request)
            if response.status_code == 409:
                with lock:
                    conflicts += 1
                    if conflicts == workers - 1:
                        effects.gate.set()
            return response

    with httpx.Client(base_url=base, transport=Counting(), timeout=20) as client:
        original = assert_endpoint_idempotent_concurrently(
            client, "POST", "/held", json={"sku": "h"}, workers=workers, effects=effects.total
        )
    assert original.status_code == 201
    assert conflicts == workers - 1


async def test_async_endpoint_checks(guarded: tuple[str, Effects]) -> None:
    """The _async checks pass with an httpx.AsyncClient and with a base URL."""
    base, effects = guarded
    order = {"json": {"sku": "z"}}
    async with httpx.AsyncClient(base_url=base) as client:
        await assert_endpoint_idempotent_async(
            client, "POST", "/orders", effects=effects.total, **order
        )
        await assert_endpoint_idempotent_concurrently_async(
            client, "POST", "/orders", effects=effects.total, **order
        )
    await assert_endpoint_rejects_reuse_async(
        base, "POST", "/orders", changed={"json": {"sku": "y"}}, effects=effects.total, **order
    )
    assert effects.total() == 3


def test_endpoint_checks_fail_without_the_middleware(unguarded: tuple[str, Effects]) -> None:
    """Without idempo on the route, each check fails and says why."""
    base, _ = unguarded
    order = {"json": {"sku": "a"}}
    with pytest.raises(AssertionError, match="is the idempotency middleware mounted"):
        assert_endpoint_idempotent(base, "POST", "/orders", **order)
    with pytest.raises(AssertionError, match="8 requests ran the handler, expected one"):
        assert_endpoint_idempotent_concurrently(base, "POST", "/orders", **order)
    with pytest.raises(AssertionError, match="got 201, expected 422"):
        assert_endpoint_rejects_reuse(base, "POST", "/orders", changed={"json": {}}, **order)

"""A real client: stripe-python against an API behind idempo's middleware, through a proxy that
drops replies. It reuses its key on retries and accepts idempo's replays; a final 409 stops it
at once (decision 0006) instead of spending its retry budget."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

stripe = pytest.importorskip("stripe")

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route as StarletteRoute  # noqa: E402

from idempo.asgi import IdempotencyMiddleware  # noqa: E402
from tests.http_rig import serve_asgi as serve  # noqa: E402


class Ledger:
    """What the API did: charges made, and every request that reached the server."""

    def __init__(self) -> None:
        self.charges: list[dict[str, Any]] = []
        self.requests = 0
        self.keys: list[str | None] = []


def make_api(ledger: Ledger, db: Path) -> Any:
    async def create_charge(request: Request) -> Response:
        form = parse_qs((await request.body()).decode())
        amount = int(form["amount"][0])
        charge = {"id": f"ch_{len(ledger.charges) + 1}", "object": "charge", "amount": amount}
        ledger.charges.append(charge)
        if amount > 1000:  # a response too large to keep (max_response_bytes below)
            charge = {**charge, "description": "x" * 2000}
        return JSONResponse(charge)

    app = Starlette(routes=[StarletteRoute("/v1/charges", create_charge, methods=["POST"])])
    guarded = IdempotencyMiddleware(app, f"sqlite:///{db}", max_response_bytes=1000)

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            ledger.requests += 1
            headers = dict(scope["headers"])
            key = headers.get(b"idempotency-key")
            ledger.keys.append(key.decode() if key else None)
        await guarded(scope, receive, send)

    return counting


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 that forwards requests, and drops the next ``drop`` replies:
    once the server has answered (its first reply bytes arrive), the client's connection is
    closed instead, as a network that loses the reply would."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.drop = 0
        self.dropped = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._shutdown())
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def requests() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await client_r.read(65536):
                    up_w.write(data)
                    await up_w.drain()

        pump = asyncio.ensure_future(requests())
        try:
            while data := await up_r.read(65536):
                if self.drop > 0:
                    self.drop -= 1
                    self.dropped += 1
                    return  # the reply is lost: close the client's connection unanswered
                client_w.write(data)
                await client_w.drain()
        except ConnectionError:
            pass
        finally:
            pump.cancel()
            for writer in (client_w, up_w):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    def __enter__(self) -> DroppingProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[Any, Ledger, DroppingProxy]]:
    ledger = Ledger()
    with serve(make_api(ledger, tmp_path / "idempo.db")) as base:
        port = int(base.rsplit(":", 1)[1])
        with DroppingProxy(port) as proxy:
            client = stripe.StripeClient(
                "sk_test_idempo",
                base_addresses={"api": f"http://127.0.0.1:{proxy.port}"},
                max_network_retries=5,
            )
            yield client, ledger, proxy


def test_stripe_python_retry_after_a_lost_reply_is_replayed(
    api: tuple[Any, Ledger, DroppingProxy],
) -> None:
    """The charge's reply is lost; stripe-python retries with the same key and gets the first
    charge back, replayed: one charge, not two."""
    client, ledger, proxy = api
    proxy.drop = 1
    charge = client.v1.charges.create(params={"amount": 10, "currency": "usd"})
    assert proxy.dropped == 1
    assert len(ledger.charges) == 1
    assert charge.id == ledger.charges[0]["id"]
    assert charge.amount == 10
    assert ledger.requests == 2
    assert ledger.keys[0] is not None
    assert ledger.keys[0] == ledger.keys[1]  # the SDK reused its key


def test_stripe_python_stops_at_a_final_409(api: tuple[Any, Ledger, DroppingProxy]) -> None:
    """The first response was too large to keep and its reply was lost: the retry gets the
    final 409 with Stripe-Should-Retry: false, and the SDK raises at once instead of retrying
    it until its budget (5) runs out. The charge ran once."""
    client, ledger, proxy = api
    proxy.drop = 1
    with pytest.raises(stripe.StripeError) as info:
        client.v1.charges.create(params={"amount": 5000, "currency": "usd"})
    assert info.value.http_status == 409
    assert len(ledger.charges) == 1
    assert ledger.requests == 2

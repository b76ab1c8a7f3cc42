"""Prometheus without a collector: the documented one-liner serves idempo's metrics on
/metrics. In a process of its own: the global meter provider can be set only once."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("opentelemetry.exporter.prometheus")

SCRIPT = textwrap.dedent(
    """
    import asyncio, httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Mount, Route
    from idempo.asgi import IdempotencyMiddleware
    from idempo.prometheus import metrics_app

    async def charge(request):
        return JSONResponse({"ok": True}, status_code=201)

    app = Starlette(routes=[Route("/charges", charge, methods=["POST"])])
    app.mount("/metrics", metrics_app())        # the one-liner
    app.add_middleware(IdempotencyMiddleware, store="memory://")

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for _ in range(3):
                await c.post("/charges", json={}, headers={"Idempotency-Key": '"p1"'})
            print((await c.get("/metrics/")).text)

    asyncio.run(main())
    """
)


def test_metrics_endpoint_serves_idempo_operations() -> None:
    """After one execution and two replays, /metrics shows them as Prometheus counters, and the
    store's round trips as a histogram."""
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    lines = [line for line in out.splitlines() if line.startswith("idempo_")]
    executed = [line for line in lines if 'idempo_outcome="executed"' in line]
    replayed = [line for line in lines if 'idempo_outcome="replayed"' in line]
    assert executed, out
    assert executed[0].startswith("idempo_operations_total{")
    assert 'idempo_kind="http"' in executed[0]
    assert 'idempo_store="memory"' in executed[0]
    assert executed[0].endswith(" 1.0")
    assert replayed[0].endswith(" 2.0")
    assert any(line.startswith("idempo_store_duration_seconds_count{") for line in lines)

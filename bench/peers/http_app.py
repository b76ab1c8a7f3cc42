"""The app bench_peers.py serves: ``POST /charges`` behind one library's middleware.

``IDEMPO_PEER``: a name from peers.registry, or ``bare`` (no middleware). ``IDEMPO_PEER_STORE``:
``memory`` or ``redis``; ``IDEMPO_PEER_REDIS_URL`` and ``IDEMPO_PEER_PREFIX`` for Redis.

The endpoint reads the body in every configuration (as bench/http_app.py does) and puts its run
count in the response, so that a re-execution cannot pass for a replay.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from peers.common import starlette_app
from peers.registry import load

RUNS = [0]


async def charges(request: Request) -> JSONResponse:
    body = await request.body()
    RUNS[0] += 1
    return JSONResponse(
        {"id": f"ch_{RUNS[0]}", "object": "charge", "amount": 1000, "size": len(body)},
        status_code=201,
    )


def build() -> Any:
    name = os.environ.get("IDEMPO_PEER", "bare")
    if name == "bare":
        return starlette_app(charges)
    adapter = load(name)
    if isinstance(adapter, str):
        raise RuntimeError(adapter)
    return adapter.http(
        charges,
        os.environ["IDEMPO_PEER_STORE"],
        os.environ.get("IDEMPO_PEER_REDIS_URL", ""),
        os.environ.get("IDEMPO_PEER_PREFIX", "bench-peers-http:"),
    )


app = build()

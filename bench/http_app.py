"""The app the HTTP benchmark serves: ``POST /charges`` answering 201 with a small JSON body.

    IDEMPO_BENCH_STORE=memory:// uvicorn --app-dir bench http_app:app

``IDEMPO_BENCH_STORE``: a store URL, or empty (or unset) for the bare endpoint with no
middleware at all. ``IDEMPO_BENCH_STORE_OPTIONS``: a JSON object passed to the store's
constructor (``{"prefix": "..."}`` for Redis, ``{"schema": "..."}`` for PostgreSQL).

The handler reads the body in every configuration, so the bare baseline pays for the same
request parsing as the guarded one; the middleware's own work is the only difference.
"""

from __future__ import annotations

import json
import os
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from idempo.asgi import IdempotencyMiddleware

STORE = os.environ.get("IDEMPO_BENCH_STORE", "")
STORE_OPTIONS: dict[str, Any] = json.loads(os.environ.get("IDEMPO_BENCH_STORE_OPTIONS") or "{}")


async def charges(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse(
        {"id": "ch_1", "object": "charge", "amount": 1000, "currency": "eur", "size": len(body)},
        status_code=201,
    )


middleware = (
    [Middleware(IdempotencyMiddleware, store=STORE, store_options=STORE_OPTIONS)] if STORE else []
)

app = Starlette(routes=[Route("/charges", charges, methods=["POST"])], middleware=middleware)

"""idempo itself: the decorator, and the ASGI middleware."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.middleware import Middleware

from idempo import Idempotency
from idempo.asgi import IdempotencyMiddleware

from .common import Endpoint, starlette_app

DIST = "idempo"
HTTP = True


def function(kind: str, store: str, url: str, prefix: str, body: Callable[..., Any]) -> Any:
    options = {"prefix": prefix} if store == "redis" else {}
    idem = Idempotency(url, ttl=600, lease=30, store_options=options)
    wrapped = idem.idempotent(key=lambda order_id: order_id, name="bench-peers")(body)
    wrapped.bench_close = idem.close  # type: ignore[attr-defined]
    return wrapped


def http(endpoint: Endpoint, store: str, url: str, prefix: str) -> Any:
    target = "memory://" if store == "memory" else url
    options = {"prefix": prefix} if store == "redis" else {}
    return starlette_app(
        endpoint, [Middleware(IdempotencyMiddleware, store=target, store_options=options)]
    )

"""idempo with its opt-in replay cache (``replay_cache=2``, decision 0013): a retry of a key this
process saw completed within 2 s is answered from memory, with no round trip."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.middleware import Middleware

from idempo import Idempotency
from idempo.asgi import IdempotencyMiddleware

from .common import Endpoint, starlette_app

DIST = "idempo"
HTTP = True
CACHE_SECONDS = 2.0


def function(kind: str, store: str, url: str, prefix: str, body: Callable[..., Any]) -> Any:
    options = {"prefix": prefix} if store == "redis" else {}
    idem = Idempotency(url, ttl=600, lease=30, store_options=options, replay_cache=CACHE_SECONDS)
    wrapped = idem.idempotent(key=lambda order_id: order_id, name="bench-peers-cached")(body)
    wrapped.bench_close = idem.close  # type: ignore[attr-defined]
    return wrapped


def http(endpoint: Endpoint, store: str, url: str, prefix: str) -> Any:
    target = "memory://" if store == "memory" else url
    options = {"prefix": prefix} if store == "redis" else {}
    middleware = Middleware(
        IdempotencyMiddleware, store=target, store_options=options, replay_cache=CACHE_SECONDS
    )
    return starlette_app(endpoint, [middleware])

"""fastidempotent: its ``IdempotencyMiddleware`` (a Starlette BaseHTTPMiddleware)."""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware

from .common import Endpoint, starlette_app

DIST = "fastidempotent"
HTTP = True


def function(kind: str, store: str, url: str, prefix: str, body: Any) -> Any:
    return None  # its decorator guards FastAPI routes (it needs the Request)


def http(endpoint: Endpoint, store: str, url: str, prefix: str) -> Any:
    from fastidempotent import MemoryBackend
    from fastidempotent.middleware import IdempotencyMiddleware

    if store == "memory":
        backend: Any = MemoryBackend()
    else:
        import redis.asyncio
        from fastidempotent.backends.redis import RedisBackend

        # An explicit client, so no init() (which the middleware never calls) is needed.
        backend = RedisBackend(key_prefix=prefix, client=redis.asyncio.Redis.from_url(url))
    return starlette_app(endpoint, [Middleware(IdempotencyMiddleware, backend=backend)])

"""asgi-idempotency-header: ``IdempotencyHeaderMiddleware`` with its memory or Redis backend."""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware

from .common import Endpoint, starlette_app

DIST = "asgi-idempotency-header"
HTTP = True


def function(kind: str, store: str, url: str, prefix: str, body: Any) -> Any:
    return None  # HTTP only


def http(endpoint: Endpoint, store: str, url: str, prefix: str) -> Any:
    from idempotency_header_middleware import IdempotencyHeaderMiddleware

    if store == "memory":
        from idempotency_header_middleware.backends.memory import MemoryBackend

        backend: Any = MemoryBackend()
    else:
        import redis.asyncio
        from idempotency_header_middleware.backends.redis import RedisBackend

        backend = RedisBackend(
            redis.asyncio.Redis.from_url(url),
            keys_key=prefix + "keys",
            response_key=prefix + "responses:",
        )
    return starlette_app(endpoint, [Middleware(IdempotencyHeaderMiddleware, backend=backend)])

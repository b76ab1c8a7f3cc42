"""fastapi-idempotency-key: its ASGI ``IdempotencyMiddleware`` (Starlette or FastAPI)."""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware

from .common import Endpoint, starlette_app

DIST = "fastapi-idempotency-key"
HTTP = True


def function(kind: str, store: str, url: str, prefix: str, body: Any) -> Any:
    return None  # its decorator guards FastAPI routes (it needs the Request)


def http(endpoint: Endpoint, store: str, url: str, prefix: str) -> Any:
    from fastapi_idempotency_key import IdempotencyMiddleware, MemoryBackend, RedisBackend

    backend = MemoryBackend() if store == "memory" else RedisBackend(redis_url=url, prefix=prefix)
    return starlette_app(endpoint, [Middleware(IdempotencyMiddleware, backend=backend)])

"""idemkit: the async ``idempotent`` decorator and the ASGI ``IdempotencyMiddleware``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.middleware import Middleware

from .common import Endpoint, starlette_app

DIST = "idemkit"
HTTP = True


def _backend(store: str, url: str, prefix: str) -> Any:
    if store == "memory":
        from idemkit import InMemoryBackend

        return InMemoryBackend()
    import redis.asyncio
    from idemkit.backends.redis import RedisBackend

    return RedisBackend(redis.asyncio.Redis.from_url(url), namespace=prefix)


def function(kind: str, store: str, url: str, prefix: str, body: Callable[..., Any]) -> Any:
    if kind != "async" or store != "redis":
        return None  # idempotent_sync exists, but runs the async core on a thread's loop
    from idemkit import MethodConfig, idempotent

    config = MethodConfig(key_fields=["order_id"], scope=lambda _args: "bench")
    return idempotent(backend=_backend(store, url, prefix), config=config)(body)


def http(endpoint: Endpoint, store: str, url: str, prefix: str) -> Any:
    from idemkit import HttpConfig, IdempotencyMiddleware

    # single_tenant: the default "warn" mode logs a warning on every request without a scope.
    config = HttpConfig(scope_mode="single_tenant")
    backend = _backend(store, url, prefix)
    return starlette_app(
        endpoint, [Middleware(IdempotencyMiddleware, backend=backend, config=config)]
    )

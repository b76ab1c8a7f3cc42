"""idempotency-kit: ``async_idempotent`` with the Redis repository (async, Redis only)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DIST = "idempotency-kit"
HTTP = False


def function(kind: str, store: str, url: str, prefix: str, body: Callable[..., Any]) -> Any:
    if kind != "async" or store != "redis":
        return None
    import redis.asyncio
    from idempotency_kit import (
        AsyncIdempotencyCoordinator,
        IdempotencyDomainService,
        JsonResultAdapter,
        async_idempotent,
    )
    from idempotency_kit.infra.storage.redis.aio import RedisAsyncIdempotencyRepository

    repository = RedisAsyncIdempotencyRepository(
        redis.asyncio.Redis.from_url(url), key_prefix=prefix
    )
    coordinator = AsyncIdempotencyCoordinator(repository, IdempotencyDomainService())

    @async_idempotent("bench-peers", JsonResultAdapter(), key_param="idempotency_key")
    async def guarded(idempotency_key: str, coordinator: Any) -> Any:
        return await body(idempotency_key)

    return lambda order_id: guarded(order_id, coordinator=coordinator)


def http(endpoint: Any, store: str, url: str, prefix: str) -> Any:
    return None  # no HTTP surface

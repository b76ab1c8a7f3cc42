"""pyidempotent: the ``idempotent`` decorator (async-first; a Request argument gives the key)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from .common import Endpoint, starlette_app

DIST = "pyidempotent"
HTTP = True


def _backend(store: str, url: str, prefix: str) -> Any:
    if store == "memory":
        from pyidempotent.backends.memory import MemoryBackend

        return MemoryBackend()
    import redis.asyncio
    from pyidempotent.backends.redis import RedisBackend

    return RedisBackend(redis.asyncio.Redis.from_url(url), prefix=prefix)


def function(kind: str, store: str, url: str, prefix: str, body: Callable[..., Any]) -> Any:
    # Its sync wrapper runs asyncio.run() per call around an async backend (a new loop each
    # time, which the redis.asyncio client does not survive): async only.
    if kind != "async" or store != "redis":
        return None
    from pyidempotent import idempotent

    return idempotent(
        _backend(store, url, prefix), key_extractor=lambda order_id, _key_header=None: order_id
    )(body)


def http(endpoint: Endpoint, store: str, url: str, prefix: str) -> Any:
    from pyidempotent import idempotent

    # It stores the function's return value as JSON, so the guarded function returns the
    # response's parts and the route turns them back into a response.
    @idempotent(_backend(store, url, prefix))
    async def guarded(request: Request) -> dict[str, Any]:
        response = await endpoint(request)
        return {"status": response.status_code, "body": response.body.decode()}

    async def route(request: Request) -> JSONResponse:
        import json

        out = await guarded(request)
        return JSONResponse(json.loads(out["body"]), status_code=out["status"])

    return starlette_app(route)

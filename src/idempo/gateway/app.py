"""The gateway's ASGI app: the proxy under idempo's middleware, and the admin endpoints.

One app serves both listeners; a connection on the admin socket (told apart by its local port)
reaches ``/healthz``, ``/readyz`` and ``/metrics`` only, never the upstream.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from typing import Any

from idempo.asgi import IdempotencyMiddleware
from idempo.core.http import HttpOptions, Route, session_cookie
from idempo.errors import IdempoError
from idempo.gateway.config import GatewayConfig, parse_address
from idempo.gateway.proxy import Receive, Scope, Send, UpstreamProxy, send_problem
from idempo.stores import open_async_store
from idempo.stores.base import AsyncStore

__all__ = ["GatewayApp", "create_app", "http_options"]


def scope_function(
    headers: tuple[str, ...], cookies: tuple[str, ...], secret: str
) -> Callable[[Mapping[str, str]], str]:
    """The namespace of a request: a keyed hash of the configured credential headers, else of
    the first session cookie it carries, else ``anonymous`` (as the adapters' default)."""
    key = secret.encode()

    def principal(message: str) -> str:
        digest = hmac.new(key, message.encode("utf-8", "surrogateescape"), hashlib.sha256)
        return "principal:" + digest.hexdigest()[:40]

    def scope(request_headers: Mapping[str, str]) -> str:
        values = [request_headers.get(name, "") for name in headers]
        if any(values):
            return principal("\x00".join(values))
        cookie = request_headers.get("cookie")
        if cookie and cookies:
            session = session_cookie(cookie, cookies)
            if session:
                return principal(f"session {session}\x00")
        return "anonymous"

    return scope


def http_options(config: GatewayConfig) -> HttpOptions:
    """The middleware's options from the gateway's configuration."""
    return HttpOptions(
        required=config.required,
        methods=config.methods,
        routes=[
            Route(
                r.path,
                enabled=r.enabled,
                required=r.required,
                methods=None if r.methods is None else frozenset(r.methods),
            )
            for r in config.routes
        ],
        scope=scope_function(
            config.scope_headers, config.scope_cookies, os.environ.get("IDEMPO_SCOPE_SECRET", "")
        ),
        ttl=config.ttl,
        lease=config.lease,
        wait=config.wait,
        keep_server_errors=config.keep_server_errors,
        replay_cache=config.replay_cache or None,
        max_request_bytes=config.limits.max_request_bytes,
        max_response_bytes=config.limits.max_stored_bytes,
    )


class GatewayApp:
    """The root ASGI app of one gateway worker."""

    def __init__(
        self,
        config: GatewayConfig,
        store: AsyncStore | None = None,
        metrics: Any = None,
        admin_port: int | None = None,
    ) -> None:
        self.config = config
        self.store = (
            store if store is not None else open_async_store(config.store, **config.store_options)
        )
        self.proxy = UpstreamProxy(config)
        self.guarded = IdempotencyMiddleware(self.proxy, store=self.store, **http_options(config))
        # The bound port (the configuration may say 0): connections to it reach the admin app.
        if admin_port is None and config.admin:
            admin_port = parse_address(config.admin)[1]
        self.admin_port = admin_port
        self.metrics = metrics
        self._max_header = config.limits.max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            server = scope.get("server")
            if self.admin_port is not None and server and server[1] == self.admin_port:
                await self.admin(scope, receive, send)
                return
            size = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", ()))
            if size > self._max_header:
                await send_problem(
                    send, 431, "headers-too-large", "Request headers too large",
                    f"the request headers are over {self._max_header} bytes",
                )  # fmt: skip
                return
            await self.guarded(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.proxy.start()
                except Exception as exc:  # reported to the server, which exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.proxy.close()
                await self.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def admin(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if path == "/healthz":
            await _text(send, 200, b"ok\n")
        elif path == "/readyz":
            try:
                await asyncio.wait_for(self.store.get("idempo:gateway", "readyz"), 5.0)
            except (IdempoError, OSError, TimeoutError) as exc:
                await _text(send, 503, f"store unreachable: {type(exc).__name__}\n".encode())
            else:
                await _text(send, 200, b"ready\n")
        elif path == "/metrics" and self.metrics is not None:
            await self.metrics(scope, receive, send)
        else:
            await _text(send, 404, b"not found\n")


async def _text(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(config: GatewayConfig, admin_port: int | None = None) -> GatewayApp:
    """The app for ``config``, with Prometheus metrics on the admin listener when there is one
    and the extra is installed."""
    metrics = None
    if config.admin:
        try:
            from idempo.prometheus import metrics_app
        except ImportError:
            metrics = None
        else:
            metrics = metrics_app()
    return GatewayApp(config, metrics=metrics, admin_port=admin_port)


def from_environment() -> GatewayApp:
    """The app for any ASGI server (``granian --interface asgi --factory
    idempo.gateway.app:from_environment``): the TOML file in ``IDEMPO_GATEWAY_CONFIG``, with
    ``IDEMPO_GATEWAY_UPSTREAM`` and ``IDEMPO_GATEWAY_STORE`` over it. The admin endpoints are
    served only by ``idempo gateway``, which binds their port."""
    from dataclasses import replace

    from idempo.gateway.config import load

    path = os.environ.get("IDEMPO_GATEWAY_CONFIG")
    config = load(path) if path else GatewayConfig()
    config = replace(
        config,
        admin=None,
        upstream=os.environ.get("IDEMPO_GATEWAY_UPSTREAM") or config.upstream,
        store=os.environ.get("IDEMPO_GATEWAY_STORE") or config.store,
    )
    return GatewayApp(config.validate())

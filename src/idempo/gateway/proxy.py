"""The reverse proxy: an ASGI app that relays each request to the upstream, streaming both ways.

It knows nothing of idempotency: it runs under :class:`idempo.asgi.IdempotencyMiddleware`, which
claims, records and replays around it. What it owes the middleware is a faithful status: an
upstream that cannot be reached answers 502 and one that is too slow 504, both 5xx, which the
middleware releases (never kept), so a retry after the upstream recovers executes.

The upstream sees the upstream's own ``Host`` by default (virtual hosts and TLS names on the
upstream are the upstream's), the client's in ``X-Forwarded-Host`` and ``Forwarded``; set
``host = "client"`` to pass the client's ``Host`` instead.
"""

from __future__ import annotations

import json
from http.cookiejar import CookieJar, DefaultCookiePolicy
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from idempo.gateway.config import GatewayConfig

__all__ = ["HOP_BY_HOP", "UpstreamProxy", "problem_response"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# RFC 9110 section 7.6.1: per-connection headers, never forwarded either way (plus those the
# Connection header names). Host and Content-Length are set by the client library.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
_DROPPED_REQUEST = HOP_BY_HOP | {b"host", b"content-length"}
# The gateway's server stamps its own Date on every answer, replays included.
_DROPPED_RESPONSE = HOP_BY_HOP | {b"content-length", b"date"}

PROBLEM_BASE = "urn:idempo:problem:gateway-"


def problem_response(
    status: int, name: str, title: str, detail: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An RFC 9457 problem+json answer of the gateway's own (the upstream never saw it)."""
    body = json.dumps(
        {"type": PROBLEM_BASE + name, "title": title, "status": status, "detail": detail}
    ).encode()
    return (
        status,
        [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
        ],
        body,
    )


async def send_problem(send: Send, status: int, name: str, title: str, detail: str) -> None:
    status, headers, body = problem_response(status, name, title, detail)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    """The request body went over the limit while it streamed to the upstream."""


class _ClientGone(Exception):
    """The client disconnected while its body streamed to the upstream."""


class UpstreamProxy:
    """Relays HTTP requests to ``config.upstream`` over a pooled keep-alive client.

    ``start()`` opens the pool and ``close()`` closes it (the gateway's lifespan calls them).
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        parts = urlsplit(config.upstream)
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        self._pass_host = config.host == "client"
        self._limits = config.limits
        self.client: httpx.AsyncClient | None = None
        t = config.timeouts
        self._timeout = {"connect": t.connect, "read": t.read, "write": t.write, "pool": t.pool}

    async def start(self) -> None:
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=self.config.max_connections,
                max_keepalive_connections=self.config.max_connections,
                keepalive_expiry=30.0,
            ),
            follow_redirects=False,
            trust_env=False,
            # A proxy relays cookies, it never keeps them: a jar would hand one client's
            # session to the next.
            cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def _request_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        raw: list[tuple[bytes, bytes]] = scope.get("headers", [])
        dropped = set(_DROPPED_REQUEST)
        host = b""
        forwarded_for = b""
        forwarded = b""
        for name, value in raw:
            if name == b"connection":
                dropped.update(t.strip().lower() for t in value.split(b",") if t.strip())
            elif name == b"host":
                host = value
        headers: list[tuple[bytes, bytes]] = []
        for name, value in raw:
            if name in dropped:
                continue
            if name == b"x-forwarded-for":
                forwarded_for = value
            elif name == b"forwarded":
                forwarded = value
            elif name not in (b"x-forwarded-proto", b"x-forwarded-host"):
                headers.append((name, value))
        client = scope.get("client")
        ip = (client[0] if client else "unknown").encode("latin-1")
        proto = str(scope.get("scheme", "http")).encode("latin-1")
        # Appended to what the client sent: the last hop is the one this gateway saw.
        headers.append((b"x-forwarded-for", forwarded_for + b", " + ip if forwarded_for else ip))
        headers.append((b"x-forwarded-proto", proto))
        node = b'"[' + ip + b']"' if b":" in ip else ip
        element = b"for=" + node + b";proto=" + proto
        if host:
            headers.append((b"x-forwarded-host", host))
            element += b';host="' + host.replace(b'"', b"") + b'"'
        headers.append((b"forwarded", forwarded + b", " + element if forwarded else element))
        if self._pass_host and host:
            headers.append((b"host", host))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.client is not None, "the gateway's lifespan starts the proxy"
        limit = self._limits.max_request_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await send_problem(
                    send, 413, "request-too-large", "Request body too large",
                    f"the request body is over {limit} bytes, the most this gateway relays",
                )  # fmt: skip
                return
        path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        url = self._base + self._prefix + path.decode("latin-1")
        if query:
            url += "?" + query.decode("latin-1")
        method = scope["method"]
        # A bare Request, not client.build_request: only the client's headers go upstream, not
        # httpx's defaults (Accept-Encoding, User-Agent, ...).
        request = httpx.Request(
            method,
            url,
            headers=self._request_headers(scope),
            content=None
            if method in ("GET", "HEAD") and not _has_body(scope)
            else _body(receive, limit),
            # build_request would set this; httpcore applies no timeout without it.
            extensions={"timeout": self._timeout},
        )
        try:
            response = await self.client.send(request, stream=True)
        except _TooLarge:
            await send_problem(
                send, 413, "request-too-large", "Request body too large",
                f"the request body is over {limit} bytes, the most this gateway relays",
            )  # fmt: skip
            return
        except _ClientGone:
            return
        except httpx.TimeoutException as exc:
            await send_problem(
                send, 504, "upstream-timeout", "Upstream timed out",
                f"the upstream did not answer in time ({type(exc).__name__})",
            )  # fmt: skip
            return
        except (httpx.TransportError, OSError) as exc:
            await send_problem(
                send, 502, "upstream-unavailable", "Upstream unavailable",
                f"the upstream could not be reached ({type(exc).__name__})",
            )  # fmt: skip
            return
        try:
            await self._relay(response, send)
        finally:
            await response.aclose()

    async def _relay(self, response: httpx.Response, send: Send) -> None:
        limits = self._limits
        raw = response.headers.raw
        size = sum(len(k) + len(v) + 4 for k, v in raw)
        length = response.headers.get("content-length", "")
        if size > limits.max_header_bytes or (
            length.isdigit() and int(length) > limits.max_response_bytes
        ):
            what = "headers" if size > limits.max_header_bytes else "body"
            await send_problem(
                send, 502, "response-too-large", "Upstream response too large",
                f"the upstream's response {what} are over this gateway's limit",
            )  # fmt: skip
            return
        dropped = set(_DROPPED_RESPONSE)
        for name, value in raw:
            if name.lower() == b"connection":
                dropped.update(t.strip().lower() for t in value.split(b",") if t.strip())
        headers = [(k.lower(), v) for k, v in raw if k.lower() not in dropped]
        if length.isdigit():
            headers.append((b"content-length", length.encode()))
        chunks = response.aiter_raw()
        try:
            first = await anext(chunks, b"")
        except httpx.TimeoutException:
            await send_problem(
                send, 504, "upstream-timeout", "Upstream timed out",
                "the upstream did not send its body in time",
            )  # fmt: skip
            return
        except httpx.TransportError:
            await send_problem(
                send, 502, "upstream-unavailable", "Upstream failed",
                "the upstream closed the connection before its body",
            )  # fmt: skip
            return
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        sent = len(first)
        pending = first
        # One chunk held back, so the last one goes with more_body=False: the middleware keeps
        # the outcome before the client sees the end of the response.
        async for chunk in chunks:
            if not chunk:
                continue
            sent += len(chunk)
            if sent > limits.max_response_bytes:
                # Headers are gone: all that is left is to cut the response short, which the
                # client sees as an error and the middleware as an abandoned response.
                raise RuntimeError("the upstream's response is over the gateway's limit")
            await send({"type": "http.response.body", "body": pending, "more_body": True})
            pending = chunk
        await send({"type": "http.response.body", "body": pending, "more_body": False})


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False


async def _body(receive: Receive, limit: int) -> AsyncIterator[bytes]:
    """The request body as it arrives, refusing more than ``limit`` bytes."""
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return

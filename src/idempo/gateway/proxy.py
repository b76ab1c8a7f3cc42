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
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

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
# Content-Length stays: the body is relayed as it was framed, not re-chunked.
_DROPPED_REQUEST = HOP_BY_HOP | {b"host"}
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


class _BodyAborted(Exception):
    """The request body stopped short while it streamed to the upstream."""


class _Body:
    """The request body as it arrives, refusing more than ``limit`` bytes; says afterwards why
    it stopped, since the client library may wrap the exception."""

    __slots__ = ("client_gone", "limit", "receive", "too_large")

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive = receive
        self.limit = limit
        self.too_large = False
        self.client_gone = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_gone = True
                raise _BodyAborted
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                self.too_large = True
                raise _BodyAborted
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return


class UpstreamProxy:
    """Relays HTTP requests to ``config.upstream`` over a pooled keep-alive client (aiohttp:
    docs/decisions/0008-gateway-server-and-client.md).

    ``start()`` opens the pool and ``close()`` closes it (the gateway's lifespan calls them).
    """

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        parts = urlsplit(config.upstream)
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._prefix = parts.path.rstrip("/")
        self._pass_host = config.host == "client"
        self._limits = config.limits
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        t = self.config.timeouts
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self.config.max_connections, keepalive_timeout=30.0, ttl_dns_cache=10
            ),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=t.pool + t.connect, sock_connect=t.connect, sock_read=t.read
            ),
            # A proxy relays cookies, it never keeps them: a jar would hand one client's
            # session to the next.
            cookie_jar=aiohttp.DummyCookieJar(),
            # Only the client's headers go upstream, and the body as the upstream encoded it.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            auto_decompress=False,
            max_line_size=self._limits.max_header_bytes,
            max_field_size=self._limits.max_header_bytes,
            trust_env=False,
        )

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def _request_headers(self, scope: Scope) -> CIMultiDict[str]:
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
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in raw:
            if name in dropped:
                continue
            if name == b"x-forwarded-for":
                forwarded_for = value
            elif name == b"forwarded":
                forwarded = value
            elif name not in (b"x-forwarded-proto", b"x-forwarded-host"):
                headers.add(name.decode("latin-1"), value.decode("latin-1"))
        client = scope.get("client")
        ip = (client[0] if client else "unknown").encode("latin-1")
        proto = str(scope.get("scheme", "http")).encode("latin-1")
        # Appended to what the client sent: the last hop is the one this gateway saw.
        added = [(b"x-forwarded-for", forwarded_for + b", " + ip if forwarded_for else ip)]
        added.append((b"x-forwarded-proto", proto))
        node = b'"[' + ip + b']"' if b":" in ip else ip
        element = b"for=" + node + b";proto=" + proto
        if host:
            added.append((b"x-forwarded-host", host))
            element += b';host="' + host.replace(b'"', b"") + b'"'
        added.append((b"forwarded", forwarded + b", " + element if forwarded else element))
        if self._pass_host and host:
            added.append((b"host", host))
        for name, value in added:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.session is not None, "the gateway's lifespan starts the proxy"
        limit = self._limits.max_request_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _too_large(send, limit)
                return
        path = scope.get("raw_path") or scope["path"].encode("utf-8")
        query = scope.get("query_string", b"")
        url = self._base + self._prefix + path.decode("latin-1")
        if query:
            url += "?" + query.decode("latin-1")
        method = scope["method"]
        body = _Body(receive, limit) if _has_body(scope) else None
        try:
            response = await self.session.request(
                method,
                URL(url, encoded=True),
                headers=self._request_headers(scope),
                data=body.__aiter__() if body is not None else None,
                allow_redirects=False,
                compress=None,
            )
        except Exception as exc:
            if body is not None and body.too_large:
                await _too_large(send, limit)
            elif body is not None and body.client_gone:
                pass
            elif isinstance(exc, TimeoutError):
                await _timeout(send, "the upstream did not answer in time")
            elif isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientError | OSError):
                await send_problem(
                    send, 502, "upstream-unavailable", "Upstream unavailable",
                    f"the upstream could not be reached ({type(exc).__name__})",
                )  # fmt: skip
            else:
                raise
            return
        try:
            await self._relay(response, send)
        finally:
            response.release()

    async def _relay(self, response: aiohttp.ClientResponse, send: Send) -> None:
        limits = self._limits
        raw = response.raw_headers
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
        content = response.content
        try:
            first = await content.readany()
        except TimeoutError:
            await _timeout(send, "the upstream did not send its body in time")
            return
        except aiohttp.ClientError:
            await send_problem(
                send, 502, "upstream-unavailable", "Upstream failed",
                "the upstream closed the connection before its body",
            )  # fmt: skip
            return
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        sent = len(first)
        pending = first
        # One chunk held back, so the last one goes with more_body=False: the middleware keeps
        # the outcome before the client sees the end of the response.
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            sent += len(chunk)
            if sent > limits.max_response_bytes:
                # Headers are gone: all that is left is to cut the response short, which the
                # client sees as an error and the middleware as an abandoned response.
                raise RuntimeError("the upstream's response is over the gateway's limit")
            await send({"type": "http.response.body", "body": pending, "more_body": True})
            pending = chunk
        await send({"type": "http.response.body", "body": pending, "more_body": False})


async def _too_large(send: Send, limit: int) -> None:
    await send_problem(
        send, 413, "request-too-large", "Request body too large",
        f"the request body is over {limit} bytes, the most this gateway relays",
    )  # fmt: skip


async def _timeout(send: Send, detail: str) -> None:
    await send_problem(send, 504, "upstream-timeout", "Upstream timed out", detail)


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
            return True
    return False

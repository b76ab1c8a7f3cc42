"""Idempotency keys for any ASGI app (Starlette, FastAPI): pure ASGI middleware.

    app.add_middleware(IdempotencyMiddleware, store="sqlite:///idempo.db", required=False)

A guarded request (POST and PATCH by default) with an ``Idempotency-Key`` header is claimed in
the store before the app sees it. The app's response is captured on its way out (``send`` is
wrapped, as starlette's GZipMiddleware does) and kept before its last byte leaves, so a client
that got the response and retries is replayed, never told "in progress". All decisions are in
:mod:`idempo.core.http` and :mod:`idempo.core.decide`; this module moves bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any

from idempo._async.engine import AsyncEngine
from idempo.core.decide import Replay
from idempo.core.http import (
    DEFAULT_METHODS,
    HttpConfig,
    MissingKeyError,
    RequestTooLargeError,
    ResponseCapture,
    Route,
    default_scope,
    fingerprint_request,
    parse_key_header,
    problem,
    read_stored,
    record_for,
    record_for_abandoned,
    replay_headers,
)
from idempo.core.keys import validate_scope
from idempo.core.policy import DEFAULT_LEASE, DEFAULT_TTL, Policy
from idempo.errors import (
    IdempoError,
    OutcomeNotStoredError,
    StoreUnavailableError,
)
from idempo.stores import open_async_store
from idempo.stores.base import AsyncStore

__all__ = ["IdempotencyMiddleware", "Route"]

log = logging.getLogger("idempo")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class IdempotencyMiddleware:
    """Pure ASGI middleware giving guarded routes Idempotency-Key semantics.

    ``store``: a URL or an :class:`~idempo.stores.base.AsyncStore`. ``required``: answer 400
    when a guarded request has no key. ``methods``: the guarded methods (POST, PATCH).
    ``routes``: per-route rules (:class:`Route`), first match wins. ``scope``: a callable of
    the request headers (lower-case names) returning the principal's namespace (default: a hash
    of ``Authorization``/``X-API-Key``). ``ttl``, ``lease``, ``wait``: as for functions.
    ``keep_server_errors``: keep 5xx answers too (the IETF draft's choice). ``fail_open``: when
    the store is down, pass requests through unguarded instead of answering 503 (unsafe: a retry
    may then run twice).
    """

    def __init__(
        self,
        app: ASGIApp,
        store: str | AsyncStore = "sqlite:///idempo.db",
        *,
        required: bool = False,
        methods: Iterable[str] = DEFAULT_METHODS,
        routes: Iterable[Route] = (),
        header: str = "Idempotency-Key",
        scope: Callable[[Mapping[str, str]], str] | None = None,
        ttl: float = DEFAULT_TTL,
        lease: float = DEFAULT_LEASE,
        wait: float = 0.0,
        keep_server_errors: bool = False,
        max_request_bytes: int = 1 << 20,
        max_response_bytes: int = 1 << 20,
        fail_open: bool = False,
        store_options: dict[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.config = HttpConfig.of(
            header=header,
            methods=methods,
            required=required,
            routes=routes,
            keep_server_errors=keep_server_errors,
            max_request_bytes=max_request_bytes,
            max_response_bytes=max_response_bytes,
            fail_open=fail_open,
        )
        self.policy = Policy(ttl=ttl, lease=lease, wait=wait)
        self._header = header.lower().encode("latin-1")
        self._scope_fn = scope or default_scope
        self._owns_store = isinstance(store, str)
        self.store = (
            open_async_store(store, **(store_options or {})) if isinstance(store, str) else store
        )
        self.engine = AsyncEngine(self.store)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self._owns_store:
            await self.app(scope, receive, self._closing_on_shutdown(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"].upper()
        path = scope.get("path", "")
        guarded, required = self.config.guard(method, path)
        if not guarded:
            await self.app(scope, receive, send)
            return
        raw_headers: list[tuple[bytes, bytes]] = scope.get("headers", [])
        key_values = [v.decode("latin-1") for k, v in raw_headers if k == self._header]
        try:
            key = parse_key_header(key_values)
            if key is None:
                if required:
                    raise MissingKeyError(f"this route requires an {self.config.header} header")
                await self.app(scope, receive, send)
                return
            body, more = await _read_body(receive, self.config.max_request_bytes)
        except IdempoError as exc:
            await _send_problem(send, exc, path)
            return
        if more is not None:
            # The client went away before its body arrived: claiming a key for a partial
            # request would tie the key to the wrong fingerprint. Nobody is left to answer.
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in raw_headers}
        try:
            principal = validate_scope(self._scope_fn(headers))
        except IdempoError as exc:
            await _send_problem(send, exc, path)
            return
        fp = fingerprint_request(
            method,
            path,
            scope.get("query_string", b"").decode("latin-1"),
            body,
            headers.get("content-type"),
        )
        try:
            decision = await self.engine.acquire(principal, key, fp, self.policy)
        except StoreUnavailableError as exc:
            if self.config.fail_open:
                log.warning(
                    "idempo: store unavailable, passing %s %s through (fail_open)", method, path
                )
                await self.app(scope, _replay_body(body, receive), send)
                return
            await _send_problem(send, exc, path, retry_after=self.config.unavailable_retry_after)
            return
        except IdempoError as exc:
            await _send_problem(send, exc, path)
            return
        if isinstance(decision, Replay):
            await self._replay(send, decision.outcome, principal, key, path)
            return
        await self._execute(
            scope, _replay_body(body, receive), send, principal, key, decision.token
        )

    def _closing_on_shutdown(self, send: Send) -> Send:
        """Close the store we opened when the server shuts the app down."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.store.close()
            await send(message)

        return wrapped

    async def _replay(self, send: Send, data: bytes, principal: str, key: str, path: str) -> None:
        try:
            stored = read_stored(data, key=key, scope=principal)
        except OutcomeNotStoredError as error:
            await _send_problem(send, error, path)
            return
        await send(
            {
                "type": "http.response.start",
                "status": stored.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1")) for k, v in replay_headers(stored)
                ],
            }
        )
        await send({"type": "http.response.body", "body": stored.body})

    async def _execute(
        self, scope: Scope, receive: Receive, send: Send, principal: str, key: str, token: str
    ) -> None:
        capture = ResponseCapture(self.config.max_response_bytes)
        engine, config, ttl = self.engine, self.config, self.policy.ttl

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                capture.start(
                    message["status"],
                    [
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in message.get("headers", [])
                    ],
                )
                await forward(message)
                return
            if message["type"] != "http.response.body":
                await forward(message)
                return
            capture.add(message.get("body", b""))
            if message.get("more_body", False):
                await forward(message)
                return
            # The last chunk: record the outcome before the client can see the end of the
            # response, so that a client that got it and retries is replayed.
            await engine.settle(principal, key, token, record_for(config, capture), ttl=ttl)
            capture.finished = True
            await forward(message)

        async def forward(message: Message) -> None:
            try:
                await send(message)
            except BaseException:
                capture.client_gone = True
                raise

        async def abandon() -> None:
            # The response stopped short. If the client went away after the handler answered,
            # its work is done: refuse a retry rather than run it twice (record_for_abandoned).
            # If the handler itself failed, release the key so that a retry runs again.
            data = record_for_abandoned(config, capture) if capture.client_gone else None
            await engine.settle(principal, key, token, data, ttl=ttl)

        try:
            async with engine.heartbeat(principal, key, token, self.policy):
                await self.app(scope, receive, send_wrapper)
        except BaseException:
            if not capture.finished:
                await abandon()
            raise
        if not capture.finished:
            # Returned without finishing the response: the app stopped streaming because the
            # client went away (Starlette's StreamingResponse does), or never answered.
            capture.client_gone = capture.client_gone or capture.started
            await abandon()


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, Message | None]:
    """Read the whole request body (to fingerprint it), refusing more than ``limit`` bytes.

    Returns the body and the message that ended it early (a disconnect), if any.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), message
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLargeError(
                f"the request body is over {limit} bytes, the most this endpoint reads to "
                "recognise a retried request"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), None


def _replay_body(body: bytes, receive: Receive) -> Receive:
    """A receive() that hands the app the body we read, once, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_problem(
    send: Send, error: IdempoError, path: str, *, retry_after: int | None = None
) -> None:
    status, headers, body = problem(error, instance=path)
    if retry_after is not None and not any(k == "retry-after" for k, _ in headers):
        headers.append(("retry-after", str(retry_after)))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        }
    )
    await send({"type": "http.response.body", "body": body})

"""Idempotency keys for any ASGI app (Starlette, FastAPI): pure ASGI middleware.

    app.add_middleware(IdempotencyMiddleware, store="sqlite:///idempo.db", required=False)

A guarded request (POST and PATCH by default) with an ``Idempotency-Key`` header is claimed in
the store before the app sees it. The app's response is captured on its way out (``send`` is
wrapped, as starlette's GZipMiddleware does) and kept before its last byte leaves, so a client
that got the response and retries is replayed, never told "in progress". Every decision is the
HTTP front's (:mod:`idempo._async.http`); this module translates ASGI to it and back.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Unpack

from idempo._async.http import AsyncHttpFront, AsyncRecorder
from idempo.core.http import Drop, HttpOptions, Pass, Respond, Route, too_large
from idempo.stores import open_async_store
from idempo.stores.base import AsyncStore

__all__ = ["HttpOptions", "IdempotencyMiddleware", "Route"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class IdempotencyMiddleware:
    """Pure ASGI middleware giving guarded routes Idempotency-Key semantics.

    ``store``: a URL or an :class:`~idempo.stores.base.AsyncStore`. The options are
    :class:`~idempo.core.http.HttpOptions` (``required``, ``methods``, ``routes``, ``scope``,
    ``ttl``, ``lease``, ``fail_open``, ...), the same for every adapter.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: str | AsyncStore = "sqlite:///idempo.db",
        **options: Unpack[HttpOptions],
    ) -> None:
        self.app = app
        self._owns_store = isinstance(store, str)
        self.store = (
            open_async_store(store, **(options.get("store_options") or {}))
            if isinstance(store, str)
            else store
        )
        self.front = AsyncHttpFront(self.store, options)
        self.store = self.front.store  # its cached view when replay_cache is on
        self.config = self.front.config
        self.policy = self.front.policy
        self._header = self.config.header.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self._owns_store:
            await self.app(scope, receive, self._closing_on_shutdown(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        action = await self.front.admit(_Request(scope, receive, self._header))
        if isinstance(action, AsyncRecorder):
            await self._execute(scope, _replay_body(action.body, receive), send, action)
        elif isinstance(action, Pass):
            body = action.body
            await self.app(scope, receive if body is None else _replay_body(body, receive), send)
        elif isinstance(action, Respond):
            await _send(send, action)
        else:
            assert isinstance(action, Drop)  # nobody is left to answer

    def _closing_on_shutdown(self, send: Send) -> Send:
        """Close the store we opened when the server shuts the app down."""

        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.store.close()
            await send(message)

        return wrapped

    async def _execute(
        self, scope: Scope, receive: Receive, send: Send, recorder: AsyncRecorder
    ) -> None:
        client_gone = False

        async def send_wrapper(message: Message) -> None:
            nonlocal client_gone
            kind = message["type"]
            if kind == "http.response.start":
                recorder.start(
                    message["status"],
                    [
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in message.get("headers", [])
                    ],
                )
            elif kind == "http.response.body":
                recorder.add(message.get("body", b""))
                if not message.get("more_body", False):
                    # The last chunk: record the outcome before the client can see the end of
                    # the response, so that a client that got it and retries is replayed.
                    await recorder.finish()
            try:
                await send(message)
            except BaseException:
                client_gone = True  # the app answered; the client did not take it
                raise

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            # The response stopped short. If the client went away after the app answered, its
            # work is done: refuse a retry rather than run it twice. If the app itself failed,
            # release the key so that a retry runs again.
            await recorder.abandon(client_gone=client_gone)
            raise
        if not recorder.settled:
            # Returned without finishing the response: the app stopped streaming because the
            # client went away (Starlette's StreamingResponse does), or never answered.
            await recorder.abandon(client_gone=client_gone or recorder.started)


class _Request:
    """An ASGI request as the HTTP front reads it."""

    __slots__ = ("_header", "_receive", "_scope", "method", "path")

    def __init__(self, scope: Scope, receive: Receive, header: bytes) -> None:
        self._scope = scope
        self._receive = receive
        self._header = header
        # Read on every request (the guard): plain attributes, not properties.
        self.method: str = scope["method"].upper()
        self.path: str = scope.get("path", "")

    @property
    def query(self) -> str:
        return bytes(self._scope.get("query_string", b"")).decode("latin-1")

    def key_values(self) -> list[str]:
        header = self._header
        return [v.decode("latin-1") for k, v in self._scope.get("headers", ()) if k == header]

    def headers(self) -> Mapping[str, str]:
        return {
            k.decode("latin-1").lower(): v.decode("latin-1")
            for k, v in self._scope.get("headers", ())
        }

    async def body(self, limit: int) -> bytes | None:
        body, more = await _read_body(self._receive, limit)
        return None if more is not None else body


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
            raise too_large(limit)
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


async def _send(send: Send, response: Respond) -> None:
    raw = response.raw_headers
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            # A new list every time: a middleware further out may edit it in place.
            "headers": list(raw)
            if raw is not None
            else [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers],
        }
    )
    await send({"type": "http.response.body", "body": response.body})

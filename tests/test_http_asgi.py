"""The ASGI middleware on raw ASGI messages, for what only ASGI has (a client gone before its
body arrived, or mid-stream), and the keyed scope hash it uses by default. The HTTP behaviour
every adapter shares is in ``test_http.py``."""

from __future__ import annotations

from typing import Any

import pytest

from idempo.asgi import IdempotencyMiddleware


async def test_client_gone_before_body_arrives_claims_nothing() -> None:
    """A request whose client disconnects mid-body is not claimed and not run."""
    from idempo.stores.memory import AsyncMemoryStore, MemoryStore

    ran = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(scope["path"])

    backing = MemoryStore()
    middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore(backing))
    messages = iter(
        [
            {"type": "http.request", "body": b'{"amou', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )
    sent: list[Any] = []

    async def receive() -> Any:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/charges",
        "headers": [(b"idempotency-key", b'"gone"')],
        "query_string": b"",
    }
    await middleware(scope, receive, send)
    assert ran == []
    assert sent == []
    assert len(backing) == 0


async def test_client_gone_mid_stream_refuses_the_retry() -> None:
    """The handler answered 201 and was streaming when the client went away (sending fails):
    the key keeps a not-stored marker, so the retry gets 409 and the handler runs once."""
    from idempo.stores.memory import AsyncMemoryStore

    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"part 1", "more_body": True})
        await send({"type": "http.response.body", "body": b"part 2", "more_body": False})

    middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore())
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/charges",
        "headers": [(b"idempotency-key", b'"gone"')],
        "query_string": b"",
    }

    async def receive() -> Any:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    sent: list[Any] = []

    async def flaky_send(message: Any) -> None:
        if message.get("body") == b"part 1":
            raise OSError("connection reset by peer")
        sent.append(message)

    with pytest.raises(OSError, match="reset"):
        await middleware(scope, receive, flaky_send)

    retry: list[Any] = []

    async def send(message: Any) -> None:
        retry.append(message)

    await middleware(scope, receive, send)
    assert retry[0]["status"] == 409
    assert b"not delivered in full" in retry[1]["body"]
    assert runs == [1]


def test_scope_hash_is_keyed_by_the_secret() -> None:
    """The stored scope is an HMAC of the credentials: without the secret it cannot be
    recomputed from a guessed password; the same secret gives the same scope everywhere."""
    import hashlib

    from idempo.core.http import scope_from_credentials

    headers = {"authorization": "Basic dXNlcjpzdW1tZXIyMDI0"}
    one = scope_from_credentials("s3cret")(headers)
    assert one == scope_from_credentials(b"s3cret")(headers)
    assert one != scope_from_credentials("other")(headers)
    unkeyed = hashlib.sha256(headers["authorization"].encode()).hexdigest()[:40]
    assert one != f"principal:{unkeyed}"
    assert scope_from_credentials("s3cret")({}) == "anonymous"


def _post(key: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/charges",
        "headers": [(b"idempotency-key", key), (b"content-type", b"application/json")],
        "query_string": b"",
    }


async def test_a_replay_is_decoded_once_but_every_request_gets_its_own_headers() -> None:
    """Replays of one outcome share its decoding, not the header list they send: a middleware
    further out that edits the headers in place (as Starlette's MutableHeaders does) changes
    only its own response, and a replay hook's header is added once per replay."""
    from idempo.observe import Hooks
    from idempo.stores.memory import AsyncMemoryStore

    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": b"{}"})

    def on_replay(event: Any) -> None:
        event.headers.append(("x-hook", "yes"))

    async def receive() -> Any:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    for hooks in (None, Hooks(on_replay=on_replay)):
        middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore(), hooks=hooks)
        starts: list[list[tuple[bytes, bytes]]] = []

        async def send(message: Any, starts: list[Any] = starts) -> None:
            if message["type"] == "http.response.start":
                starts.append(list(message["headers"]))
                message["headers"].append((b"x-outer", b"edited"))  # in place

        for _ in range(4):
            await middleware(_post(b'"k"'), receive, send)
        first, *replays = starts
        assert (b"idempotent-replayed", b"true") not in first
        for headers in replays:
            assert headers.count((b"idempotent-replayed", b"true")) == 1
            assert (b"x-outer", b"edited") not in headers
            assert (b"x-a", b"1") in headers
            assert headers.count((b"x-hook", b"yes")) == (hooks is not None)
    assert len(runs) == 2  # once per middleware: every other request was a replay


async def test_a_deleted_key_is_never_replayed_from_the_decoded_replays() -> None:
    """The memoised decoding is no cache of outcomes: the store is asked on every request, so
    once the key is deleted its next request runs the handler again."""
    from idempo.stores.memory import AsyncMemoryStore, MemoryStore

    runs: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        runs.append(1)
        await receive()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b'{"run":%d}' % len(runs)})

    async def receive() -> Any:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    bodies: list[bytes] = []

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])

    backing = MemoryStore()
    middleware = IdempotencyMiddleware(app, store=AsyncMemoryStore(backing))
    await middleware(_post(b'"d"'), receive, send)
    await middleware(_post(b'"d"'), receive, send)
    (scope,) = {scope for scope, _ in backing._records}
    assert backing.delete(scope, "d")
    await middleware(_post(b'"d"'), receive, send)
    assert bodies == [b'{"run":1}', b'{"run":1}', b'{"run":2}']
    assert len(runs) == 2

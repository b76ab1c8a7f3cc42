"""The WSGI middleware at the PEP 3333 corners, on raw WSGI apps: exceptions, ``write()``,
``exc_info``, ``close()``, the environ the app sees. The HTTP behaviour every adapter shares is
in ``test_http.py``."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from idempo.stores.memory import MemoryStore
from idempo.wsgi import IdempotencyMiddleware, Route

StartResponse = Callable[..., Callable[[bytes], object]]


class Body:
    """A response body iterable that records whether the server closed it."""

    def __init__(self, chunks: Iterable[bytes], fail_after: int | None = None) -> None:
        self.chunks = list(chunks)
        self.fail_after = fail_after
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if i == self.fail_after:
                raise RuntimeError("failed mid-stream")
            yield chunk

    def close(self) -> None:
        self.closed += 1


def call(
    middleware: IdempotencyMiddleware, body: bytes = b"", key: str = "raw", **environ: Any
) -> tuple[str, list[tuple[str, str]], bytes, Any]:
    """Call the middleware as a server would: iterate the body, then close it."""
    env: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/raw",
        "QUERY_STRING": "",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_IDEMPOTENCY_KEY": key,
        "wsgi.input": io.BytesIO(body),
        **environ,
    }
    started: list[Any] = []
    written: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if exc_info is not None and started and written:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, headers]
        return written.append

    result = middleware(env, start_response)
    try:
        for chunk in result:
            written.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return started[0], started[1], b"".join(written), result


def test_raw_app_raising_releases_the_key_and_reraises() -> None:
    """An app raising before it answers (or while its body is iterated) keeps nothing: the
    exception reaches the server, the body is closed, and the retry executes."""
    runs: list[int] = []
    bodies: list[Body] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("before start_response")
        start_response("200 OK", [("Content-Type", "text/plain")])
        bodies.append(Body([b"a", b"b", b"c"], fail_after=2 if len(runs) == 2 else None))
        return bodies[-1]

    backing = MemoryStore()
    middleware = IdempotencyMiddleware(app, store=backing)
    with pytest.raises(RuntimeError, match="before start_response"):
        call(middleware)
    assert len(backing) == 0
    with pytest.raises(RuntimeError, match="mid-stream"):
        call(middleware)
    assert bodies[0].closed == 1
    assert len(backing) == 0
    status, _headers, body, _ = call(middleware)
    assert (status, body) == ("200 OK", b"abc")
    assert bodies[1].closed == 1
    status, headers, body, _ = call(middleware)
    assert (status, body) == ("200 OK", b"abc")
    assert ("idempotent-replayed", "true") in headers
    assert len(runs) == 3


def test_write_callable_and_iterable_are_kept_together() -> None:
    """Bytes sent through start_response's write() come first in the kept body."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("201 Created", [("Content-Type", "text/plain")])
        write(b"written, ")
        return Body([b"then ", b"iterated"])

    middleware = IdempotencyMiddleware(app, store=MemoryStore())
    first = call(middleware)
    again = call(middleware)
    assert first[2] == again[2] == b"written, then iterated"
    assert again[0] == "201 Created"
    assert ("idempotent-replayed", "true") in again[1]


def test_exc_info_replaces_the_status_before_the_body() -> None:
    """An app that calls start_response again with exc_info (an error page instead of the
    answer it began) is captured with its final status: a 500, not kept."""
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        runs.append(1)
        start_response("200 OK", [("Content-Type", "text/plain")])
        if len(runs) == 1:
            try:
                raise ValueError("went wrong after starting")
            except ValueError as exc:
                start_response("500 Internal Server Error", [], (ValueError, exc, None))
                return [b"error page"]
        return [b"fine"]

    middleware = IdempotencyMiddleware(app, store=MemoryStore())
    assert call(middleware)[:3:2] == ("500 Internal Server Error", b"error page")
    assert call(middleware)[:3:2] == ("200 OK", b"fine")
    assert len(runs) == 2


def test_body_closed_early_refuses_the_retry() -> None:
    """A server that stops iterating (the client went away after the handler answered 200)
    closes the body: its close() runs, and the key keeps a not-stored marker, so the retry gets
    409 instead of running the handler twice. A body never iterated is treated the same."""
    runs: list[Body] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        runs.append(Body([b"1", b"2", b"3"]))
        return runs[-1]

    backing = MemoryStore()
    middleware = IdempotencyMiddleware(app, store=backing)
    env = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/raw",
        "HTTP_IDEMPOTENCY_KEY": "early",
        "wsgi.input": io.BytesIO(),
    }
    result: Any = middleware(dict(env), lambda *a: None)
    iterator = iter(result)
    assert next(iterator) == b"1"
    result.close()
    result.close()  # twice is harmless
    assert runs[0].closed == 1
    statuses: list[str] = []
    retry: Any = middleware(dict(env), lambda status, headers, exc=None: statuses.append(status))
    b"".join(retry)
    assert statuses == ["409 Conflict"]
    assert len(runs) == 1  # the handler did not run again
    never: Any = middleware(
        dict(env, HTTP_IDEMPOTENCY_KEY="never", **{"wsgi.input": io.BytesIO()}), lambda *a: None
    )
    never.close()
    assert runs[1].closed == 1
    record = backing.get("anonymous", "never")
    assert record is not None
    assert record.state == "completed"


def test_incomplete_body_claims_nothing() -> None:
    """A body shorter than its Content-Length (the client went away) is not claimed nor run."""
    runs: list[int] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        runs.append(1)
        return []

    backing = MemoryStore()
    middleware = IdempotencyMiddleware(app, store=backing)
    status, _headers, _body, _ = call(middleware, b"", CONTENT_LENGTH="10")
    assert status.startswith("400")
    assert runs == []
    assert len(backing) == 0


def test_app_sees_a_fresh_input_and_script_name_counts_in_the_path() -> None:
    """The app reads the same bytes from a fresh wsgi.input with the right CONTENT_LENGTH, and
    routes match the full path (SCRIPT_NAME + PATH_INFO, UTF-8)."""
    seen: list[tuple[bytes, str]] = []

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        seen.append((environ["wsgi.input"].read(), environ["CONTENT_LENGTH"]))
        start_response("200 OK", [])
        return [b"ok"]

    middleware = IdempotencyMiddleware(
        app, store=MemoryStore(), routes=[Route("/mounted/café", enabled=False)]
    )
    call(middleware, b"payload", key="in")
    assert seen == [(b"payload", "7")]
    path = "/café".encode().decode("latin-1")
    call(middleware, b"x", key="in2", SCRIPT_NAME="/mounted", PATH_INFO=path)
    call(middleware, b"x", key="in2", SCRIPT_NAME="/mounted", PATH_INFO=path)
    assert len(seen) == 3  # the disabled route passed both through


def test_a_replay_hands_the_server_a_list_of_its_own() -> None:
    """A server may add to the header list start_response gets (wsgiref adds Content-Length);
    replays of one outcome share its decoding, so each must get a copy."""

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("201 Created", [("X-A", "1")])
        return [b"{}"]

    middleware = IdempotencyMiddleware(app, store="memory://")
    seen: list[list[tuple[str, str]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(list(headers))
        if ("idempotent-replayed", "true") in headers:
            headers.append(("X-Server", "added"))  # in place, as a server may
        return lambda data: None

    for _ in range(3):
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/charges",
            "HTTP_IDEMPOTENCY_KEY": '"k"',
            "CONTENT_LENGTH": "2",
            "wsgi.input": io.BytesIO(b"{}"),
        }
        b"".join(middleware(environ, start_response))
    assert len(seen) == 3
    for headers in seen[1:]:
        assert ("idempotent-replayed", "true") in headers
        assert ("X-Server", "added") not in headers


def test_a_replay_keeps_a_header_value_that_is_not_latin_1() -> None:
    """A kept header the replay cannot pre-encode as bytes (Django encodes such values itself)
    is replayed as the str it was, not refused."""

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("201 Created", [("X-Sym", "\u20ac")])
        return [b"{}"]

    middleware = IdempotencyMiddleware(app, store="memory://")
    seen: list[list[tuple[str, str]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(list(headers))
        return lambda data: None

    for _ in range(2):
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/charges",
            "HTTP_IDEMPOTENCY_KEY": '"k"',
            "CONTENT_LENGTH": "2",
            "wsgi.input": io.BytesIO(b"{}"),
        }
        b"".join(middleware(environ, start_response))
    assert ("X-Sym", "\u20ac") in seen[1]
    assert ("idempotent-replayed", "true") in seen[1]

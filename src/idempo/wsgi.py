"""Idempotency keys for any WSGI app (Flask, Bottle, Pyramid, Falcon): WSGI middleware.

    app.wsgi_app = IdempotencyMiddleware(app.wsgi_app, store="sqlite:///idempo.db")

The same semantics and options as :mod:`idempo.asgi`, built from the same core. A guarded
request (POST and PATCH by default) with an ``Idempotency-Key`` header is claimed in the store
before the app sees it: its body is read once (``CONTENT_LENGTH`` bytes, or to the end of a
stream the server terminates), fingerprinted, and handed on as a fresh ``wsgi.input``. The
response is captured on its way out (``start_response``, its ``write()`` callable, and the body
iterable) and kept before its last chunk goes to the server, so a client that got the whole
response and retries is replayed, never told "in progress".

The store is used from the server's worker threads: every idempo store is thread-safe. WSGI has
no shutdown hook: call :meth:`IdempotencyMiddleware.close` when the app stops, to close a store
the middleware opened from a URL.
"""

from __future__ import annotations

import http
import io
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Unpack
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from idempo._recording import RecordingIterable
from idempo._sync.http import HttpFront, Recorder
from idempo.core.http import HttpOptions, Pass, Respond, Route, too_large
from idempo.errors import IncompleteBodyError
from idempo.stores import open_store
from idempo.stores.base import Store

__all__ = ["HttpOptions", "IdempotencyMiddleware", "Route"]

# PEP 3333's exc_info argument of start_response, as typeshed spells it.
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None] | None


class IdempotencyMiddleware:
    """WSGI middleware giving guarded routes Idempotency-Key semantics.

    ``store``: a URL or a :class:`~idempo.stores.base.Store`. The options are
    :class:`~idempo.core.http.HttpOptions`, the same for every adapter (routes match
    ``SCRIPT_NAME + PATH_INFO``; ``wait`` blocks the worker thread).
    """

    def __init__(
        self,
        app: WSGIApplication,
        store: str | Store = "sqlite:///idempo.db",
        **options: Unpack[HttpOptions],
    ) -> None:
        self.app = app
        self._owns_store = isinstance(store, str)
        self.store = (
            open_store(store, **(options.get("store_options") or {}))
            if isinstance(store, str)
            else store
        )
        self.front = HttpFront(self.store, options)
        self.store = self.front.store  # its cached view when replay_cache is on
        self.config = self.front.config
        self.policy = self.front.policy
        self._environ_key = "HTTP_" + self.config.header.upper().replace("-", "_")

    def close(self) -> None:
        """Close the store if the middleware opened it from a URL (a store passed in stays
        open: it is yours)."""
        if self._owns_store:
            self.store.close()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        action = self.front.admit(_Request(environ, self._environ_key))
        if isinstance(action, Recorder):
            return self._execute(with_body(environ, action.body), start_response, action)
        if isinstance(action, Pass):
            inner = environ if action.body is None else with_body(environ, action.body)
            return self.app(inner, start_response)
        assert isinstance(action, Respond)  # a WSGI body never ends early: that is a 400
        return respond(start_response, action)

    def _execute(
        self, environ: WSGIEnvironment, start_response: StartResponse, recorder: Recorder
    ) -> Iterable[bytes]:
        def capturing_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo = None, /
        ) -> Callable[[bytes], object]:
            # The server enforces PEP 3333's exc_info rules (re-raising once headers are sent);
            # only what it accepted is captured.
            write = start_response(status, headers, exc_info)
            recorder.start(status_code(status), list(headers))

            def capturing_write(data: bytes) -> object:
                recorder.add(data)
                return write(data)

            return capturing_write

        try:
            app_iter = self.app(environ, capturing_start_response)
        except BaseException:
            recorder.abandon(client_gone=False)
            raise
        if isinstance(app_iter, list | tuple):
            # Already complete (start_response has been called): keep it now and hand the
            # sequence on as it is, so the server may still compute its Content-Length.
            for chunk in app_iter:
                recorder.add(chunk)
            recorder.finish()
            return app_iter
        return RecordingIterable(app_iter, recorder)


class _Request:
    """A WSGI request as the HTTP front reads it."""

    __slots__ = ("_environ", "_key")

    def __init__(self, environ: WSGIEnvironment, key: str) -> None:
        self._environ = environ
        self._key = key

    @property
    def method(self) -> str:
        return str(self._environ.get("REQUEST_METHOD", "GET")).upper()

    @property
    def path(self) -> str:
        return request_path(self._environ)

    @property
    def query(self) -> str:
        return str(self._environ.get("QUERY_STRING", ""))

    def key_values(self) -> list[str]:
        raw = self._environ.get(self._key)
        return [] if raw is None else [raw]

    def headers(self) -> Mapping[str, str]:
        return request_headers(self._environ)

    def body(self, limit: int) -> bytes:
        return read_body(self._environ, limit)


def request_path(environ: WSGIEnvironment) -> str:
    """``SCRIPT_NAME + PATH_INFO`` as text: WSGI carries them as bytes decoded as latin-1;
    decoded as UTF-8 here, like the ASGI ``path`` and Django's ``request.path``."""
    raw = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def request_headers(environ: WSGIEnvironment) -> dict[str, str]:
    """The request headers from the environ, with lower-case names (``x-api-key``)."""
    headers = {
        name[5:].replace("_", "-").lower(): str(value)
        for name, value in environ.items()
        if name.startswith("HTTP_")
    }
    for name in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        if environ.get(name):
            headers[name.replace("_", "-").lower()] = str(environ[name])
    return headers


def read_body(environ: WSGIEnvironment, limit: int) -> bytes:
    """Read the whole request body (to fingerprint it), refusing more than ``limit`` bytes.

    ``CONTENT_LENGTH`` bytes are read, or, for a request without one (chunked), the stream to
    its end when the server terminates it (``wsgi.input_terminated``); otherwise the body is
    empty, as PEP 3333 says.
    """
    stream = environ["wsgi.input"]
    length = _content_length(environ)
    chunked = "chunked" in str(environ.get("HTTP_TRANSFER_ENCODING", "")).lower()
    error = too_large(limit)
    if length is not None and not chunked:
        if length > limit:
            raise error
        chunks: list[bytes] = []
        missing = length
        while missing > 0:
            chunk = stream.read(missing)
            if not chunk:
                # The client went away: claiming a key for a partial request would tie the key
                # to the wrong fingerprint.
                raise IncompleteBodyError(
                    f"the request body ended after {length - missing} of {length} bytes"
                )
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)
    if environ.get("wsgi.input_terminated"):
        chunks = []
        size = 0
        while True:
            chunk = stream.read(min(65536, limit + 1 - size))
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise error
            chunks.append(chunk)
    return b""


def _content_length(environ: WSGIEnvironment) -> int | None:
    try:
        length = int(str(environ.get("CONTENT_LENGTH") or "").strip())
    except ValueError:
        return None
    return length if length >= 0 else None


def with_body(environ: WSGIEnvironment, body: bytes) -> WSGIEnvironment:
    """A copy of ``environ`` whose ``wsgi.input`` holds ``body``, with its length."""
    inner = dict(environ)
    inner["wsgi.input"] = io.BytesIO(body)
    inner["CONTENT_LENGTH"] = str(len(body))
    inner["wsgi.input_terminated"] = True  # a BytesIO ends: safe to read to its end
    return inner


def status_code(status: str) -> int:
    """The code of a WSGI status line (``"201 Created"``); 500 if it has none."""
    try:
        return int(status.split(None, 1)[0])
    except (ValueError, IndexError):
        return 500


def status_line(code: int) -> str:
    """A WSGI status line for ``code``."""
    try:
        return f"{code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return f"{code} Unknown"


def respond(start_response: StartResponse, response: Respond) -> list[bytes]:
    """Answer ``response`` (a replay or a problem) instead of running the app."""
    # A copy: a server may add to the list it is given (wsgiref adds Content-Length), and a
    # replay's response is shared between requests.
    start_response(status_line(response.status), list(response.headers))
    return [response.body]

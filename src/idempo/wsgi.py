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
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from idempo._sync.engine import Engine
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
from idempo.stores import open_store
from idempo.stores.base import Store

__all__ = ["IdempotencyMiddleware", "Route"]

log = logging.getLogger("idempo")

# PEP 3333's exc_info argument of start_response, as typeshed spells it.
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None] | None


class IncompleteBodyError(IdempoError):
    """The request body ended before ``CONTENT_LENGTH`` bytes arrived (the client went away)."""

    status = 400
    title = "Incomplete request body"


class IdempotencyMiddleware:
    """WSGI middleware giving guarded routes Idempotency-Key semantics.

    ``store``: a URL or a :class:`~idempo.stores.base.Store`. ``required``: answer 400 when a
    guarded request has no key. ``methods``: the guarded methods (POST, PATCH). ``routes``:
    per-route rules (:class:`Route`, globs over ``SCRIPT_NAME + PATH_INFO``), first match wins.
    ``scope``: a callable of the request headers (lower-case names) returning the principal's
    namespace (default: a hash of ``Authorization``/``X-API-Key``). ``ttl``, ``lease``,
    ``wait``: as for functions (``wait`` blocks the worker thread). ``keep_server_errors``: keep
    5xx answers too (the IETF draft's choice). ``fail_open``: when the store is down, pass
    requests through unguarded instead of answering 503 (unsafe: a retry may then run twice).
    """

    def __init__(
        self,
        app: WSGIApplication,
        store: str | Store = "sqlite:///idempo.db",
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
        self._environ_key = "HTTP_" + header.upper().replace("-", "_")
        self._scope_fn = scope or default_scope
        self._owns_store = isinstance(store, str)
        self.store = open_store(store, **(store_options or {})) if isinstance(store, str) else store
        self.engine = Engine(self.store)

    def close(self) -> None:
        """Close the store if the middleware opened it from a URL (a store passed in stays
        open: it is yours)."""
        if self._owns_store:
            self.store.close()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        path = request_path(environ)
        guarded, required = self.config.guard(method, path)
        if not guarded:
            return self.app(environ, start_response)
        raw_key = environ.get(self._environ_key)
        try:
            key = parse_key_header([] if raw_key is None else [raw_key])
            if key is None:
                if required:
                    raise MissingKeyError(f"this route requires an {self.config.header} header")
                return self.app(environ, start_response)
            body = read_body(environ, self.config.max_request_bytes)
        except IdempoError as exc:
            return problem_response(start_response, exc, path)
        headers = request_headers(environ)
        try:
            principal = validate_scope(self._scope_fn(headers))
        except IdempoError as exc:
            return problem_response(start_response, exc, path)
        fp = fingerprint_request(
            method, path, str(environ.get("QUERY_STRING", "")), body, headers.get("content-type")
        )
        inner = with_body(environ, body)
        try:
            decision = self.engine.acquire(principal, key, fp, self.policy)
        except StoreUnavailableError as exc:
            if self.config.fail_open:
                log.warning(
                    "idempo: store unavailable, passing %s %s through (fail_open)", method, path
                )
                return self.app(inner, start_response)
            return problem_response(
                start_response, exc, path, retry_after=self.config.unavailable_retry_after
            )
        except IdempoError as exc:
            return problem_response(start_response, exc, path)
        if isinstance(decision, Replay):
            return self._replay(start_response, decision.outcome, principal, key, path)
        return self._execute(inner, start_response, principal, key, decision.token)

    def _replay(
        self, start_response: StartResponse, data: bytes, principal: str, key: str, path: str
    ) -> Iterable[bytes]:
        try:
            stored = read_stored(data, key=key, scope=principal)
        except OutcomeNotStoredError as error:
            return problem_response(start_response, error, path)
        start_response(status_line(stored.status), replay_headers(stored))
        return [stored.body]

    def _execute(
        self,
        environ: WSGIEnvironment,
        start_response: StartResponse,
        principal: str,
        key: str,
        token: str,
    ) -> Iterable[bytes]:
        capture = ResponseCapture(self.config.max_response_bytes)

        def capturing_start_response(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo = None, /
        ) -> Callable[[bytes], object]:
            # The server enforces PEP 3333's exc_info rules (re-raising once headers are sent);
            # only what it accepted is captured.
            write = start_response(status, headers, exc_info)
            capture.start(status_code(status), list(headers))

            def capturing_write(data: bytes) -> object:
                capture.add(data)
                return write(data)

            return capturing_write

        # Renew the lease while the app runs and its body streams: a slow handler is not
        # taken over; only a crashed one's claim runs out.
        beat = self.engine.heartbeat(principal, key, token, self.policy)
        beat.__enter__()

        def settle() -> None:
            beat.__exit__(None, None, None)
            data = record_for(self.config, capture)
            self.engine.settle(principal, key, token, data, ttl=self.policy.ttl)

        def release(client_gone: bool) -> None:
            beat.__exit__(None, None, None)
            data = record_for_abandoned(self.config, capture) if client_gone else None
            self.engine.settle(principal, key, token, data, ttl=self.policy.ttl)

        try:
            app_iter = self.app(environ, capturing_start_response)
        except BaseException:
            release(False)
            raise
        if isinstance(app_iter, list | tuple):
            # Already complete (start_response has been called): keep it now and hand the
            # sequence on as it is, so the server may still compute its Content-Length.
            for chunk in app_iter:
                capture.add(chunk)
            settle()
            return app_iter
        return RecordingIterable(app_iter, capture, settle=settle, release=release)


class RecordingIterable:
    """A response body on its way to the server, captured chunk by chunk and kept (``settle``)
    when it runs to its end, before the server finishes the response.

    Chunks are handed on at once (a server-sent event or a token stream is never held back).
    A body that stops short calls ``release(client_gone)``: ``client_gone`` is True when the
    server closed it early (the client went away after the handler answered: the key keeps a
    not-stored marker, so a retry is refused rather than run twice), False when the body
    itself raised (the handler failed: the key is freed and a retry runs). ``close()`` closes
    the wrapped iterable (PEP 3333) and is safe to call twice.
    """

    def __init__(
        self,
        body: Iterable[bytes],
        capture: ResponseCapture,
        *,
        settle: Callable[[], None],
        release: Callable[[bool], None],
    ) -> None:
        self._body = body
        self._capture = capture
        self._settle = settle
        self._release = release
        self._settled = False
        self._closed = False
        self._chunks = self._run()

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks

    def _run(self) -> Generator[bytes, None, None]:
        try:
            for chunk in self._body:
                self._capture.add(chunk)
                yield chunk
        except GeneratorExit:
            self._abandon(client_gone=True)  # the server stopped asking: the client is gone
            raise
        except BaseException:
            self._abandon(client_gone=False)
            raise
        self._settled = True
        self._settle()

    def _abandon(self, *, client_gone: bool) -> None:
        if not self._settled:
            self._settled = True
            self._release(client_gone)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._chunks.close()  # a generator paused at a yield: abandoned unless settled
        finally:
            try:
                close = getattr(self._body, "close", None)
                if close is not None:
                    close()
            finally:
                # Closed before the end (or never iterated): the server gave up on it.
                self._abandon(client_gone=True)


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
    too_large = RequestTooLargeError(
        f"the request body is over {limit} bytes, the most this endpoint reads to recognise a "
        "retried request"
    )
    if length is not None and not chunked:
        if length > limit:
            raise too_large
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
                raise too_large
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


def problem_response(
    start_response: StartResponse,
    error: IdempoError,
    path: str,
    *,
    retry_after: int | None = None,
) -> list[bytes]:
    status, headers, body = problem(error, instance=path)
    if retry_after is not None and not any(k == "retry-after" for k, _ in headers):
        headers.append(("retry-after", str(retry_after)))
    start_response(status_line(status), headers)
    return [body]

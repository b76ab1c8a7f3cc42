"""Idempotency keys for Django views: middleware configured from ``settings.IDEMPO``.

::

    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "idempo.django.IdempotencyMiddleware",
        # ... sessions, common, csrf, auth, ...
    ]
    IDEMPO = {"store": "redis://localhost:6379/0", "required": False}

``IDEMPO`` takes the options of :class:`idempo.asgi.IdempotencyMiddleware` by the same names
(``store``, ``store_options``, ``required``, ``methods``, ``routes``, ``header``, ``scope``,
``ttl``, ``lease``, ``wait``, ``keep_server_errors``, ``max_request_bytes``,
``max_response_bytes``, ``fail_open``) with the same semantics, built from the same core.
``routes`` may be :class:`Route` objects or dicts of their fields; ``scope`` a callable of the
request headers or its dotted path.

**Sync only**: the middleware is synchronous (``async_capable = False``). Under ASGI Django runs
it in a thread, as it does every sync middleware; a ``StreamingHttpResponse`` over an async
iterator is still captured. Place it before anything that reads the request body (it reads
``request.body`` to fingerprint the request; the view can read it again), and after what must
see every response (sessions, CSRF): middleware inside it is part of the kept response,
middleware outside it runs again on a replay. Cookies are never kept: Django holds them apart
from the headers, and the core would drop ``Set-Cookie`` anyway.

Stores opened from a URL are shared by every instance of the middleware in the process (Django
builds the chain once per handler, the test client once per ``Client``), keyed by URL and
options; :func:`close_stores` closes them (at shutdown, or at the end of a test session).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.http import HttpResponse  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

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
from idempo.errors import IdempoError, OutcomeNotStoredError, StoreUnavailableError
from idempo.stores import open_store
from idempo.stores.base import Store
from idempo.wsgi import RecordingIterable

__all__ = ["IdempotencyMiddleware", "Route", "close_stores"]

log = logging.getLogger("idempo")

# Django ships no type information: its objects are Any here.
HttpRequest = Any
HttpResponseBase = Any
GetResponse = Callable[[HttpRequest], HttpResponseBase]

OPTIONS = frozenset(
    {
        "store",
        "store_options",
        "required",
        "methods",
        "routes",
        "header",
        "scope",
        "ttl",
        "lease",
        "wait",
        "keep_server_errors",
        "max_request_bytes",
        "max_response_bytes",
        "fail_open",
    }
)

_stores: dict[tuple[str, str], Store] = {}
_stores_lock = threading.Lock()


def shared_store(url: str, options: Mapping[str, Any]) -> Store:
    """The process's store for ``url`` and ``options``, opened on first use."""
    ident = (url, repr(sorted(options.items())))
    with _stores_lock:
        store = _stores.get(ident)
        if store is None:
            store = _stores[ident] = open_store(url, **options)
        return store


def close_stores() -> None:
    """Close every store the middleware opened from a URL. A later request opens it again."""
    with _stores_lock:
        stores = list(_stores.values())
        _stores.clear()
    for store in stores:
        store.close()


class IdempotencyMiddleware:
    """Django middleware giving guarded views Idempotency-Key semantics (see the module)."""

    sync_capable = True
    async_capable = False

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        options = dict(getattr(settings, "IDEMPO", None) or {})
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise ImproperlyConfigured(
                f"unknown IDEMPO option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(OPTIONS))}"
            )
        try:
            header = str(options.get("header", "Idempotency-Key"))
            self.config = HttpConfig.of(
                header=header,
                methods=options.get("methods", DEFAULT_METHODS),
                required=bool(options.get("required", False)),
                routes=(_route(r) for r in options.get("routes", ())),
                keep_server_errors=bool(options.get("keep_server_errors", False)),
                max_request_bytes=int(options.get("max_request_bytes", 1 << 20)),
                max_response_bytes=int(options.get("max_response_bytes", 1 << 20)),
                fail_open=bool(options.get("fail_open", False)),
            )
            self.policy = Policy(
                ttl=float(options.get("ttl", DEFAULT_TTL)),
                lease=float(options.get("lease", DEFAULT_LEASE)),
                wait=float(options.get("wait", 0.0)),
            )
            scope = options.get("scope")
            if isinstance(scope, str):
                scope = import_string(scope)
            if scope is not None and not callable(scope):
                raise TypeError(f"scope must be a callable or its dotted path, not {scope!r}")
        except (TypeError, ValueError, ImportError) as exc:
            raise ImproperlyConfigured(f"settings.IDEMPO: {exc}") from exc
        self._scope_fn: Callable[[Mapping[str, str]], str] = scope or _session_scope(
            str(getattr(settings, "SESSION_COOKIE_NAME", "sessionid"))
        )
        store = options.get("store", "sqlite:///idempo.db")
        if isinstance(store, str):
            store = shared_store(store, options.get("store_options") or {})
        self.store: Store = store
        self.engine = Engine(self.store)

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        method = str(request.method).upper()
        path = str(request.path)
        guarded, required = self.config.guard(method, path)
        if not guarded:
            return self.get_response(request)
        raw_key = request.headers.get(self.config.header)
        try:
            key = parse_key_header([] if raw_key is None else [raw_key])
            if key is None:
                if required:
                    raise MissingKeyError(f"this route requires an {self.config.header} header")
                return self.get_response(request)
            body = self._read_body(request)
        except IdempoError as exc:
            return problem_response(exc, path)
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            principal = validate_scope(self._scope_fn(headers))
        except IdempoError as exc:
            return problem_response(exc, path)
        fp = fingerprint_request(
            method, path, request.META.get("QUERY_STRING", ""), body, headers.get("content-type")
        )
        try:
            decision = self.engine.acquire(principal, key, fp, self.policy)
        except StoreUnavailableError as exc:
            if self.config.fail_open:
                log.warning(
                    "idempo: store unavailable, passing %s %s through (fail_open)", method, path
                )
                return self.get_response(request)
            return problem_response(exc, path, retry_after=self.config.unavailable_retry_after)
        except IdempoError as exc:
            return problem_response(exc, path)
        if isinstance(decision, Replay):
            return self._replay(decision.outcome, principal, key, path)
        return self._execute(request, principal, key, decision.token)

    def _read_body(self, request: HttpRequest) -> bytes:
        """The request body (Django keeps it: the view reads it again), refusing more than
        max_request_bytes, by its Content-Length before reading it when there is one."""
        limit = self.config.max_request_bytes
        too_large = RequestTooLargeError(
            f"the request body is over {limit} bytes, the most this endpoint reads to "
            "recognise a retried request"
        )
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            raise too_large
        body = bytes(request.body)
        if len(body) > limit:
            raise too_large
        return body

    def _replay(self, data: bytes, principal: str, key: str, path: str) -> HttpResponseBase:
        try:
            stored = read_stored(data, key=key, scope=principal)
        except OutcomeNotStoredError as error:
            return problem_response(error, path)
        response = HttpResponse(stored.body, status=stored.status)
        del response["Content-Type"]  # only the kept headers, not Django's default
        for name, value in _merged(replay_headers(stored)):
            response[name] = value
        return response

    def _execute(
        self, request: HttpRequest, principal: str, key: str, token: str
    ) -> HttpResponseBase:
        capture = ResponseCapture(self.config.max_response_bytes)
        # Renew the lease while the view runs and its body streams (see idempo.wsgi).
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
            response = self.get_response(request)
        except BaseException:
            release(False)
            raise
        try:
            capture.start(response.status_code, [(k, str(v)) for k, v in response.items()])
            if not response.streaming:
                # Complete already: kept before the client can see any of it.
                capture.add(bytes(response.content))
                settle()
                return response
            if getattr(response, "is_async", False):
                response.streaming_content = _recording_async(
                    response.streaming_content, capture, settle=settle, release=release
                )
            else:
                # Kept when it runs to its end; if it never gets there (the client went away:
                # response.close() closes the wrapper) a retry is refused, not run twice. A
                # FileResponse is then iterated too, not handed to wsgi.file_wrapper, so that
                # it is captured.
                response.streaming_content = RecordingIterable(
                    response.streaming_content, capture, settle=settle, release=release
                )
        except BaseException:
            release(False)
            raise
        return response


async def _recording_async(
    body: AsyncIterator[bytes],
    capture: ResponseCapture,
    *,
    settle: Callable[[], None],
    release: Callable[[bool], None],
) -> AsyncIterator[bytes]:
    """:class:`~idempo.wsgi.RecordingIterable` for an async streaming body: chunks handed on
    at once, kept at the end; the store is called from a thread."""
    settled = False
    client_gone = True  # stopped from outside (closed, cancelled) unless the body raised
    try:
        async for chunk in body:
            capture.add(chunk)
            yield chunk
        settled = True
        await sync_to_async(settle, thread_sensitive=False)()
    except (GeneratorExit, asyncio.CancelledError):
        raise
    except BaseException:
        client_gone = False
        raise
    finally:
        if not settled:
            await sync_to_async(release, thread_sensitive=False)(client_gone)


def _route(rule: Route | Mapping[str, Any]) -> Route:
    if isinstance(rule, Route):
        return rule
    fields = dict(rule)
    if fields.get("methods") is not None:
        fields["methods"] = frozenset(m.upper() for m in fields["methods"])
    return Route(**fields)


def _merged(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Repeated fields joined with ", " (RFC 9110 section 5.3): Django keeps one value per name;
    Set-Cookie, the one field that cannot be joined, is never kept."""
    merged: dict[str, tuple[str, str]] = {}
    for name, value in headers:
        seen = merged.get(name.lower())
        merged[name.lower()] = (name, value) if seen is None else (seen[0], f"{seen[1]}, {value}")
    return list(merged.values())


def problem_response(
    error: IdempoError, path: str, *, retry_after: int | None = None
) -> HttpResponseBase:
    status, headers, body = problem(error, instance=path)
    if retry_after is not None and not any(k == "retry-after" for k, _ in headers):
        headers.append(("retry-after", str(retry_after)))
    response = HttpResponse(body, status=status)
    for name, value in headers:
        response[name] = value
    return response


def _session_scope(cookie_name: str) -> Callable[[Mapping[str, str]], str]:
    """Django's default scope: the credential headers (:func:`default_scope`), else the
    session cookie alone (hashed), so that session users never share a namespace and other
    cookies a response sets do not move a retry into another scope."""

    def scope(headers: Mapping[str, str]) -> str:
        if headers.get("authorization") or headers.get("x-api-key"):
            return default_scope(headers)
        for part in headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == cookie_name and value:
                return default_scope({"authorization": f"session {value}"})
        return "anonymous"

    return scope

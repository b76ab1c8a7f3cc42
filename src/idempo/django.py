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
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.http import HttpResponse  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from idempo._recording import RecordingIterable
from idempo._sync.http import HttpFront, Recorder
from idempo.core.http import (
    DEFAULT_SESSION_COOKIES,
    HttpOptions,
    Pass,
    Respond,
    Route,
    check_options,
    too_large,
)
from idempo.stores import open_store
from idempo.stores.base import Store

__all__ = ["IdempotencyMiddleware", "Route", "close_stores"]

# Django ships no type information: its objects are Any here.
HttpRequest = Any
HttpResponseBase = Any
GetResponse = Callable[[HttpRequest], HttpResponseBase]

#: The keys ``settings.IDEMPO`` takes: the HTTP options every adapter takes, and the store.
OPTIONS = frozenset({"store", *HttpOptions.__annotations__})

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
        try:
            check_options(options, allowed=("store",))
            store = options.pop("store", "sqlite:///idempo.db")
            if "routes" in options:
                options["routes"] = [_route(r) for r in options["routes"]]
            scope = options.get("scope")
            if isinstance(scope, str):
                options["scope"] = import_string(scope)
            # Django's own session cookie, whatever SESSION_COOKIE_NAME calls it, and the
            # frameworks' defaults.
            own = str(getattr(settings, "SESSION_COOKIE_NAME", "sessionid"))
            options.setdefault("session_cookies", (own, *DEFAULT_SESSION_COOKIES))
            if isinstance(store, str):
                store = shared_store(store, options.get("store_options") or {})
            self.store: Store = store
            self.front = HttpFront(self.store, cast(HttpOptions, options))
            self.store = self.front.store  # its cached view when replay_cache is on
        except (TypeError, ValueError, ImportError) as exc:
            raise ImproperlyConfigured(f"settings.IDEMPO: {exc}") from exc
        self.config = self.front.config
        self.policy = self.front.policy

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        action = self.front.admit(_Request(request, self.config.header))
        if isinstance(action, Recorder):
            return self._execute(request, action)
        if isinstance(action, Pass):
            return self.get_response(request)  # Django keeps the body: the view reads it again
        assert isinstance(action, Respond)
        return respond(action)

    def _execute(self, request: HttpRequest, recorder: Recorder) -> HttpResponseBase:
        try:
            response = self.get_response(request)
        except BaseException:
            recorder.abandon(client_gone=False)
            raise
        try:
            recorder.start(response.status_code, [(k, str(v)) for k, v in response.items()])
            if not response.streaming:
                # Complete already: kept before the client can see any of it.
                recorder.add(bytes(response.content))
                recorder.finish()
                return response
            if getattr(response, "is_async", False):
                response.streaming_content = _recording_async(response.streaming_content, recorder)
            else:
                # Kept when it runs to its end; if it never gets there (the client went away:
                # response.close() closes the wrapper) a retry is refused, not run twice. A
                # FileResponse is then iterated too, not handed to wsgi.file_wrapper, so that
                # it is captured.
                response.streaming_content = RecordingIterable(response.streaming_content, recorder)
        except BaseException:
            recorder.abandon(client_gone=False)
            raise
        return response


class _Request:
    """A Django request as the HTTP front reads it."""

    __slots__ = ("_header", "_request")

    def __init__(self, request: HttpRequest, header: str) -> None:
        self._request = request
        self._header = header

    @property
    def method(self) -> str:
        return str(self._request.method).upper()

    @property
    def path(self) -> str:
        return str(self._request.path)

    @property
    def query(self) -> str:
        return str(self._request.META.get("QUERY_STRING", ""))

    def key_values(self) -> list[str]:
        raw = self._request.headers.get(self._header)
        return [] if raw is None else [raw]

    def headers(self) -> Mapping[str, str]:
        return {name.lower(): value for name, value in self._request.headers.items()}

    def body(self, limit: int) -> bytes:
        """The request body (Django keeps it: the view reads it again), refusing more than
        ``limit`` bytes, by its Content-Length before reading it when there is one."""
        try:
            length = int(self._request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            raise too_large(limit)
        body = bytes(self._request.body)
        if len(body) > limit:
            raise too_large(limit)
        return body


async def _recording_async(body: AsyncIterator[bytes], recorder: Recorder) -> AsyncIterator[bytes]:
    """:class:`~idempo._recording.RecordingIterable` for an async streaming body: chunks
    handed on at once, kept at the end; the (sync) store is called from a thread."""
    settled = False
    client_gone = True  # stopped from outside (closed, cancelled) unless the body raised
    try:
        async for chunk in body:
            recorder.add(chunk)
            yield chunk
        settled = True
        await sync_to_async(recorder.finish, thread_sensitive=False)()
    except (GeneratorExit, asyncio.CancelledError):
        raise
    except BaseException:
        client_gone = False
        raise
    finally:
        if not settled:
            await sync_to_async(recorder.abandon, thread_sensitive=False)(client_gone=client_gone)


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


def respond(response: Respond) -> HttpResponseBase:
    """A replay or a problem, as a Django response with exactly the given headers."""
    out = HttpResponse(response.body, status=response.status)
    del out["Content-Type"]  # only the given headers, not Django's default
    for name, value in _merged(response.headers):
        out[name] = value
    return out

# DO NOT EDIT: generated from src/idempo/_async/http.py by scripts/unasync.py
"""The HTTP front: the request algorithm of idempotency keys, once, for every adapter.

An adapter (ASGI, WSGI, Django, the gateway) wraps its framework's request in an
:class:`Request` and asks :meth:`HttpFront.admit` what to do. The front decides, in
this order, each decision made by :mod:`idempo.core.http` or the engine::

    guard (method, route) ── not guarded ──────────────────────────▶ Pass
    key header ── malformed ──▶ 400 · missing ──▶ 400 if required, else Pass
    body ── too large ──▶ 413 · the client went away ──▶ Drop
    principal (scope) ── invalid ──▶ 400
    fingerprint ─▶ acquire
      ├─ store unavailable ──▶ Pass(body) if fail_open, else 503 + Retry-After
      ├─ refused ────────────▶ 409 + Retry-After (in flight) · 422 (another request)
      ├─ replay ─────────────▶ Respond(the kept response, Idempotent-Replayed: true)
      └─ held ───────────────▶ Recorder: run the app, recording its response

The :class:`Recorder` owns the lease for the rest of the request: it renews it while the
app runs and its body streams, and keeps or releases the key when the response ends (or stops
short). The adapters only move bytes. The sync twin (``_sync/http.py``) is generated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from idempo._sync.cached import CachedStore
from idempo._sync.engine import Engine, Held
from idempo.core.decide import Reject, Replay
from idempo.core.http import (
    DEFAULT_SESSION_COOKIES,
    DROP,
    PASS,
    Drop,
    HttpConfig,
    HttpOptions,
    Pass,
    Respond,
    ResponseCapture,
    check_options,
    fingerprint_request,
    outcome_for,
    outcome_for_abandoned,
    parse_key_header,
    problem,
    read_stored,
    replay_headers,
    scope_from_credentials,
)
from idempo.core.keys import validate_scope
from idempo.core.policy import DEFAULT_LEASE, DEFAULT_TTL, Policy
from idempo.errors import (
    IdempoError,
    MissingKeyError,
    OutcomeNotStoredError,
    StoreUnavailableError,
)
from idempo.observe import Observer, store_kind
from idempo.replay_cache import replay_cache_of
from idempo.stores.base import Store

__all__ = ["HttpFront", "Recorder", "Request", "default_scope"]

log = logging.getLogger("idempo")

# Replays decoded once per outcome (see HttpFront._replay): outcomes up to this size, this
# many at most per front (emptied when full), so a few MiB at worst.
_REPLAY_CACHE_BYTES = 16 * 1024
_REPLAY_CACHE_SIZE = 128


class Request(Protocol):
    """What the front needs of a framework's request; each adapter implements it."""

    @property
    def method(self) -> str:
        """The method, upper-case."""

    @property
    def path(self) -> str:
        """The path, decoded (what routes match)."""

    @property
    def query(self) -> str:
        """The raw query string."""

    def key_values(self) -> list[str]:
        """Every value of the idempotency key header (none: no key)."""

    def headers(self) -> Mapping[str, str]:
        """The request headers, lower-case names (asked only for a guarded request with a
        key)."""

    def body(self, limit: int) -> bytes | None:
        """The whole body; raises RequestTooLargeError past ``limit`` bytes (or an
        IncompleteBodyError); None when the client went away before it arrived."""


class Recorder(ResponseCapture):
    """One executing request's response, recorded on its way out (starlette's responder
    pattern): the adapter reports the status line (:meth:`start`) and each chunk (:meth:`add`),
    then :meth:`finish` at the last chunk, before the client can see the end of it, or
    :meth:`abandon` when the response stops short. Either one ends the lease's heartbeat and
    settles the key once; later calls do nothing. ``body`` is the request body that was read,
    for the app. It *is* the response capture (no object or call in between: this runs for
    every chunk of every guarded response)."""

    __slots__ = ("_config", "body", "held", "settled")

    def __init__(self, held: Held, config: HttpConfig, body: bytes) -> None:
        super().__init__(config.max_response_bytes)
        self.held = held
        self.body = body
        self.settled = False
        self._config = config

    def finish(self) -> None:
        """The response ran to its end: keep it (or release the key, for an answer never
        kept)."""
        if not self.settled:
            self.settled = True
            self.held.settle(outcome_for(self._config, self))

    def abandon(self, *, client_gone: bool) -> None:
        """The response stopped short. ``client_gone``: sending to the client failed after
        the app answered (its work is done: a retry is refused, never run twice); otherwise
        the app failed, and the key is freed for a retry."""
        if not self.settled:
            self.settled = True
            self.held.settle(
                outcome_for_abandoned(self._config, self, client_gone=client_gone)
            )


def default_scope(cookies: Iterable[str]) -> Callable[[Mapping[str, str]], str]:
    """The default ``scope=``: :func:`~idempo.core.http.scope_from_credentials` over the
    session ``cookies``, keyed with the ``IDEMPO_SCOPE_SECRET`` environment variable (read here,
    at the edge that builds the middleware, not in core)."""
    return scope_from_credentials(os.environ.get("IDEMPO_SCOPE_SECRET", ""), cookies=cookies)


class HttpFront:
    """The request algorithm over one store, with one adapter's options (see the module)."""

    __slots__ = ("_replays", "config", "engine", "policy", "scope_fn", "store")

    def __init__(self, store: Store, options: HttpOptions) -> None:
        check_options(options)
        self.config = HttpConfig.of(options)
        self.policy = Policy(
            ttl=float(options.get("ttl", DEFAULT_TTL)),
            lease=float(options.get("lease", DEFAULT_LEASE)),
            wait=float(options.get("wait", 0.0)),
        )
        scope = options.get("scope")
        if scope is not None and not callable(scope):
            raise TypeError(f"scope must be a callable of the request headers, not {scope!r}")
        cookies = options.get("session_cookies", DEFAULT_SESSION_COOKIES)
        if isinstance(cookies, str):
            raise TypeError("session_cookies is a list of cookie names, not a str")
        self.scope_fn = scope or default_scope(cookies)
        observer = Observer("http", store_kind(store), options.get("hooks"))
        cache = replay_cache_of(options.get("replay_cache"))
        #: The store requests go to: ``store`` itself, or its cached view (``replay_cache``),
        #: through which a delete is seen by the cache at once.
        self.store: Store = store if cache is None else CachedStore(store, cache)
        self.engine = Engine(self.store, observer)
        self._replays: dict[bytes, Respond] = {}

    def admit(self, request: Request) -> Pass | Respond | Drop | Recorder:
        """What to do with ``request``. An Recorder means: run the app with its
        ``body`` and report the response to the recorder."""
        config = self.config
        method, path = request.method, request.path
        guarded, required = config.guard(method, path)
        if not guarded:
            return PASS
        try:
            key = parse_key_header(request.key_values())
            if key is None:
                if required:
                    raise MissingKeyError(f"this route requires an {config.header} header")
                return PASS
            body = request.body(config.max_request_bytes)
            if body is None:
                # Claiming a key for a partial request would tie it to the wrong fingerprint.
                return DROP
            headers = request.headers()
            principal = validate_scope(self.scope_fn(headers))
            fp = fingerprint_request(method, path, request.query, body, headers.get("content-type"))
            decision = self.engine.acquire(principal, key, fp, self.policy)
        except StoreUnavailableError as exc:
            if config.fail_open:
                log.warning(
                    "idempo: store unavailable, passing %s %s through (fail_open)", method, path
                )
                return Pass(body)
            return problem(exc, instance=path, type_base=config.problem_type_base)
        except IdempoError as exc:
            return problem(exc, instance=path, type_base=config.problem_type_base)
        if isinstance(decision, Replay):
            return self._replay(decision.outcome, principal, key, path)
        if isinstance(decision, Reject):
            return problem(decision.error, instance=path, type_base=config.problem_type_base)
        decision.start_heartbeat()
        return Recorder(decision, config, body)

    def _replay(self, outcome: bytes, principal: str, key: str, path: str) -> Respond:
        """The replay of ``outcome`` (a problem if it was not kept). Decoded once per outcome:
        a small one's replay is memoised (a pure function of its bytes; the store is still
        asked on every request, so a deleted or expired key is never replayed from here)."""
        cacheable = len(outcome) <= _REPLAY_CACHE_BYTES
        response = self._replays.get(outcome) if cacheable else None
        if response is None:
            try:
                stored = read_stored(outcome, key=key, scope=principal)
            except IdempoError as exc:  # not kept, or unreadable
                observer = self.engine.observer
                if isinstance(exc, OutcomeNotStoredError) and observer is not None:
                    observer.outcome("not_stored", principal, key, error=exc)
                return problem(exc, instance=path, type_base=self.config.problem_type_base)
            headers = replay_headers(stored)
            response = Respond(stored.status, headers, stored.body, _encoded(headers))
            if cacheable:
                if len(self._replays) >= _REPLAY_CACHE_SIZE:
                    self._replays.clear()
                self._replays[outcome] = response
        observer = self.engine.observer
        if observer is not None:
            if observer.hooks is None:
                observer.outcome("replayed", principal, key)
            else:  # hooks may add to the replayed headers: this request's own copy
                headers = list(response.headers)
                observer.outcome("replayed", principal, key, headers=headers)
                return Respond(response.status, headers, response.body)
        return response


def _encoded(headers: list[tuple[str, str]]) -> tuple[tuple[bytes, bytes], ...] | None:
    """The headers as bytes (latin-1), or None if one is not latin-1: a framework that takes
    str headers (Django encodes such values itself) gets them as they are."""
    try:
        return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    except UnicodeEncodeError:
        return None

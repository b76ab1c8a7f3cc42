"""``Idempotency``: the entry point, and its ``@idempotent`` decorator for def and async def.

    idem = Idempotency(store="sqlite:///idempo.db", ttl=86400, lease=30)

    @idem.idempotent(key=lambda order_id, amount: order_id)
    def charge(order_id: str, amount: int) -> dict: ...

One decorator picks the sync or async wrapper; both drive the same engine (the sync one is
generated from the async one), whose decisions live in :mod:`idempo.core`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast, overload
from urllib.parse import urlsplit

from idempo._async.cached import AsyncCachedStore
from idempo._async.engine import AsyncEngine
from idempo._async.phases import AsyncPhase, AsyncPhasedOperation
from idempo._async.transaction import AsyncTransaction
from idempo._sync.cached import CachedStore
from idempo._sync.engine import Engine
from idempo._sync.phases import Phase, PhasedOperation
from idempo._sync.transaction import Transaction
from idempo.consumers import Consumer
from idempo.core.fingerprint import fingerprint as fingerprint_of
from idempo.core.keys import validate_key, validate_scope
from idempo.core.operation import Operation
from idempo.core.outcome import JSONSerializer, Serializer
from idempo.core.policy import DEFAULT_LEASE, DEFAULT_MAX_OUTCOME_BYTES, DEFAULT_TTL, Policy
from idempo.observe import Hooks, Observer, store_kind
from idempo.replay_cache import ReplayCache, replay_cache_of
from idempo.stores import open_pair
from idempo.stores.base import AsyncStore, Store
from idempo.stores.binding import bind_async, bind_sync

__all__ = ["DEFAULT_STORE", "Idempotency"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_STORE = "sqlite:///idempo.db"


class Idempotency:
    """Holds the store and the defaults; makes functions idempotent.

    ``store`` is a URL (``memory://``, ``sqlite:///path.db``, ``redis://…``,
    ``postgresql://…``), a :class:`~idempo.stores.base.Store`, or an
    :class:`~idempo.stores.base.AsyncStore`. With a URL, the sync and async stores are opened on
    first use; with an instance, only functions of its kind can be decorated.

    ``ttl``: seconds a completed result is replayed. ``lease``: seconds one execution may hold
    a key before another call may take it over (make it longer than the operation takes).
    ``heartbeat``: renew the lease every ``lease / 3`` seconds while a call runs (default), so
    that ``lease`` bounds how long a *crashed* call blocks its key, not how long a call may take.
    ``wait``: seconds a duplicate call waits for an in-flight first call before raising
    :class:`~idempo.errors.InProgressError` (0: raise at once). ``serializer``: how results are
    kept (JSON by default). ``max_outcome_bytes``: larger results are returned once but not
    kept; a retry then raises :class:`~idempo.errors.OutcomeNotStoredError`. ``hooks``:
    callbacks for replays, conflicts, takeovers, ... (:class:`~idempo.observe.Hooks`).
    ``replay_cache``: off by default; seconds (or a :class:`~idempo.replay_cache.ReplayCache`)
    for which this process answers a retry of a completed key from memory, with no round trip.
    A delete through ``idem.store`` / ``idem.async_store`` is seen at once; one made elsewhere
    (another process, ``idempo keys delete``) within that many seconds.
    """

    def __init__(
        self,
        store: str | Store | AsyncStore = DEFAULT_STORE,
        *,
        ttl: float = DEFAULT_TTL,
        lease: float = DEFAULT_LEASE,
        wait: float = 0.0,
        serializer: Serializer | None = None,
        max_outcome_bytes: int = DEFAULT_MAX_OUTCOME_BYTES,
        heartbeat: bool = True,
        store_options: dict[str, Any] | None = None,
        hooks: Hooks | None = None,
        replay_cache: float | ReplayCache | None = None,
    ) -> None:
        self.policy = Policy(
            heartbeat=heartbeat,
            ttl=ttl,
            lease=lease,
            wait=wait,
            max_outcome_bytes=max_outcome_bytes,
            serializer=serializer if serializer is not None else JSONSerializer(),
        )
        self._url: str | None = None
        self._sync_store: Store | None = None
        self._async_store: AsyncStore | None = None
        self._store_options = store_options or {}
        self.replay_cache = replay_cache_of(replay_cache)
        self._sync_view: CachedStore | None = None
        self._async_view: AsyncCachedStore | None = None
        self._lock = threading.RLock()
        self.hooks = hooks
        self._engine: Engine | None = None
        self._async_engine: AsyncEngine | None = None
        self._observer: Observer | None = None
        if isinstance(store, str):
            urlsplit(store)  # fail early on nonsense
            self._url = store
        elif isinstance(store, AsyncStore) and inspect.iscoroutinefunction(store.claim):
            self._async_store = store
        elif isinstance(store, Store):
            self._sync_store = store
        else:
            raise TypeError(f"store must be a URL or a store, not {type(store).__name__}")

    # -- stores ------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        """The synchronous store (opened from the URL on first use)."""
        if self._sync_store is None:
            self._open_pair("an async store; it cannot serve a plain def", "open_store()")
        assert self._sync_store is not None
        if self.replay_cache is None:
            return self._sync_store
        # The cached view (built once per opened store), so that deletes through it are seen
        # by the cache at once.
        view = self._sync_view
        if view is None or view.wrapped is not self._sync_store:
            view = self._sync_view = CachedStore(self._sync_store, self.replay_cache)
        return view

    @property
    def async_store(self) -> AsyncStore:
        """The asynchronous store (opened from the URL on first use)."""
        if self._async_store is None:
            self._open_pair("a sync store; it cannot serve an async def", "open_async_store()")
        assert self._async_store is not None
        if self.replay_cache is None:
            return self._async_store
        view = self._async_view
        if view is None or view.wrapped is not self._async_store:
            view = self._async_view = AsyncCachedStore(self._async_store, self.replay_cache)
        return view

    def _open_pair(self, given: str, opener: str) -> None:
        # Both kinds at once (neither connects before its first use): for memory:// and
        # SQLite one store serves def and async def alike (stores.open_pair).
        if self._url is None:
            raise TypeError(f"this Idempotency was given {given} (pass a URL, or {opener})")
        with self._lock:
            if self._sync_store is None:
                self._sync_store, self._async_store = open_pair(self._url, **self._store_options)

    def close(self) -> None:
        """Close the sync store this object opened (and the async one, where the two are one
        store; otherwise use :meth:`aclose`). A later call opens them again."""
        if self._url is None or self._sync_store is None:
            return
        shared = self._shares_one_store()
        self._sync_store.close()
        self._sync_store = None
        self._engine = self._async_engine = None  # a later call opens the stores again
        if shared:
            self._async_store = None

    async def aclose(self) -> None:
        """Close every store this object opened."""
        if self._url is not None and self._async_store is not None:
            shared = self._shares_one_store()
            await self._async_store.close()
            self._async_store = None
            self._engine = self._async_engine = None
            if shared:
                self._sync_store = None
        self.close()

    def _shares_one_store(self) -> bool:
        """The async store runs the sync one in threads (memory, SQLite, MariaDB)."""
        return getattr(self._async_store, "sync_store", None) is self._sync_store

    # -- transactional mode ------------------------------------------------------------------

    def transaction(
        self, conn: Any, *, key: str, scope: str = "", fingerprint: Any = None
    ) -> Transaction:
        """Run one idempotent unit of work inside ``conn``'s current transaction.

        ``conn``: a :mod:`sqlite3` connection, a psycopg ``Connection``, or a SQLAlchemy
        ``Session``/``Connection`` over either, to the same database as this object's store
        (``sqlite:///...`` or ``postgresql://...``). ``fingerprint``: what identifies the
        request (any value with a canonical form); reusing ``key`` with another raises
        KeyReuseError. See :class:`~idempo._sync.transaction.Transaction`.
        """
        return Transaction(
            lambda: bind_sync(self.store, conn),
            scope=validate_scope(scope),
            key=validate_key(key),
            fingerprint=fingerprint_of(fingerprint),
            policy=self.policy,
            observer=self.observer,
        )

    def atransaction(
        self, conn: Any, *, key: str, scope: str = "", fingerprint: Any = None
    ) -> AsyncTransaction:
        """:meth:`transaction` for asyncio: ``conn`` is a psycopg ``AsyncConnection`` or a
        SQLAlchemy ``AsyncSession``/``AsyncConnection`` over one.

            async with idem.atransaction(conn, key=k) as tx: ...
        """
        return AsyncTransaction(
            lambda: bind_async(self.async_store, conn),
            scope=validate_scope(scope),
            key=validate_key(key),
            fingerprint=fingerprint_of(fingerprint),
            policy=self.policy,
            observer=self.observer,
        )

    # -- atomic phases -----------------------------------------------------------------------

    def run_phases(
        self,
        phases: list[Phase],
        *,
        key: str,
        scope: str = "",
        fingerprint: Any = None,
        conn: Any = None,
    ) -> Any:
        """Run ``phases`` once under ``key``, resuming after the last recovery point.

        ``conn``: the database connection that local phases write to (sqlite3 or psycopg, not
        autocommit), the same database as this object's store. See :mod:`idempo.phases`.
        """
        op = PhasedOperation(
            self.store,
            phases,
            policy=self.policy,
            conn=conn,
            bind=lambda c: bind_sync(self.store, c),
            observer=self.observer,
        )
        return op.run(
            scope=validate_scope(scope),
            key=validate_key(key),
            fingerprint=fingerprint_of(fingerprint),
        )

    async def arun_phases(
        self,
        phases: list[AsyncPhase],
        *,
        key: str,
        scope: str = "",
        fingerprint: Any = None,
        conn: Any = None,
    ) -> Any:
        """:meth:`run_phases` for asyncio (``conn``: a psycopg AsyncConnection)."""
        op = AsyncPhasedOperation(
            self.async_store,
            phases,
            policy=self.policy,
            conn=conn,
            bind=lambda c: bind_async(self.async_store, c),
            observer=self.observer,
        )
        return await op.run(
            scope=validate_scope(scope),
            key=validate_key(key),
            fingerprint=fingerprint_of(fingerprint),
        )

    # -- message consumers -------------------------------------------------------------------

    def consumer(
        self,
        handler: Callable[..., Any],
        *,
        name: str,
        message_id: Callable[[Any], str],
        **options: Any,
    ) -> Any:
        """A :class:`~idempo.consumers.Consumer` of ``handler`` over this object's async store,
        with its TTL, lease and serializer. ``name`` is the queue or consumer group,
        ``message_id`` reads a message's id; ``options`` as for Consumer (``transaction=`` for
        the inbox pattern). Broker adapters: :mod:`idempo.consumers`."""
        defaults = {
            "ttl": self.policy.ttl,
            "lease": self.policy.lease,
            "serializer": self.policy.serializer,
            "max_outcome_bytes": self.policy.max_outcome_bytes,
            "hooks": self.hooks,
        }
        return Consumer(
            handler,
            store=self.async_store,
            name=name,
            message_id=message_id,
            **{**defaults, **options},
        )

    # -- the decorator -----------------------------------------------------------------------

    @overload
    def idempotent(self, fn: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def idempotent(
        self,
        fn: None = None,
        /,
        *,
        key: Callable[..., str] | None = None,
        scope: str | Callable[..., str] = "",
        fingerprint: Callable[..., Any] | None = None,
        name: str | None = None,
        ttl: float | None = None,
        lease: float | None = None,
        wait: float | None = None,
        heartbeat: bool | None = None,
        serializer: Serializer | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def idempotent(
        self,
        fn: Callable[P, R] | None = None,
        /,
        *,
        key: Callable[..., str] | None = None,
        scope: str | Callable[..., str] = "",
        fingerprint: Callable[..., Any] | None = None,
        name: str | None = None,
        ttl: float | None = None,
        lease: float | None = None,
        wait: float | None = None,
        heartbeat: bool | None = None,
        serializer: Serializer | None = None,
    ) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
        """Make ``fn`` idempotent: the first call with a key runs it and keeps its result; a
        repeat returns that result without running it.

        ``key``: called with the function's arguments, returns the idempotency key. Without it
        the key is derived from all the arguments (each distinct call runs once).
        ``scope``: a namespace (str, or callable of the arguments), e.g. the tenant.
        ``fingerprint``: called with the arguments, returns what identifies the request (default:
        all arguments); reusing a key with another fingerprint raises KeyReuseError.
        ``name``: the operation's name in the store (default ``module.qualname``); two functions
        never share records, and renaming a function would orphan its records unless ``name``
        pins it. ``ttl``, ``lease``, ``wait``, ``heartbeat``, ``serializer``: override the
        defaults (``serializer=TypedSerializer()`` keeps the return annotation's type).
        """
        overrides: dict[str, Any] = {
            k: v
            for k, v in {
                "ttl": ttl,
                "lease": lease,
                "wait": wait,
                "heartbeat": heartbeat,
                "serializer": serializer,
            }.items()
            if v is not None
        }
        shared = dataclasses.replace(self.policy, **overrides) if overrides else self.policy

        def decorate(func: Callable[P, R]) -> Callable[P, R]:
            op = Operation(func, key=key, scope=scope, fingerprint=fingerprint, name=name)
            policy = shared
            # A serializer bound to the function (TypedSerializer()) reads its return type
            # here, once, not per call.
            bind = getattr(policy.serializer, "for_function", None)
            if bind is not None:
                policy = dataclasses.replace(policy, serializer=bind(func))
            if inspect.iscoroutinefunction(func):
                self._check_can_serve(func, want_async=True)

                @functools.wraps(func)
                async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                    s, k, f = op.identify(args, kwargs)
                    engine = self._async_engine or self._make_async_engine()
                    call = cast(Callable[[], Awaitable[Any]], lambda: func(*args, **kwargs))
                    return await engine.run(call, scope=s, key=k, fingerprint=f, policy=policy)

                # Same parameters; the result is the coroutine of func's own result type.
                return cast(Callable[P, R], async_wrapper)

            self._check_can_serve(func, want_async=False)

            @functools.wraps(func)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                s, k, f = op.identify(args, kwargs)
                engine = self._engine or self._make_engine()
                result: R = engine.run(
                    lambda: func(*args, **kwargs), scope=s, key=k, fingerprint=f, policy=policy
                )
                return result

            return wrapper

        if fn is not None:
            return decorate(fn)
        return decorate

    # -- the engines, built once --------------------------------------------------------------

    @property
    def observer(self) -> Observer:
        """Where this object's outcomes are reported (OpenTelemetry, ``hooks``)."""
        if self._observer is None:
            kind = store_kind(self._sync_store or self._async_store or self.store)
            self._observer = Observer("function", kind, self.hooks)
        return self._observer

    def _make_engine(self) -> Engine:
        self._engine = Engine(self.store, self.observer)
        return self._engine

    def _make_async_engine(self) -> AsyncEngine:
        self._async_engine = AsyncEngine(self.async_store, self.observer)
        return self._async_engine

    def _check_can_serve(self, func: Callable[..., Any], *, want_async: bool) -> None:
        """Say at decoration time, not at the first call, when the store cannot serve ``func``."""
        if self._url is not None:
            return
        if want_async and self._async_store is None:
            raise TypeError(
                f"cannot make async def {func.__qualname__} idempotent: this Idempotency holds a "
                "sync store; pass a URL or an async store (open_async_store())"
            )
        if not want_async and self._sync_store is None:
            raise TypeError(
                f"cannot make def {func.__qualname__} idempotent: this Idempotency holds an "
                "async store; pass a URL or a sync store (open_store())"
            )

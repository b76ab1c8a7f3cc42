"""The in-process memory store: one dict behind one lock.

For tests and single-process programs: records vanish with the process, and two processes never
see each other's. The clock is injectable so that tests can move time without sleeping.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from idempo.core import transitions
from idempo.core.records import ClaimResult, Record, State
from idempo.stores import _scan
from idempo.stores._threaded import SyncStoreAsAsync
from idempo.stores._transitional import TransitionalStore
from idempo.stores._url import UrlOptions, number
from idempo.stores.base import Page, Stats

__all__ = ["URL_OPTIONS", "AsyncMemoryStore", "MemoryStore", "open_async", "open_pair", "open_sync"]

# What memory://?... may carry (see idempo.stores._url); clock= is for Python callers only.
URL_OPTIONS = UrlOptions({"timeout": number})


class MemoryStore(TransitionalStore[bool]):
    """A :class:`~idempo.stores.base.Store` in a dict. ``clock`` returns epoch seconds.

    ``timeout`` (seconds, default 5) is accepted, as on every store, and bounds nothing: no
    operation waits on I/O, and the one lock is held for microseconds. A plain lock (a C-level
    ``with``) rather than a timed one, since this runs on every operation of the fastest store.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, timeout: float = 5.0) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
        self._records: dict[tuple[str, str], Record] = {}
        self._lock = threading.Lock()
        self._timeout = float(timeout)
        self._clock = clock
        # scan's (scope, key) order: sorted by the first scan after a key came or went, so a
        # page is a bisect (the sort is O(n log n): this store is for tests and small programs).
        self._sorted: list[tuple[str, str]] | None = None

    # -- the hooks of TransitionalStore: one lock around a dict ---------------------------------

    def _atomic(self, operation: str, *, write: bool) -> AbstractContextManager[bool]:
        return self._lock

    def _load(
        self, h: bool, operation: str, scope: str, key: str, *, lock: bool
    ) -> tuple[float, Record | None]:
        return self._clock(), self._records.get((scope, key))

    def _save(self, h: bool, operation: str, record: Record, *, insert: bool) -> None:
        if insert:
            self._sorted = None
        self._records[record.scope, record.key] = record

    def _remove(self, h: bool, operation: str, scope: str, key: str) -> None:
        self._sorted = None
        del self._records[scope, key]

    # -- the hot operations, written out ------------------------------------------------------
    # The same lines as TransitionalStore's (load, transition, save under the lock), without its
    # hook calls and context manager: this store's whole cost is Python calls, and these three
    # run on every new key and replay (the conformance suite holds them to the same contract).

    def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        with self._lock:
            current = self._records.get((scope, key))
            result, write = transitions.claim(
                current,
                scope=scope,
                key=key,
                fingerprint=fingerprint,
                token=token,
                now=self._clock(),
                lease=lease,
                ttl=ttl,
            )
            if write is not None:
                if current is None:
                    self._sorted = None
                self._records[scope, key] = write
            return result

    def complete(self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float) -> None:
        with self._lock:
            self._records[scope, key] = transitions.complete(
                self._records.get((scope, key)),
                token=token,
                outcome=outcome,
                now=self._clock(),
                ttl=ttl,
            )

    def release(self, scope: str, key: str, token: str) -> bool:
        with self._lock:
            current = transitions.live(self._records.get((scope, key)), self._clock())
            if current is None or current.token != token:
                return False
            self._sorted = None
            del self._records[scope, key]
            return True

    def purge_expired(self, limit: int = 1000) -> int:
        with self._lock:
            now = self._clock()
            expired = [k for k, r in self._records.items() if r.expires_at <= now][:limit]
            for k in expired:
                del self._records[k]
            if expired:
                self._sorted = None
            return len(expired)

    def scan(
        self,
        *,
        state: State | None = None,
        scope: str | None = None,
        older_than: float = 0.0,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        state = _scan.check(state, limit, older_than)
        after = _scan.decode(cursor)
        with self._lock:
            now = self._clock()
            if self._sorted is None:
                self._sorted = sorted(self._records)
            order = self._sorted
            start = bisect.bisect_right(order, after)
            if scope is not None:
                start = max(start, bisect.bisect_left(order, (scope, "")))
            window = order[start : start + limit]
            done = len(window) < limit
            if scope is not None:
                inside = [k for k in window if k[0] == scope]
                done = done or len(inside) < len(window)  # sorted: past the scope, no more
                window = inside
            found = [self._records[k] for k in window]
        records = tuple(_scan.listed(r) for r in found if _scan.shown(r, now, state, older_than))
        return Page(records, None if done or not window else _scan.encode(*window[-1]), now)

    def stats(self) -> Stats:
        with self._lock:
            now = self._clock()
            records = list(self._records.values())
        return _scan.Counter(now).add_all(records).stats()

    def __len__(self) -> int:
        return len(self._records)

    def migrate(self) -> None:
        """Nothing to create."""

    def close(self) -> None:
        """Nothing to close; records live as long as the object."""


class AsyncMemoryStore(SyncStoreAsAsync):
    """The memory store, awaited. Its lock is held for microseconds, so it runs inline: the
    lifecycle's operations call it directly (no hop through ``_run``)."""

    sync_store: MemoryStore

    def __init__(self, store: MemoryStore | None = None) -> None:
        super().__init__(store if store is not None else MemoryStore(), offload=False)

    async def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        return self.sync_store.claim(scope, key, fingerprint, token, lease=lease, ttl=ttl)

    async def complete(
        self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float
    ) -> None:
        self.sync_store.complete(scope, key, token, outcome, ttl=ttl)

    async def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        return self.sync_store.extend(scope, key, token, lease=lease)

    async def release(self, scope: str, key: str, token: str) -> bool:
        return self.sync_store.release(scope, key, token)


def open_sync(url: str, **options: Any) -> MemoryStore:
    """``memory://``: a new, empty store each time."""
    return MemoryStore(**options)


def open_async(url: str, **options: Any) -> AsyncMemoryStore:
    return AsyncMemoryStore(MemoryStore(**options))


def open_pair(url: str, **options: Any) -> tuple[MemoryStore, AsyncMemoryStore]:
    """``memory://`` for both kinds of caller: one new, empty dict that both see."""
    store = MemoryStore(**options)
    return store, AsyncMemoryStore(store)

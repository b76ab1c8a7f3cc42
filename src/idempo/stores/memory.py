"""The in-process memory store: one dict behind one lock.

For tests and single-process programs: records vanish with the process, and two processes never
see each other's. The clock is injectable so that tests can move time without sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from idempo.core import transitions
from idempo.core.records import ClaimResult, Record
from idempo.stores._threaded import SyncStoreAsAsync

__all__ = ["AsyncMemoryStore", "MemoryStore", "open_async", "open_sync"]


class MemoryStore:
    """A :class:`~idempo.stores.base.Store` in a dict. ``clock`` returns epoch seconds."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._records: dict[tuple[str, str], Record] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        with self._lock:
            result, write = transitions.claim(
                self._records.get((scope, key)),
                scope=scope,
                key=key,
                fingerprint=fingerprint,
                token=token,
                now=self._clock(),
                lease=lease,
                ttl=ttl,
            )
            if write is not None:
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

    def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        with self._lock:
            record = transitions.extend(
                self._records.get((scope, key)), token=token, now=self._clock(), lease=lease
            )
            self._records[scope, key] = record
            assert record.lease_until is not None
            return record.lease_until

    def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        with self._lock:
            record = transitions.extend(
                self._records.get((scope, key)),
                token=token,
                now=self._clock(),
                lease=lease,
                recovery_point=recovery_point,
            )
            self._records[scope, key] = record
            assert record.lease_until is not None
            return record.lease_until

    def release(self, scope: str, key: str, token: str) -> bool:
        with self._lock:
            current = transitions.live(self._records.get((scope, key)), self._clock())
            if current is None or current.token != token:
                return False
            del self._records[scope, key]
            return True

    def get(self, scope: str, key: str) -> Record | None:
        with self._lock:
            return transitions.public(self._records.get((scope, key)), self._clock())

    def delete(self, scope: str, key: str) -> bool:
        with self._lock:
            record = self._records.pop((scope, key), None)
            return transitions.live(record, self._clock()) is not None

    def purge_expired(self, limit: int = 1000) -> int:
        with self._lock:
            now = self._clock()
            expired = [k for k, r in self._records.items() if r.expires_at <= now][:limit]
            for k in expired:
                del self._records[k]
            return len(expired)

    def __len__(self) -> int:
        return len(self._records)

    def migrate(self) -> None:
        """Nothing to create."""

    def close(self) -> None:
        """Nothing to close; records live as long as the object."""


class AsyncMemoryStore(SyncStoreAsAsync):
    """The memory store, awaited. Its lock is held for microseconds, so it runs inline."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        super().__init__(store if store is not None else MemoryStore(), offload=False)


def open_sync(url: str, **options: Any) -> MemoryStore:
    """``memory://``: a new, empty store each time."""
    return MemoryStore(**options)


def open_async(url: str, **options: Any) -> AsyncMemoryStore:
    return AsyncMemoryStore(MemoryStore(**options))

"""A store whose lifecycle round trips are measured: one span and one duration each.

The engine wraps its store in this only when opentelemetry-api is installed; each call then
checks once whether an SDK is configured and, if not, goes straight through.
``_sync/observed.py`` is generated from ``_async/observed.py``.
"""

from __future__ import annotations

from typing import Any

from idempo.core.records import ClaimResult
from idempo.observe import Observer
from idempo.stores.base import AsyncStore

__all__ = ["AsyncObservedStore"]


class AsyncObservedStore:
    """``store``, with claim, complete, extend, set_recovery_point and release measured; every
    other attribute is the store's own."""

    __slots__ = ("_observer", "_store")

    def __init__(self, store: AsyncStore, observer: Observer) -> None:
        self._store = store
        self._observer = observer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._store!r})"

    async def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        if not self._observer.measuring():
            return await self._store.claim(scope, key, fingerprint, token, lease=lease, ttl=ttl)
        with self._observer.round_trip("claim", scope, key):
            return await self._store.claim(scope, key, fingerprint, token, lease=lease, ttl=ttl)

    async def complete(
        self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float
    ) -> None:
        if not self._observer.measuring():
            return await self._store.complete(scope, key, token, outcome, ttl=ttl)
        with self._observer.round_trip("complete", scope, key):
            return await self._store.complete(scope, key, token, outcome, ttl=ttl)

    async def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        if not self._observer.measuring():
            return await self._store.extend(scope, key, token, lease=lease)
        with self._observer.round_trip("extend", scope, key):
            return await self._store.extend(scope, key, token, lease=lease)

    async def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        if not self._observer.measuring():
            return await self._store.set_recovery_point(
                scope, key, token, recovery_point, lease=lease
            )
        with self._observer.round_trip("set_recovery_point", scope, key):
            return await self._store.set_recovery_point(
                scope, key, token, recovery_point, lease=lease
            )

    async def release(self, scope: str, key: str, token: str) -> bool:
        if not self._observer.measuring():
            return await self._store.release(scope, key, token)
        with self._observer.round_trip("release", scope, key):
            return await self._store.release(scope, key, token)

"""A store whose completed answers are kept in a :class:`~idempo.replay_cache.ReplayCache`.

A claim the cache can answer (a live completed record under the same fingerprint) costs no
round trip; every other call goes to the store, and a COMPLETED answer from it is kept. A delete
through this wrapper is seen at once. ``_sync/cached.py`` is generated from ``_async/cached.py``.
"""

from __future__ import annotations

from typing import Any

from idempo.core.records import ClaimResult, ClaimStatus
from idempo.replay_cache import ReplayCache
from idempo.stores.base import AsyncStore

__all__ = ["AsyncCachedStore"]


class AsyncCachedStore:
    """``store``, with claims of completed keys answered from ``cache`` when it can, and
    deletes forgotten by it; every other operation is the store's own (``__getattr__``: no
    extra call on complete, extend or release)."""

    __slots__ = ("_store", "cache")

    def __init__(self, store: AsyncStore, cache: ReplayCache) -> None:
        self._store = store
        self.cache = cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._store!r}, {self.cache!r})"

    @property
    def wrapped(self) -> AsyncStore:
        """The store behind the cache."""
        return self._store

    async def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        kept = self.cache.lookup(scope, key, fingerprint)
        if kept is not None:
            return kept
        result = await self._store.claim(scope, key, fingerprint, token, lease=lease, ttl=ttl)
        if result.status is ClaimStatus.COMPLETED:
            self.cache.keep(result)
        return result

    async def delete(self, scope: str, key: str) -> bool:
        # Forgotten first and after: a claim racing the delete may have kept the old answer.
        self.cache.forget(scope, key)
        try:
            return await self._store.delete(scope, key)
        finally:
            self.cache.forget(scope, key)

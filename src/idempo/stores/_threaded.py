"""Serve a synchronous store to async code.

Stores whose work happens in this process (memory, SQLite) have one implementation; async callers
reach it through this adapter, which runs each operation in a worker thread (``offload=True``,
for work that blocks on I/O or locks) or inline (for work that never blocks).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

from idempo.core.records import ClaimResult, Record, State
from idempo.stores.base import Page, Stats, Store

__all__ = ["SyncStoreAsAsync"]

T = TypeVar("T")


class SyncStoreAsAsync:
    """An :class:`~idempo.stores.base.AsyncStore` over a :class:`~idempo.stores.base.Store`."""

    def __init__(self, store: Store, *, offload: bool = True) -> None:
        self.sync_store = store
        self._offload = offload

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._offload:
            return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
        return fn(*args, **kwargs)

    async def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        return await self._run(
            self.sync_store.claim, scope, key, fingerprint, token, lease=lease, ttl=ttl
        )

    async def complete(
        self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float
    ) -> None:
        await self._run(self.sync_store.complete, scope, key, token, outcome, ttl=ttl)

    async def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        return await self._run(self.sync_store.extend, scope, key, token, lease=lease)

    async def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        return await self._run(
            self.sync_store.set_recovery_point, scope, key, token, recovery_point, lease=lease
        )

    async def release(self, scope: str, key: str, token: str) -> bool:
        return await self._run(self.sync_store.release, scope, key, token)

    async def get(self, scope: str, key: str) -> Record | None:
        return await self._run(self.sync_store.get, scope, key)

    async def delete(self, scope: str, key: str) -> bool:
        return await self._run(self.sync_store.delete, scope, key)

    async def purge_expired(self, limit: int = 1000) -> int:
        return await self._run(self.sync_store.purge_expired, limit)

    async def scan(
        self,
        *,
        state: State | None = None,
        scope: str | None = None,
        older_than: float = 0.0,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        return await self._run(
            self.sync_store.scan,
            state=state,
            scope=scope,
            older_than=older_than,
            cursor=cursor,
            limit=limit,
        )

    async def stats(self) -> Stats:
        return await self._run(self.sync_store.stats)

    async def migrate(self) -> None:
        await self._run(self.sync_store.migrate)

    async def close(self) -> None:
        await self._run(self.sync_store.close)

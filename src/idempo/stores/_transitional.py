"""Stores that decide in Python: load the record under a lock, let the core decide, save.

The memory store (one lock), SQLite (one ``BEGIN IMMEDIATE`` transaction) and the bound MariaDB
store of transactional mode (``SELECT ... FOR UPDATE`` in the caller's transaction) can hold a
record still for the length of one decision. Their contract operations are then the same few
lines: read the clock and the record, apply :mod:`idempo.core.transitions`, write what it
returns. :class:`TransitionalStore` holds those lines once; each store supplies the atomic step
and the row I/O as hooks.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Generic, TypeVar

from idempo.core import transitions
from idempo.core.records import ClaimResult, Record
from idempo.errors import StoreError

__all__ = ["RowConflict", "TransitionalStore"]

H = TypeVar("H")  # what the atomic step hands to the row hooks (a connection, or nothing)

# A claim reloads after a RowConflict; only a key deleted and re-inserted by others this many
# times in a row gives up.
_CLAIM_TRIES = 100


class RowConflict(Exception):
    """Raised by ``_save(insert=True)`` when a concurrent writer inserted the row first (a
    duplicate key): the claim loads the row again and decides afresh."""


class TransitionalStore(Generic[H]):
    """The contract operations, written once over four hooks.

    * ``_atomic(operation, write=)``: a context manager for one atomic step, yielding the
      handle the row hooks use. ``write=True`` steps decide and may write: nobody else may
      change the record until the step ends.
    * ``_load(h, operation, scope, key, lock=)``: the store's clock and the record (expired or
      not; None if absent), read inside the step; ``lock`` is ``write`` of that step.
    * ``_save(h, operation, record, insert=)``: write ``record``; ``insert`` says the step
      loaded no record. May raise :class:`RowConflict` on an insert.
    * ``_remove(h, operation, scope, key)``: delete the record.

    ``purge_expired``, ``migrate`` and ``close`` are each store's own.
    """

    def _atomic(self, operation: str, *, write: bool) -> AbstractContextManager[H]:
        raise NotImplementedError

    def _load(
        self, h: H, operation: str, scope: str, key: str, *, lock: bool
    ) -> tuple[float, Record | None]:
        raise NotImplementedError

    def _save(self, h: H, operation: str, record: Record, *, insert: bool) -> None:
        raise NotImplementedError

    def _remove(self, h: H, operation: str, scope: str, key: str) -> None:
        raise NotImplementedError

    def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        with self._atomic("claim", write=True) as h:
            for _ in range(_CLAIM_TRIES):
                now, current = self._load(h, "claim", scope, key, lock=True)
                result, write = transitions.claim(
                    current,
                    scope=scope,
                    key=key,
                    fingerprint=fingerprint,
                    token=token,
                    now=now,
                    lease=lease,
                    ttl=ttl,
                )
                if write is not None:
                    try:
                        self._save(h, "claim", write, insert=current is None)
                    except RowConflict:
                        continue
                return result
        raise StoreError(f"claim of {scope!r}/{key!r} kept racing concurrent inserts")

    def complete(self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float) -> None:
        with self._atomic("complete", write=True) as h:
            now, current = self._load(h, "complete", scope, key, lock=True)
            record = transitions.complete(current, token=token, outcome=outcome, now=now, ttl=ttl)
            self._save(h, "complete", record, insert=False)

    def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        return self._extend("extend", scope, key, token, lease, None)

    def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        return self._extend("set_recovery_point", scope, key, token, lease, recovery_point)

    def _extend(
        self,
        operation: str,
        scope: str,
        key: str,
        token: str,
        lease: float,
        recovery_point: bytes | None,
    ) -> float:
        with self._atomic(operation, write=True) as h:
            now, current = self._load(h, operation, scope, key, lock=True)
            record = transitions.extend(
                current, token=token, now=now, lease=lease, recovery_point=recovery_point
            )
            self._save(h, operation, record, insert=False)
        assert record.lease_until is not None  # an in_progress record always has a lease
        return record.lease_until

    def release(self, scope: str, key: str, token: str) -> bool:
        with self._atomic("release", write=True) as h:
            now, current = self._load(h, "release", scope, key, lock=True)
            current = transitions.live(current, now)
            if current is None or current.token != token:
                return False
            self._remove(h, "release", scope, key)
            return True

    def get(self, scope: str, key: str) -> Record | None:
        with self._atomic("get", write=False) as h:
            now, current = self._load(h, "get", scope, key, lock=False)
            return transitions.public(current, now)

    def delete(self, scope: str, key: str) -> bool:
        # An expired record is removed too, as cleanup, but only a live one counts as deleted.
        with self._atomic("delete", write=True) as h:
            now, current = self._load(h, "delete", scope, key, lock=True)
            if current is not None:
                self._remove(h, "delete", scope, key)
            return transitions.live(current, now) is not None

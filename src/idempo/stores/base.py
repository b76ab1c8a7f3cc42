"""The store contract: a few atomic operations over bytes, and no policy.

Every store implements :class:`Store` (sync) and/or :class:`AsyncStore` (async) with the same
semantics, checked by the public conformance suite in :mod:`idempo.testing`.

Rules every operation follows:

* One round trip to the server and atomic on its own (Redis: one Lua script on one key; SQL: one
  statement; SQLite: one ``BEGIN IMMEDIATE`` transaction; memory: one lock).
* Time comes from the store's clock (``now`` below), never the client's.
* A record whose ``expires_at <= now`` is absent for every operation.
* A connection failure raises :class:`~idempo.errors.StoreUnavailableError` and writes nothing
  that a retry could not repeat.

``claim(scope, key, fingerprint, token, lease=, ttl=)`` decides, atomically, exactly one of:

=========================================================  ===================================
record for (scope, key)                                    answer
=========================================================  ===================================
absent (or expired)                                        ACQUIRED: new in_progress record,
                                                           ``lease_until = now + lease``,
                                                           ``expires_at = now + max(ttl, lease)``
fingerprint differs                                        MISMATCH (the stored record)
completed                                                  COMPLETED (with its outcome)
in_progress, ``lease_until > now``                         IN_PROGRESS (the stored record)
in_progress, ``lease_until <= now``                        ACQUIRED, ``takeover=True``: the token
                                                           is replaced, the recovery point kept
=========================================================  ===================================

Only an ACQUIRED answer carries the fencing token (``record.token``); every other answer, and
``get``, shows the record with ``token=None``.

``complete(..., token, outcome, ttl=)`` turns the record completed with ``expires_at = now + ttl``
if ``token`` is the current one (the lease may have run out: as long as nobody took over, the
holder may still finish). ``extend(..., token, lease=)`` moves ``lease_until`` to ``now + lease``
and returns it; ``set_recovery_point`` stores a phase marker (and extends the lease likewise).
All three raise :class:`~idempo.errors.LeaseLostError` when ``token`` is not the current token
of an in_progress record. ``release(..., token)`` deletes the record if ``token`` is current and
returns whether it did. ``get`` returns the live record (without its token) or None;
``delete`` removes it whatever its state (True if a live record was removed);
``purge_expired(limit)`` deletes at most ``limit`` expired records in one batch and returns how
many (stores whose server expires keys itself return 0).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from idempo.core.records import ClaimResult, Record

__all__ = ["AsyncStore", "Store"]


@runtime_checkable
class Store(Protocol):
    """A synchronous idempotency store."""

    def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult: ...

    def complete(self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float) -> None: ...

    def extend(self, scope: str, key: str, token: str, *, lease: float) -> float: ...

    def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float: ...

    def release(self, scope: str, key: str, token: str) -> bool: ...

    def get(self, scope: str, key: str) -> Record | None: ...

    def delete(self, scope: str, key: str) -> bool: ...

    def purge_expired(self, limit: int = 1000) -> int: ...

    def migrate(self) -> None:
        """Create or upgrade the store's schema (idempotent)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncStore(Protocol):
    """An asynchronous idempotency store: the same contract, awaited."""

    async def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult: ...

    async def complete(
        self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float
    ) -> None: ...

    async def extend(self, scope: str, key: str, token: str, *, lease: float) -> float: ...

    async def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float: ...

    async def release(self, scope: str, key: str, token: str) -> bool: ...

    async def get(self, scope: str, key: str) -> Record | None: ...

    async def delete(self, scope: str, key: str) -> bool: ...

    async def purge_expired(self, limit: int = 1000) -> int: ...

    async def migrate(self) -> None: ...

    async def close(self) -> None: ...

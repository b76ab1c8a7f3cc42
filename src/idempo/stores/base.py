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

Two operations serve operators, not requests (the ``idempo keys list`` and ``idempo stats``
commands, dashboards, ``idempo recover --stalled``):

``scan(state=, scope=, older_than=, cursor=, limit=)`` returns one :class:`Page` of live records
(in (scope, key) order, except on Redis, which lists in SCAN's order), filtered by state, by
scope and by age (``older_than``: created at least that many seconds ago by the store's clock).
Pass ``page.cursor`` back for the next page; the listing is over when it is None. The cursor is
opaque: only the store that made it reads it. A page examines at most ``limit`` stored records
(index-backed: a page never loads the table), so a page may hold fewer records than ``limit``,
even none, before the end. Records come without their fencing token and without their outcome
(``get`` one for its outcome). A listing is not a snapshot: a record written while it runs may
or may not appear; on Redis (whose SCAN it is) one may even appear twice, and a page may hold a
few more than ``limit``.

``stats()`` returns :class:`Stats`: live records by state, how many of the in-progress ones are
*stalled* (lease run out, nobody took over: a crashed holder), expired records not purged yet,
and the age of the oldest in-progress record. SQL stores count in one statement on the server;
Redis counts by a paged SCAN of the store's prefix (see :mod:`idempo.stores._async.redis`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from idempo.core.records import ClaimResult, Record, State

__all__ = ["AsyncStore", "Page", "Stats", "Store"]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of :meth:`Store.scan`."""

    records: tuple[Record, ...]  # live records, token and outcome None
    cursor: str | None  # pass it back for the next page; None: the listing is over
    now: float  # the store's clock when it read the page (compare leases with it)


@dataclass(frozen=True, slots=True)
class Stats:
    """What :meth:`Store.stats` counts, by the store's clock ``now``."""

    in_progress: int  # live in-progress records (stalled ones included)
    completed: int  # live completed records
    expired: int  # past expires_at, not purged yet (absent for every other operation)
    stalled: int  # in progress, lease run out: the holder crashed or stalled
    # Seconds since the oldest live in-progress record was created (None: none in progress).
    oldest_in_progress_age: float | None
    now: float


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

    def scan(
        self,
        *,
        state: State | None = None,
        scope: str | None = None,
        older_than: float = 0.0,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page: ...

    def stats(self) -> Stats: ...

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

    async def scan(
        self,
        *,
        state: State | None = None,
        scope: str | None = None,
        older_than: float = 0.0,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page: ...

    async def stats(self) -> Stats: ...

    async def migrate(self) -> None: ...

    async def close(self) -> None: ...

"""A bounded in-process cache of completed outcomes (DESIGN section 8), off unless asked for.

A completed record never changes until it expires or somebody deletes it, so a process that
has just read one may answer the next retry of the same key from memory: no round trip at all.
What it gives up is how soon a delete made *elsewhere* is seen: a record deleted through another
handle, by another process (``idempo keys delete``) or by the store's own expiry is still
replayed here for at most ``ttl`` seconds. A delete through the cached store itself is seen at
once. That trade is the caller's to make, so the cache is opt-in (``replay_cache=``).

Only what a store answered COMPLETED goes in, keyed by (scope, key) and held with the
fingerprint it was stored under: a request with another fingerprint is never answered from here
(the store then says "mismatch", as it would have). An entry lives ``ttl`` seconds at most, and
never past the record's own expiry by the store's clock. The cache holds at most ``max_entries``
records and no outcome over ``max_outcome_bytes``; when full, the oldest entry goes first.
"""

from __future__ import annotations

import threading
import time

from idempo.core.records import ClaimResult, ClaimStatus

# Not in idempo.core: it reads a clock and takes a lock (core is pure).

__all__ = ["ReplayCache", "replay_cache_of"]


class ReplayCache:
    """Completed outcomes kept in this process for ``ttl`` seconds (see the module).

    Thread-safe: lookups take no lock (one dict read); inserts and evictions take one.
    """

    __slots__ = ("_entries", "_lock", "max_entries", "max_outcome_bytes", "ttl")

    def __init__(
        self,
        ttl: float = 1.0,
        *,
        max_entries: int = 10_000,
        max_outcome_bytes: int = 64 * 1024,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"the replay cache's ttl must be > 0 seconds, not {ttl!r}")
        if max_entries < 1 or max_outcome_bytes < 0:
            raise ValueError("max_entries must be >= 1 and max_outcome_bytes >= 0")
        self.ttl = float(ttl)
        self.max_entries = max_entries
        self.max_outcome_bytes = max_outcome_bytes
        # (scope, key) -> (monotonic deadline, the store's COMPLETED answer). Insertion order is
        # age order, so the first entry is the one to evict.
        self._entries: dict[tuple[str, str], tuple[float, ClaimResult]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ReplayCache(ttl={self.ttl}, max_entries={self.max_entries}, size={len(self)})"

    def lookup(self, scope: str, key: str, fingerprint: str) -> ClaimResult | None:
        """The kept COMPLETED answer for (scope, key) if it is live and was stored under this
        fingerprint; otherwise None (ask the store)."""
        entry = self._entries.get((scope, key))
        if entry is None:
            return None
        deadline, result = entry
        if deadline <= time.monotonic():
            self.forget(scope, key)
            return None
        if result.record.fingerprint != fingerprint:
            return None
        return result

    def keep(self, result: ClaimResult) -> None:
        """Keep a store's COMPLETED answer (anything else, or an outcome too large, is not)."""
        record = result.record
        outcome = record.outcome
        if result.status is not ClaimStatus.COMPLETED or outcome is None:
            return
        if len(outcome) > self.max_outcome_bytes:
            return
        # Never past the record's own expiry: judged on the store's clock (its "now"), so that
        # the two machines' clocks need not agree.
        life = min(self.ttl, record.expires_at - result.now)
        if life <= 0:
            return
        deadline = time.monotonic() + life
        with self._lock:
            entries = self._entries
            entries.pop((record.scope, record.key), None)
            while len(entries) >= self.max_entries:
                del entries[next(iter(entries))]
            entries[(record.scope, record.key)] = (deadline, result)

    def forget(self, scope: str, key: str) -> None:
        """Drop (scope, key): a delete through the cached store calls this before the store's."""
        with self._lock:
            self._entries.pop((scope, key), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def replay_cache_of(option: float | ReplayCache | None) -> ReplayCache | None:
    """The cache a ``replay_cache=`` option asks for: None or 0 (off, the default), seconds
    (a :class:`ReplayCache` of that ttl with the default bounds), or a ReplayCache itself (to
    choose the bounds, or to share one cache between several fronts over one store)."""
    if option is None or isinstance(option, ReplayCache):
        return option
    if isinstance(option, bool) or not isinstance(option, int | float):
        raise TypeError(
            f"replay_cache must be seconds (a number), a ReplayCache or None, not {option!r}"
        )
    if option == 0:
        return None
    return ReplayCache(float(option))

# DO NOT EDIT: generated from src/idempo/testing/_async/operations.py by scripts/unasync.py
"""The operator part of the store contract: ``scan`` and ``stats`` (``_sync/operations.py`` is
generated from ``_async/``).

A mixin of :class:`~idempo.testing.StoreConformance`, kept in a module of its own: every
store that runs the conformance suite runs these too, on the same fresh ``store`` fixture, so
the counts below are exact. ``capabilities.scan_exact`` is False for a store whose listing may
repeat a record or overfill a page (Redis: SCAN's guarantee); ``expires_natively`` says that
expired records may already be gone, so that ``stats().expired`` cannot be exact.
"""

from __future__ import annotations

import uuid

import pytest

from idempo._primitives import sync_sleep
from idempo.core.records import Record, State
from idempo.stores.base import Store
from idempo.testing._capabilities import Capabilities

__all__ = ["OperationsConformance"]

LEASE = 30.0
TTL = 60.0
SHORT = 0.3  # a lease or TTL that a test waits out
PAST_SHORT = 0.45


def _put(
    store: Store,
    scope: str,
    key: str,
    *,
    complete: bool = False,
    lease: float = LEASE,
    ttl: float = TTL,
) -> str:
    """Claim (scope, key), and complete it with outcome ``b"out"`` if asked; its token."""
    token = uuid.uuid4().hex
    store.claim(scope, key, "fp", token, lease=lease, ttl=ttl)
    if complete:
        store.complete(scope, key, token, b"out", ttl=ttl)
    return token


def _listing(
    store: Store, capabilities: Capabilities, *, limit: int = 5, **filters: object
) -> list[Record]:
    """Every record of a scan, page after page, until the cursor is None."""
    found: list[Record] = []
    cursor: str | None = None
    for _ in range(10_000):
        page = store.scan(cursor=cursor, limit=limit, **filters)  # type: ignore[arg-type]
        if capabilities.scan_exact:
            assert len(page.records) <= limit
        found.extend(page.records)
        cursor = page.cursor
        if cursor is None:
            break
    else:
        raise AssertionError("the scan never ended")
    if capabilities.scan_exact:
        names = [(r.scope, r.key) for r in found]
        assert len(names) == len(set(names)), "a record was listed twice"
    return found


def _names(records: list[Record]) -> set[tuple[str, str, State]]:
    return {(r.scope, r.key, r.state) for r in records}


class OperationsConformance:
    """``scan`` and ``stats``: see the module docstring."""

    def test_scan_lists_every_live_record_page_by_page(
        self, store: Store, capabilities: Capabilities
    ) -> None:
        """23 records in three scopes, listed 5 a page: each once, without token or outcome."""
        expected = set()
        for i in range(23):
            scope, key = f"ops-{i % 3}", f"k-{i:02d}-{uuid.uuid4().hex[:6]}"
            _put(store, scope, key, complete=i % 2 == 0)
            expected.add((scope, key, State.COMPLETED if i % 2 == 0 else State.IN_PROGRESS))
        found = _listing(store, capabilities)
        assert _names(found) == expected
        assert all(r.token is None and r.outcome is None for r in found)
        assert all(r.fingerprint == "fp" for r in found)
        if capabilities.scan_exact:  # in (scope, key) order
            names = [(r.scope, r.key) for r in found]
            assert names == sorted(names)

    def test_scan_filters_by_state_and_scope(
        self, store: Store, capabilities: Capabilities
    ) -> None:
        """state= and scope= narrow the listing, alone and together."""
        done: set[tuple[str, str]] = set()
        held: set[tuple[str, str]] = set()
        for i in range(12):
            scope, key = f"ops-{i % 2}", f"k-{i:02d}-{uuid.uuid4().hex[:6]}"
            _put(store, scope, key, complete=i % 3 == 0)
            (done if i % 3 == 0 else held).add((scope, key))
        both = done | held
        listed = _listing(store, capabilities, state=State.COMPLETED)
        assert {(r.scope, r.key) for r in listed} == done
        listed = _listing(store, capabilities, state=State.IN_PROGRESS, limit=2)
        assert {(r.scope, r.key) for r in listed} == held
        listed = _listing(store, capabilities, scope="ops-1", limit=3)
        assert {(r.scope, r.key) for r in listed} == {n for n in both if n[0] == "ops-1"}
        listed = _listing(store, capabilities, scope="ops-0", state="in_progress")
        assert {(r.scope, r.key) for r in listed} == {n for n in held if n[0] == "ops-0"}
        assert _listing(store, capabilities, scope="ops-none") == []

    def test_scan_filters_by_age(self, store: Store, capabilities: Capabilities) -> None:
        """older_than= lists only records created at least that long ago, by the store's clock."""
        old, new = f"old-{uuid.uuid4().hex}", f"new-{uuid.uuid4().hex}"
        _put(store, "ops", old)
        sync_sleep(PAST_SHORT)
        _put(store, "ops", new, complete=True)
        listed = _listing(store, capabilities, older_than=SHORT)
        assert [r.key for r in listed] == [old]
        assert {r.key for r in _listing(store, capabilities)} == {old, new}

    def test_scan_skips_expired_records(
        self, store: Store, capabilities: Capabilities
    ) -> None:
        """An expired record, purged or not, is absent from a listing."""
        gone, kept = f"gone-{uuid.uuid4().hex}", f"kept-{uuid.uuid4().hex}"
        _put(store, "ops", gone, complete=True, ttl=SHORT)
        _put(store, "ops", kept, complete=True)
        sync_sleep(PAST_SHORT)
        assert [r.key for r in _listing(store, capabilities)] == [kept]

    def test_scan_shows_leases_and_recovery_points(
        self, store: Store, capabilities: Capabilities
    ) -> None:
        """A stalled phased operation is visible: its recovery point, its lease run out."""
        key = f"phased-{uuid.uuid4().hex}"
        token = _put(store, "ops", key, lease=SHORT)
        store.set_recovery_point("ops", key, token, b"phase-1", lease=SHORT)
        page = store.scan(state=State.IN_PROGRESS, limit=10)
        while not page.records and page.cursor is not None:  # Redis may start with empty pages
            page = store.scan(state=State.IN_PROGRESS, limit=10, cursor=page.cursor)
        (record,) = page.records
        assert record.recovery_point == b"phase-1"
        assert record.lease_until is not None
        assert record.lease_until > page.now
        sync_sleep(PAST_SHORT)
        (record,) = _listing(store, capabilities, state=State.IN_PROGRESS)
        assert record.lease_until is not None
        stats = store.stats()
        assert record.lease_until <= stats.now
        assert record.token is None

    def test_scan_refuses_bad_arguments(self, store: Store) -> None:
        """A limit below 1, a negative age or a cursor the store never gave: ValueError."""
        with pytest.raises(ValueError, match="limit"):
            store.scan(limit=0)
        with pytest.raises(ValueError, match="older_than"):
            store.scan(older_than=-1)
        with pytest.raises(ValueError, match="cursor"):
            store.scan(cursor="not a cursor!")
        with pytest.raises(ValueError, match="finished"):
            store.scan(state="finished")  # type: ignore[arg-type]

    def test_stats_of_an_empty_store(self, store: Store) -> None:
        """A fresh store counts nothing and has no oldest claim."""
        stats = store.stats()
        assert (stats.in_progress, stats.completed, stats.expired, stats.stalled) == (0, 0, 0, 0)
        assert stats.oldest_in_progress_age is None
        assert stats.now > 1_600_000_000

    def test_stats_counts_states_stalled_and_expired(
        self, store: Store, capabilities: Capabilities
    ) -> None:
        """Live records by state, stalled claims among them, expired ones, the oldest claim."""
        _put(store, "ops", "stalled", lease=SHORT)  # the oldest, and its lease runs out
        _put(store, "ops", "expiring", complete=True, ttl=SHORT)
        _put(store, "ops-b", "expiring", complete=True, ttl=SHORT)
        sync_sleep(PAST_SHORT)
        _put(store, "ops", "running")
        _put(store, "ops-b", "running")
        _put(store, "ops", "done", complete=True)
        stats = store.stats()
        assert stats.in_progress == 3
        assert stats.stalled == 1
        assert stats.completed == 1
        if capabilities.expires_natively:
            assert 0 <= stats.expired <= 2  # the server may have removed them already
        else:
            assert stats.expired == 2
        assert stats.oldest_in_progress_age is not None
        assert PAST_SHORT - 0.05 <= stats.oldest_in_progress_age < PAST_SHORT + 10
        if not capabilities.expires_natively:
            assert store.purge_expired() == 2
            assert (store.stats()).expired == 0

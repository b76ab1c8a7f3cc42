# DO NOT EDIT: generated from src/idempo/testing/_async/server.py by scripts/unasync.py
"""The server-store conformance suite (``_sync/server.py`` is generated from ``_async/``).

The second tier of :mod:`idempo.testing`, for a store whose records live on a server (a SQL
database, Redis): what its operators rely on beyond the contract of the first tier. Migrating
twice changes nothing; without auto-migration a missing schema is a :class:`StoreError`, not an
outage; a server that is down is a :class:`StoreUnavailableError`, quickly; a lost lease says
why; a record written by a newer idempo is refused, not misread; fencing tokens never leave the
server; and purging while claimers revive expired keys never deletes a live record.

Subclass it in a pytest module, once per flavour of the store (:mod:`idempo.testing` exports a
sync and an async class), and provide:

* a ``location`` fixture: whatever the hooks below need to reach the store's data behind its
  back (a schema name, a table name, a key prefix), fresh for each test;
* a ``store`` fixture: a store on that location, migrating itself on first use;
* an ``unmigrated_store`` fixture: a store on that location whose schema was never created and
  that does not migrate itself (or set ``has_schema = False`` if the store has no schema);
* a ``down_store`` fixture: a store pointed at a server that is down (a port nothing listens
  on), with short timeouts;
* the hooks ``write_newer_format``, ``stored_lease``, ``count_records`` and ``schema_objects``
  (plain methods in both flavours: they act behind the store's back, with any client).

    class TestMyStore(ServerStoreConformance):
        @pytest.fixture
        def location(self):
            name = new_schema_name()
            yield name
            drop_schema(name)

        @pytest.fixture
        def store(self, location):
            s = MyStore(URL, schema=location)
            yield s
            s.close()

        def write_newer_format(self, location, scope, key):
            run_sql(location, "UPDATE records SET format = 2 WHERE key = %s", key)
        ...

Class attributes say what differs between stores: ``has_schema`` (False for a store with
nothing to migrate: the schema tests skip), ``expires_natively`` (as in the first tier: the
server deletes expired records, ``purge_expired`` sends nothing), ``newer_format_match`` and
``unavailable_match`` (what the errors say, as regular expressions) and ``unavailable_within``
(seconds).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from idempo._primitives import sync_gather, sync_sleep
from idempo.core.records import ClaimResult, ClaimStatus, State
from idempo.errors import LeaseLostError, StoreError, StoreUnavailableError
from idempo.stores.base import Store
from idempo.testing._sync.conformance import LEASE, TTL, _key, _token

__all__ = ["ServerStoreConformance"]

EXPIRED = 0.05  # a TTL or lease that the test waits out
PAST_EXPIRED = 0.1
REVIVALS = 48  # expired keys revived while purgers run, per round
PURGERS = 3

# Each operation of the contract, called once on a store at a server that is down.
_DOWN_CALLS: dict[str, Any] = {
    "claim": lambda s: s.claim("down", "k", "fp", "t", lease=LEASE, ttl=TTL),
    "complete": lambda s: s.complete("down", "k", "t", b"x", ttl=TTL),
    "extend": lambda s: s.extend("down", "k", "t", lease=LEASE),
    "set_recovery_point": lambda s: s.set_recovery_point("down", "k", "t", b"p", lease=LEASE),
    "release": lambda s: s.release("down", "k", "t"),
    "get": lambda s: s.get("down", "k"),
    "delete": lambda s: s.delete("down", "k"),
    "purge_expired": lambda s: s.purge_expired(),
    "scan": lambda s: s.scan(),
    "stats": lambda s: s.stats(),
    "migrate": lambda s: s.migrate(),
}


class ServerStoreConformance:
    """Every server store passes these. See the module docstring for how to use them."""

    has_schema: bool = True
    expires_natively: bool = False
    newer_format_match: str = "format 2"
    unavailable_match: str | None = None
    unavailable_within: float = 5.0

    scope = "server-conformance"

    # -- hooks -------------------------------------------------------------------------------

    @pytest.fixture
    def unmigrated_store(self) -> Store:
        """Override: a store on ``location`` whose schema is missing, without auto-migration."""
        if not self.has_schema:
            pytest.skip("this store has no schema to migrate")
        raise NotImplementedError("provide an unmigrated_store fixture, or set has_schema = False")

    def write_newer_format(self, location: Any, scope: str, key: str) -> None:
        """Override: mark the stored record ``(scope, key)`` as written by a newer idempo."""
        raise NotImplementedError

    def stored_lease(self, location: Any, scope: str, key: str) -> tuple[Any, Any]:
        """Override: the token and lease deadline the server holds for a record (None if none)."""
        raise NotImplementedError

    def count_records(self, location: Any) -> int:
        """Override: how many records the server holds at ``location``, live or not."""
        raise NotImplementedError

    def schema_objects(self, location: Any) -> Any:
        """Override: the schema objects at ``location`` (tables, indexes, functions), comparable
        with ``==``; a store without a schema may return None."""
        raise NotImplementedError

    def _claim(
        self, store: Store, key: str, fingerprint: str = "fp", **options: Any
    ) -> ClaimResult:
        token = options.pop("token", None) or _token()
        lease, ttl = options.pop("lease", LEASE), options.pop("ttl", TTL)
        return store.claim(self.scope, key, fingerprint, token, lease=lease, ttl=ttl)

    # -- migrations --------------------------------------------------------------------------

    def test_migrate_is_idempotent(self, store: Store, location: Any) -> None:
        """Migrating again keeps the records and leaves the schema as it was."""
        key = _key()
        store.migrate()
        first = self._claim(store, key)
        objects = self.schema_objects(location)
        store.migrate()
        store.migrate()
        assert self.schema_objects(location) == objects
        again = self._claim(store, key)
        assert (first.status, again.status) == (ClaimStatus.ACQUIRED, ClaimStatus.IN_PROGRESS)
        assert again.record.created_at == first.record.created_at

    def test_without_auto_migrate_a_missing_schema_is_a_store_error(
        self, unmigrated_store: Store
    ) -> None:
        """A store that may not migrate says to run migrate(), not that the server is down."""
        store, key = unmigrated_store, _key()
        with pytest.raises(StoreError, match=r"migrate\(\)") as info:
            self._claim(store, key)
        assert not isinstance(info.value, StoreUnavailableError)
        with pytest.raises(StoreError, match=r"migrate\(\)") as info:
            store.get(self.scope, key)
        assert not isinstance(info.value, StoreUnavailableError)
        store.migrate()
        assert (self._claim(store, key)).token

    # -- a server that is down ---------------------------------------------------------------

    @pytest.mark.parametrize("operation", list(_DOWN_CALLS))
    def test_store_down_is_unavailable(self, down_store: Store, operation: str) -> None:
        """Every operation on a store whose server refuses connections is StoreUnavailableError,
        within ``unavailable_within`` seconds."""
        if operation == "migrate" and not self.has_schema:
            pytest.skip("this store has no schema to migrate")
        if operation == "purge_expired" and self.expires_natively:
            pytest.skip("this store's server expires records itself: purge sends nothing")
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=self.unavailable_match):
            _DOWN_CALLS[operation](down_store)
        assert time.monotonic() - started < self.unavailable_within

    # -- records -----------------------------------------------------------------------------

    def test_lease_lost_says_why(self, store: Store) -> None:
        """LeaseLostError tells a lease taken over from a completed record and a gone one."""
        key = _key()
        stale = self._claim(store, key, lease=EXPIRED)
        sync_sleep(PAST_EXPIRED)
        fresh = self._claim(store, key)
        assert fresh.takeover
        with pytest.raises(LeaseLostError, match="taken over"):
            store.extend(self.scope, key, stale.token, lease=LEASE)
        with pytest.raises(LeaseLostError, match="taken over"):
            store.extend(self.scope, key, "other", lease=LEASE)
        store.complete(self.scope, key, fresh.token, b"x", ttl=TTL)
        with pytest.raises(LeaseLostError, match="already completed"):
            store.complete(self.scope, key, fresh.token, b"y", ttl=TTL)
        with pytest.raises(LeaseLostError, match="already completed"):
            store.set_recovery_point(self.scope, key, fresh.token, b"p", lease=LEASE)
        record = store.get(self.scope, key)
        assert record is not None
        assert record.state is State.COMPLETED
        with pytest.raises(LeaseLostError, match="gone"):
            store.set_recovery_point(self.scope, _key(), fresh.token, b"p", lease=LEASE)

    def test_record_of_a_newer_format_is_refused(
        self, store: Store, location: Any
    ) -> None:
        """A record a newer idempo wrote is refused with StoreError, never misread."""
        key = _key()
        self._claim(store, key)
        self.write_newer_format(location, self.scope, key)
        with pytest.raises(StoreError, match=self.newer_format_match):
            store.get(self.scope, key)
        with pytest.raises(StoreError, match=self.newer_format_match):
            self._claim(store, key)

    def test_tokens_stay_on_the_server(self, store: Store, location: Any) -> None:
        """Only ACQUIRED answers carry the token; the server holds none once completed."""
        key = _key()
        first = self._claim(store, key, token="secret-token")
        assert first.token == "secret-token"
        token, lease_until = self.stored_lease(location, self.scope, key)
        assert token == "secret-token"
        assert lease_until is not None
        assert (self._claim(store, key)).record.token is None
        assert (self._claim(store, key, "fp2")).record.token is None
        record = store.get(self.scope, key)
        assert record is not None
        assert record.token is None
        store.complete(self.scope, key, first.token, b"x", ttl=TTL)
        assert self.stored_lease(location, self.scope, key) == (None, None)

    # -- purge -------------------------------------------------------------------------------

    def test_purge_never_deletes_live_rows(self, store: Store, location: Any) -> None:
        """Purging in a loop while claimers revive expired keys: no revived record is lost, live
        records (in progress, lapsed leases, completed) are never touched, and nobody sees an
        error (a purge locking index entries before rows would deadlock with the revivals)."""
        lapsed = self._claim(store, "lapsed", lease=EXPIRED)
        done = self._claim(store, "done")
        store.complete(self.scope, "done", done.token, b"kept", ttl=TTL)
        self._claim(store, "held")
        for rnd in range(3):
            keys = [f"r{rnd}-{i}" for i in range(REVIVALS)]
            for key in keys:
                first = self._claim(store, key, "old")
                store.complete(self.scope, key, first.token, b"old", ttl=EXPIRED)
            sync_sleep(PAST_EXPIRED)
            revived = self._revive_while_purging(store, keys)
            assert revived == [True] * len(keys)
            for key in keys:
                record = store.get(self.scope, key)
                assert record is not None, key
                assert record.state is State.IN_PROGRESS, key
            assert store.purge_expired() == 0
        assert store.get(self.scope, "lapsed") is not None  # lease ran out, still live
        kept = store.get(self.scope, "done")
        assert kept is not None
        assert kept.outcome == b"kept"
        assert store.get(self.scope, "held") is not None
        assert lapsed.token
        assert self.count_records(location) == 3 + 3 * REVIVALS

    def _revive_while_purging(self, store: Store, keys: list[str]) -> list[bool]:
        """Claim every expired key anew while purgers loop; whether each revival stuck."""
        revived: list[bool] = []

        def purge() -> None:
            while len(revived) < len(keys):
                store.purge_expired(limit=3)
                # A purge that sends nothing (native expiry) would never let the revivers run.
                sync_sleep(0)

        def revive(key: str) -> None:
            try:
                result = self._claim(store, key, "new")
                assert result.status is ClaimStatus.ACQUIRED
                assert not result.takeover
                record = store.get(self.scope, key)
                revived.append(record is not None and record.fingerprint == "new")
            except BaseException:
                revived.append(False)  # so that the purgers stop
                raise

        def reviver(key: str) -> Any:
            return lambda: revive(key)

        results = sync_gather([purge] * PURGERS + [reviver(k) for k in keys])
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        return revived

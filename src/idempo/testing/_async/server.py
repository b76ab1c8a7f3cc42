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

    class TestMyStore(AsyncServerStoreConformance):
        @pytest.fixture
        def location(self):
            name = new_schema_name()
            yield name
            drop_schema(name)

        @pytest.fixture
        async def store(self, location):
            s = AsyncMyStore(URL, schema=location)
            yield s
            await s.close()

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

from idempo._primitives import async_gather, async_sleep
from idempo.core.records import ClaimResult, ClaimStatus, State
from idempo.errors import LeaseLostError, StoreError, StoreUnavailableError
from idempo.stores.base import AsyncStore
from idempo.testing._async.conformance import LEASE, TTL, _key, _token

__all__ = ["AsyncServerStoreConformance"]

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


class AsyncServerStoreConformance:
    """Every server store passes these. See the module docstring for how to use them."""

    has_schema: bool = True
    expires_natively: bool = False
    newer_format_match: str = "format 2"
    unavailable_match: str | None = None
    unavailable_within: float = 5.0

    scope = "server-conformance"

    # -- hooks -------------------------------------------------------------------------------

    @pytest.fixture
    async def unmigrated_store(self) -> AsyncStore:
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

    async def _claim(
        self, store: AsyncStore, key: str, fingerprint: str = "fp", **options: Any
    ) -> ClaimResult:
        token = options.pop("token", None) or _token()
        lease, ttl = options.pop("lease", LEASE), options.pop("ttl", TTL)
        return await store.claim(self.scope, key, fingerprint, token, lease=lease, ttl=ttl)

    # -- migrations --------------------------------------------------------------------------

    async def test_migrate_is_idempotent(self, store: AsyncStore, location: Any) -> None:
        """Migrating again keeps the records and leaves the schema as it was."""
        key = _key()
        await store.migrate()
        first = await self._claim(store, key)
        objects = self.schema_objects(location)
        await store.migrate()
        await store.migrate()
        assert self.schema_objects(location) == objects
        again = await self._claim(store, key)
        assert (first.status, again.status) == (ClaimStatus.ACQUIRED, ClaimStatus.IN_PROGRESS)
        assert again.record.created_at == first.record.created_at

    async def test_without_auto_migrate_a_missing_schema_is_a_store_error(
        self, unmigrated_store: AsyncStore
    ) -> None:
        """A store that may not migrate says to run migrate(), not that the server is down."""
        store, key = unmigrated_store, _key()
        with pytest.raises(StoreError, match=r"migrate\(\)") as info:
            await self._claim(store, key)
        assert not isinstance(info.value, StoreUnavailableError)
        with pytest.raises(StoreError, match=r"migrate\(\)") as info:
            await store.get(self.scope, key)
        assert not isinstance(info.value, StoreUnavailableError)
        await store.migrate()
        assert (await self._claim(store, key)).token

    # -- a server that is down ---------------------------------------------------------------

    @pytest.mark.parametrize("operation", list(_DOWN_CALLS))
    async def test_store_down_is_unavailable(self, down_store: AsyncStore, operation: str) -> None:
        """Every operation on a store whose server refuses connections is StoreUnavailableError,
        within ``unavailable_within`` seconds."""
        if operation == "migrate" and not self.has_schema:
            pytest.skip("this store has no schema to migrate")
        if operation == "purge_expired" and self.expires_natively:
            pytest.skip("this store's server expires records itself: purge sends nothing")
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=self.unavailable_match):
            await _DOWN_CALLS[operation](down_store)
        assert time.monotonic() - started < self.unavailable_within

    # -- records -----------------------------------------------------------------------------

    async def test_lease_lost_says_why(self, store: AsyncStore) -> None:
        """LeaseLostError tells a lease taken over from a completed record and a gone one."""
        key = _key()
        stale = await self._claim(store, key, lease=EXPIRED)
        await async_sleep(PAST_EXPIRED)
        fresh = await self._claim(store, key)
        assert fresh.takeover
        with pytest.raises(LeaseLostError, match="taken over"):
            await store.extend(self.scope, key, stale.token, lease=LEASE)
        with pytest.raises(LeaseLostError, match="taken over"):
            await store.extend(self.scope, key, "other", lease=LEASE)
        await store.complete(self.scope, key, fresh.token, b"x", ttl=TTL)
        with pytest.raises(LeaseLostError, match="already completed"):
            await store.complete(self.scope, key, fresh.token, b"y", ttl=TTL)
        with pytest.raises(LeaseLostError, match="already completed"):
            await store.set_recovery_point(self.scope, key, fresh.token, b"p", lease=LEASE)
        record = await store.get(self.scope, key)
        assert record is not None
        assert record.state is State.COMPLETED
        with pytest.raises(LeaseLostError, match="gone"):
            await store.set_recovery_point(self.scope, _key(), fresh.token, b"p", lease=LEASE)

    async def test_record_of_a_newer_format_is_refused(
        self, store: AsyncStore, location: Any
    ) -> None:
        """A record a newer idempo wrote is refused with StoreError, never misread."""
        key = _key()
        await self._claim(store, key)
        self.write_newer_format(location, self.scope, key)
        with pytest.raises(StoreError, match=self.newer_format_match):
            await store.get(self.scope, key)
        with pytest.raises(StoreError, match=self.newer_format_match):
            await self._claim(store, key)

    async def test_tokens_stay_on_the_server(self, store: AsyncStore, location: Any) -> None:
        """Only ACQUIRED answers carry the token; the server holds none once completed."""
        key = _key()
        first = await self._claim(store, key, token="secret-token")
        assert first.token == "secret-token"
        token, lease_until = self.stored_lease(location, self.scope, key)
        assert token == "secret-token"
        assert lease_until is not None
        assert (await self._claim(store, key)).record.token is None
        assert (await self._claim(store, key, "fp2")).record.token is None
        record = await store.get(self.scope, key)
        assert record is not None
        assert record.token is None
        await store.complete(self.scope, key, first.token, b"x", ttl=TTL)
        assert self.stored_lease(location, self.scope, key) == (None, None)

    # -- purge -------------------------------------------------------------------------------

    async def test_purge_never_deletes_live_rows(self, store: AsyncStore, location: Any) -> None:
        """Purging in a loop while claimers revive expired keys: no revived record is lost, live
        records (in progress, lapsed leases, completed) are never touched, and nobody sees an
        error (a purge locking index entries before rows would deadlock with the revivals)."""
        lapsed = await self._claim(store, "lapsed", lease=EXPIRED)
        done = await self._claim(store, "done")
        await store.complete(self.scope, "done", done.token, b"kept", ttl=TTL)
        await self._claim(store, "held")
        for rnd in range(3):
            keys = [f"r{rnd}-{i}" for i in range(REVIVALS)]
            for key in keys:
                first = await self._claim(store, key, "old")
                await store.complete(self.scope, key, first.token, b"old", ttl=EXPIRED)
            await async_sleep(PAST_EXPIRED)
            revived = await self._revive_while_purging(store, keys)
            assert revived == [True] * len(keys)
            for key in keys:
                record = await store.get(self.scope, key)
                assert record is not None, key
                assert record.state is State.IN_PROGRESS, key
            assert await store.purge_expired() == 0
        assert await store.get(self.scope, "lapsed") is not None  # lease ran out, still live
        kept = await store.get(self.scope, "done")
        assert kept is not None
        assert kept.outcome == b"kept"
        assert await store.get(self.scope, "held") is not None
        assert lapsed.token
        assert self.count_records(location) == 3 + 3 * REVIVALS

    async def _revive_while_purging(self, store: AsyncStore, keys: list[str]) -> list[bool]:
        """Claim every expired key anew while purgers loop; whether each revival stuck."""
        revived: list[bool] = []

        async def purge() -> None:
            while len(revived) < len(keys):
                await store.purge_expired(limit=3)
                # A purge that sends nothing (native expiry) would never let the revivers run.
                await async_sleep(0)

        async def revive(key: str) -> None:
            try:
                result = await self._claim(store, key, "new")
                assert result.status is ClaimStatus.ACQUIRED
                assert not result.takeover
                record = await store.get(self.scope, key)
                revived.append(record is not None and record.fingerprint == "new")
            except BaseException:
                revived.append(False)  # so that the purgers stop
                raise

        def reviver(key: str) -> Any:
            return lambda: revive(key)

        results = await async_gather([purge] * PURGERS + [reviver(k) for k in keys])
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        return revived

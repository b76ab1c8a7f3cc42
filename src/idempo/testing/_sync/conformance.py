# DO NOT EDIT: generated from src/idempo/testing/_async/conformance.py by scripts/unasync.py
"""The store conformance suite (``_sync/conformance.py`` is generated from ``_async/``).

The first tier of :mod:`idempo.testing`: the store contract that every store keeps (the second,
for stores on a server, is :mod:`idempo.testing._sync.server`). Subclass it in a pytest module
and provide a ``store`` fixture that yields a fresh, isolated store (unique key prefix, schema or
database; the tests count what the store holds, exactly): every test below runs against it.

    class TestMyStore(StoreConformance):
        @pytest.fixture
        def store(self):
            s = MyStore(...)
            yield s
            s.close()

What a store cannot do is read from the ``capabilities`` fixture, a :class:`Capabilities`:
``expires_natively`` (the server deletes expired records itself: ``purge_expired`` returns 0),
``server_clock`` (False for the in-process memory store, whose clock is the client's) and
``scan_exact`` (False for Redis: a listing may repeat a record). By default
it is built from the class attributes of the same names; a module that runs the suite over many
stores overrides the fixture with a table keyed by store kind.

Time-dependent tests use short leases and TTLs (a few hundred milliseconds) and real sleeps: the
point is to exercise the store's own clock, which a test cannot move.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from unittest import mock

import pytest

from idempo._primitives import sync_gather, sync_sleep
from idempo.core.records import ClaimResult, ClaimStatus, State
from idempo.errors import LeaseLostError
from idempo.stores.base import Store
from idempo.testing._sync.operations import OperationsConformance
from idempo.testing._capabilities import Capabilities

__all__ = ["StoreConformance"]

LEASE = 30.0
TTL = 60.0
SHORT = 0.3  # a lease or TTL that a test waits out
PAST_SHORT = 0.45
CONCURRENCY = 64


def _key(label: str = "k") -> str:
    return f"{label}-{uuid.uuid4().hex}"


def _token() -> str:
    return uuid.uuid4().hex


class StoreConformance(OperationsConformance):
    """Every store passes these (and the scan and stats tests of
    :class:`~idempo.testing._sync.operations.OperationsConformance`). See the module
    docstring for how to use them."""

    expires_natively: bool = False
    server_clock: bool = True
    scan_exact: bool = True

    scope = "conformance"

    @pytest.fixture
    def capabilities(self) -> Capabilities:
        """What the store under test cannot do; override to read it from elsewhere."""
        return Capabilities(
            expires_natively=self.expires_natively,
            server_clock=self.server_clock,
            scan_exact=self.scan_exact,
        )

    def _claim(
        self,
        store: Store,
        key: str,
        fingerprint: str = "fp",
        *,
        token: str | None = None,
        lease: float = LEASE,
        ttl: float = TTL,
        scope: str | None = None,
    ) -> ClaimResult:
        return store.claim(
            self.scope if scope is None else scope,
            key,
            fingerprint,
            token or _token(),
            lease=lease,
            ttl=ttl,
        )

    # -- claim outcomes ---------------------------------------------------------------------

    def test_claim_of_a_new_key_is_acquired(self, store: Store) -> None:
        """A first claim acquires a fresh in_progress record with the caller's token."""
        key, token = _key(), _token()
        result = self._claim(store, key, token=token, lease=LEASE, ttl=TTL)
        assert result.status is ClaimStatus.ACQUIRED
        assert not result.takeover
        record = result.record
        assert (record.scope, record.key, record.fingerprint) == (self.scope, key, "fp")
        assert record.state is State.IN_PROGRESS
        assert record.token == token == result.token
        assert record.outcome is None
        assert record.lease_until == pytest.approx(result.now + LEASE, abs=1.0)
        assert record.expires_at == pytest.approx(result.now + TTL, abs=1.0)
        assert record.created_at == pytest.approx(result.now, abs=1.0)

    def test_claim_while_held_is_in_progress_without_token(self, store: Store) -> None:
        """A second claim during a live lease is refused and does not learn the holder's token."""
        key = _key()
        first = self._claim(store, key)
        second = self._claim(store, key)
        assert second.status is ClaimStatus.IN_PROGRESS
        assert second.record.token is None
        assert second.record.lease_until == pytest.approx(first.record.lease_until, abs=0.01)
        with pytest.raises(ValueError, match="no token"):
            _ = second.token

    def test_claim_after_complete_replays_the_outcome(self, store: Store) -> None:
        """A completed record answers every later claim with its outcome, byte for byte."""
        key = _key()
        first = self._claim(store, key)
        outcome = b"\x00\xff binary \xc3\x28 not utf-8 \n\r"
        store.complete(self.scope, key, first.token, outcome, ttl=TTL)
        again = self._claim(store, key)
        assert again.status is ClaimStatus.COMPLETED
        assert again.record.state is State.COMPLETED
        assert again.record.outcome == outcome
        assert again.record.token is None
        assert again.record.lease_until is None
        assert again.record.expires_at == pytest.approx(again.now + TTL, abs=2.0)

    def test_claim_with_other_fingerprint_is_mismatch(self, store: Store) -> None:
        """Reusing a key for another request is refused, in progress or completed."""
        key = _key()
        first = self._claim(store, key, "fp-a")
        during = self._claim(store, key, "fp-b")
        assert during.status is ClaimStatus.MISMATCH
        assert during.record.fingerprint == "fp-a"
        assert during.record.token is None
        store.complete(self.scope, key, first.token, b"done", ttl=TTL)
        after = self._claim(store, key, "fp-b")
        assert after.status is ClaimStatus.MISMATCH
        assert after.record.fingerprint == "fp-a"

    def test_mismatch_wins_over_expired_lease(self, store: Store) -> None:
        """An expired lease is not taken over by a different request."""
        key = _key()
        self._claim(store, key, "fp-a", lease=SHORT)
        sync_sleep(PAST_SHORT)
        other = self._claim(store, key, "fp-b")
        assert other.status is ClaimStatus.MISMATCH

    def test_large_outcome_round_trips(self, store: Store) -> None:
        """A 1 MiB outcome is kept and replayed intact."""
        key = _key()
        first = self._claim(store, key)
        outcome = bytes(range(256)) * 4096
        store.complete(self.scope, key, first.token, outcome, ttl=TTL)
        again = self._claim(store, key)
        assert again.record.outcome == outcome

    # -- complete, extend, release, fencing ----------------------------------------------

    def test_complete_with_wrong_token_is_refused(self, store: Store) -> None:
        """Only the current token may complete; a refused complete changes nothing."""
        key = _key()
        self._claim(store, key)
        with pytest.raises(LeaseLostError):
            store.complete(self.scope, key, _token(), b"forged", ttl=TTL)
        record = store.get(self.scope, key)
        assert record is not None
        assert record.state is State.IN_PROGRESS
        assert record.outcome is None

    def test_complete_twice_is_refused(self, store: Store) -> None:
        """A completed record cannot be completed again, even by its holder."""
        key = _key()
        first = self._claim(store, key)
        store.complete(self.scope, key, first.token, b"one", ttl=TTL)
        with pytest.raises(LeaseLostError):
            store.complete(self.scope, key, first.token, b"two", ttl=TTL)
        record = store.get(self.scope, key)
        assert record is not None
        assert record.outcome == b"one"

    def test_complete_of_absent_record_is_refused(self, store: Store) -> None:
        """Completing a key nobody claimed raises LeaseLostError and writes nothing."""
        key = _key()
        with pytest.raises(LeaseLostError):
            store.complete(self.scope, key, _token(), b"x", ttl=TTL)
        assert store.get(self.scope, key) is None

    def test_holder_may_complete_after_its_lease_ran_out(self, store: Store) -> None:
        """Fencing is by token: an expired lease nobody took over can still complete."""
        key = _key()
        first = self._claim(store, key, lease=SHORT)
        sync_sleep(PAST_SHORT)
        store.complete(self.scope, key, first.token, b"late", ttl=TTL)
        again = self._claim(store, key)
        assert again.status is ClaimStatus.COMPLETED
        assert again.record.outcome == b"late"

    def test_extend_moves_the_lease(self, store: Store) -> None:
        """extend() pushes lease_until to now + lease; a wrong token is refused."""
        key = _key()
        first = self._claim(store, key, lease=SHORT)
        until = store.extend(self.scope, key, first.token, lease=LEASE)
        assert until > first.record.lease_until + 10  # type: ignore[operator]
        sync_sleep(PAST_SHORT)
        still = self._claim(store, key)
        assert still.status is ClaimStatus.IN_PROGRESS
        with pytest.raises(LeaseLostError):
            store.extend(self.scope, key, _token(), lease=LEASE)

    def test_release_frees_the_key(self, store: Store) -> None:
        """release() by the holder deletes the claim so a retry executes; others cannot."""
        key = _key()
        first = self._claim(store, key)
        assert store.release(self.scope, key, _token()) is False
        assert store.release(self.scope, key, first.token) is True
        assert store.release(self.scope, key, first.token) is False
        again = self._claim(store, key, "another-fp")
        assert again.status is ClaimStatus.ACQUIRED

    def test_release_of_completed_record_is_refused(self, store: Store) -> None:
        """A completed record is not released by its old token."""
        key = _key()
        first = self._claim(store, key)
        store.complete(self.scope, key, first.token, b"kept", ttl=TTL)
        assert store.release(self.scope, key, first.token) is False
        assert (self._claim(store, key)).status is ClaimStatus.COMPLETED

    def test_expired_lease_is_taken_over_and_stale_holder_fenced(
        self, store: Store
    ) -> None:
        """After the lease runs out a new claim takes over; the stale holder cannot write."""
        key = _key()
        stale = self._claim(store, key, lease=SHORT)
        store.set_recovery_point(self.scope, key, stale.token, b"phase-1", lease=SHORT)
        sync_sleep(PAST_SHORT)
        fresh = self._claim(store, key)
        assert fresh.status is ClaimStatus.ACQUIRED
        assert fresh.takeover
        assert fresh.token != stale.token
        assert fresh.record.recovery_point == b"phase-1"
        assert fresh.record.created_at == pytest.approx(stale.record.created_at, abs=0.01)
        with pytest.raises(LeaseLostError):
            store.complete(self.scope, key, stale.token, b"stale", ttl=TTL)
        with pytest.raises(LeaseLostError):
            store.extend(self.scope, key, stale.token, lease=LEASE)
        with pytest.raises(LeaseLostError):
            store.set_recovery_point(self.scope, key, stale.token, b"x", lease=LEASE)
        assert store.release(self.scope, key, stale.token) is False
        store.complete(self.scope, key, fresh.token, b"fresh", ttl=TTL)
        final = self._claim(store, key)
        assert final.status is ClaimStatus.COMPLETED
        assert final.record.outcome == b"fresh"

    def test_recovery_point_is_kept_with_the_record(self, store: Store) -> None:
        """set_recovery_point stores the marker and extends the lease; get shows it."""
        key = _key()
        first = self._claim(store, key, lease=SHORT)
        until = store.set_recovery_point(
            self.scope, key, first.token, b"\x00charged", lease=LEASE
        )
        assert until > first.record.lease_until + 10  # type: ignore[operator]
        record = store.get(self.scope, key)
        assert record is not None
        assert record.recovery_point == b"\x00charged"
        assert record.token is None

    # -- retention -------------------------------------------------------------------------

    def test_completed_record_expires_after_ttl(self, store: Store) -> None:
        """After its TTL a completed record is absent: get is None, a claim executes anew."""
        key = _key()
        first = self._claim(store, key)
        store.complete(self.scope, key, first.token, b"old", ttl=SHORT)
        assert store.get(self.scope, key) is not None
        sync_sleep(PAST_SHORT)
        assert store.get(self.scope, key) is None
        again = self._claim(store, key, "new-fp")
        assert again.status is ClaimStatus.ACQUIRED
        assert not again.takeover

    def test_purge_expired_deletes_in_batches(
        self, store: Store, capabilities: Capabilities
    ) -> None:
        """purge_expired(limit) deletes at most limit expired records a call, and no live one."""
        expiring = [_key("exp") for _ in range(25)]
        for key in expiring:
            claimed = self._claim(store, key)
            store.complete(self.scope, key, claimed.token, b"x", ttl=SHORT)
        keep = _key("keep")
        kept = self._claim(store, keep)
        store.complete(self.scope, keep, kept.token, b"keep", ttl=TTL)
        held = _key("held")
        self._claim(store, held)
        sync_sleep(PAST_SHORT)
        total, batches = 0, 0
        while True:
            n = store.purge_expired(limit=10)
            assert 0 <= n <= 10
            total += n
            batches += 1
            if n == 0 or batches > 20:
                break
        if capabilities.expires_natively:
            assert total == 0
        else:
            assert total == 25
            assert batches >= 3
        for key in expiring:
            assert store.get(self.scope, key) is None
        kept_record = store.get(self.scope, keep)
        assert kept_record is not None
        assert kept_record.outcome == b"keep"
        held_record = store.get(self.scope, held)
        assert held_record is not None
        assert held_record.state is State.IN_PROGRESS

    # -- get, delete, scopes, odd keys ------------------------------------------------------

    def test_get_and_delete(self, store: Store) -> None:
        """get shows live records without tokens; delete removes them in any state."""
        key = _key()
        assert store.get(self.scope, key) is None
        first = self._claim(store, key)
        record = store.get(self.scope, key)
        assert record is not None
        assert record.state is State.IN_PROGRESS
        assert record.token is None
        assert store.delete(self.scope, key) is True
        assert store.delete(self.scope, key) is False
        with pytest.raises(LeaseLostError):
            store.complete(self.scope, key, first.token, b"x", ttl=TTL)

    def test_delete_of_expired_record_is_false(self, store: Store) -> None:
        """An expired record counts as absent for delete too."""
        key = _key()
        first = self._claim(store, key)
        store.complete(self.scope, key, first.token, b"x", ttl=SHORT)
        sync_sleep(PAST_SHORT)
        assert store.delete(self.scope, key) is False

    def test_scopes_are_isolated(self, store: Store) -> None:
        """The same key in two scopes is two operations; neither sees the other."""
        key = _key()
        a = self._claim(store, key, scope="tenant-a")
        b = self._claim(store, key, "other-fp", scope="tenant-b")
        assert a.status is b.status is ClaimStatus.ACQUIRED
        store.complete("tenant-a", key, a.token, b"a", ttl=TTL)
        record_b = store.get("tenant-b", key)
        assert record_b is not None
        assert record_b.state is State.IN_PROGRESS
        assert store.get("tenant-c", key) is None
        store.delete("tenant-a", key)
        store.delete("tenant-b", key)

    def test_separator_characters_do_not_collide(self, store: Store) -> None:
        """(scope 'a:b', key 'c') and (scope 'a', key 'b:c') are different records."""
        suffix = uuid.uuid4().hex
        one = self._claim(store, f"c{suffix}", "fp1", scope=f"a:b{suffix}")
        two = self._claim(store, f"b{suffix}:c{suffix}", "fp2", scope="a")
        assert one.status is two.status is ClaimStatus.ACQUIRED
        store.delete(f"a:b{suffix}", f"c{suffix}")
        store.delete("a", f"b{suffix}:c{suffix}")

    @pytest.mark.parametrize(
        "key",
        [" ", "x" * 255, "{hash}tag", "quote'\"back\\slash", "%s %d ?$1", "sp ace:colon;semi"],
    )
    def test_any_printable_key_works(self, store: Store, key: str) -> None:
        """Keys are data, never code: quoting, format and Redis hash-tag characters are inert."""
        key = key[:-8] + uuid.uuid4().hex[:8] if len(key) > 8 else key + uuid.uuid4().hex
        first = self._claim(store, key)
        store.complete(self.scope, key, first.token, key.encode(), ttl=TTL)
        again = self._claim(store, key)
        assert again.status is ClaimStatus.COMPLETED
        assert again.record.key == key
        assert again.record.outcome == key.encode()
        store.delete(self.scope, key)

    # -- concurrency -------------------------------------------------------------------------

    def test_concurrent_claimers_one_acquires(self, store: Store) -> None:
        """64 simultaneous claimers of one key: exactly one acquires, the rest see it held."""
        key = _key()

        def claim() -> ClaimResult:
            return self._claim(store, key)

        results = sync_gather([claim] * CONCURRENCY)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        statuses = [r.status for r in results if isinstance(r, ClaimResult)]
        assert statuses.count(ClaimStatus.ACQUIRED) == 1
        assert statuses.count(ClaimStatus.IN_PROGRESS) == CONCURRENCY - 1

    def test_concurrent_takeover_one_wins(self, store: Store) -> None:
        """64 simultaneous claimers of an expired lease: exactly one takes over."""
        key = _key()
        self._claim(store, key, lease=SHORT)
        sync_sleep(PAST_SHORT)

        def claim() -> ClaimResult:
            return self._claim(store, key)

        results = sync_gather([claim] * CONCURRENCY)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors[:3]
        acquired = [r for r in results if isinstance(r, ClaimResult) and r.takeover]
        assert len(acquired) == 1
        statuses = [r.status for r in results if isinstance(r, ClaimResult)]
        assert statuses.count(ClaimStatus.ACQUIRED) == 1

    # -- time ----------------------------------------------------------------------------------

    def test_time_comes_from_the_store_not_the_client(
        self, store: Store, capabilities: Capabilities
    ) -> None:
        """With the client's clock an hour off, leases and timestamps follow the store's clock."""
        if not capabilities.server_clock:
            pytest.skip("this store's clock is the client's (in-process store)")
        real_now = time.time()
        skewed: Any = mock.patch("time.time", return_value=real_now + 3600.0)
        key = _key()
        with skewed:
            first = self._claim(store, key, lease=LEASE)
            again = self._claim(store, key)
        assert first.now == pytest.approx(real_now, abs=30.0)
        assert first.record.created_at == pytest.approx(real_now, abs=30.0)
        assert again.status is ClaimStatus.IN_PROGRESS
        skewed_back: Any = mock.patch("time.time", return_value=real_now - 3600.0)
        with skewed_back:
            store.complete(self.scope, key, first.token, b"x", ttl=SHORT)
        sync_sleep(PAST_SHORT)
        assert store.get(self.scope, key) is None

"""Every store, sync and async, against the public conformance suite and its real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from idempo.stores.base import AsyncStore, Store
from idempo.testing import AsyncStoreConformance, StoreConformance
from tests.conftest import STORE_KINDS, async_store, sync_store

# The server expires keys itself, so purge_expired has nothing to do.
NATIVE_EXPIRY = {"redis"}
# The store's clock is this process's clock: the client-skew test does not apply.
CLIENT_CLOCK = {"memory"}


class TestSyncStore(StoreConformance):
    @pytest.fixture(params=STORE_KINDS)
    def store(self, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
        self.expires_natively = request.param in NATIVE_EXPIRY
        self.server_clock = request.param not in CLIENT_CLOCK
        with sync_store(request.param, tmp_path) as store:
            yield store


class TestAsyncStore(AsyncStoreConformance):
    @pytest.fixture(params=STORE_KINDS)
    async def store(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[AsyncStore]:
        self.expires_natively = request.param in NATIVE_EXPIRY
        self.server_clock = request.param not in CLIENT_CLOCK
        async with async_store(request.param, tmp_path) as store:
            yield store

"""Every store, sync and async, against the public conformance suite and its real server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from idempo.stores.base import AsyncStore, Store
from idempo.testing import AsyncStoreConformance, Capabilities, StoreConformance
from tests.conftest import STORE_KINDS, async_store, sync_store

# What each kind of store cannot do; the suite reads it through its capabilities fixture.
CAPABILITIES = {
    "memory": Capabilities(server_clock=False),  # its clock is this process's clock
    "sqlite": Capabilities(),
    # purge_expired has nothing to do; SCAN may repeat a key and lists in its own order.
    "redis": Capabilities(expires_natively=True, scan_exact=False),
    "postgres": Capabilities(),
    "mysql": Capabilities(),
}


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """The kind of store under test, one of conftest.STORE_KINDS."""
    return str(request.param)


class TestSyncStore(StoreConformance):
    @pytest.fixture
    def capabilities(self, kind: str) -> Capabilities:
        return CAPABILITIES[kind]

    @pytest.fixture
    def store(self, kind: str, tmp_path: Path) -> Iterator[Store]:
        with sync_store(kind, tmp_path) as store:
            yield store


class TestAsyncStore(AsyncStoreConformance):
    @pytest.fixture
    def capabilities(self, kind: str) -> Capabilities:
        return CAPABILITIES[kind]

    @pytest.fixture
    async def store(self, kind: str, tmp_path: Path) -> AsyncIterator[AsyncStore]:
        async with async_store(kind, tmp_path) as store:
            yield store

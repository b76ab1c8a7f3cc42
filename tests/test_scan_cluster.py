"""scan and stats on Redis Cluster, through the public suite's operations tier.

Needs a cluster: IDEMPO_REDIS_CLUSTER_URL names one of its nodes (for example
redis://127.0.0.1:7311); without it these tests skip, and IDEMPO_REQUIRE_SERVICES=1 does not
change that, since the shared services have no cluster."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from idempo.stores.redis import AsyncRedisStore, RedisStore
from idempo.testing import Capabilities
from idempo.testing._async.operations import AsyncOperationsConformance
from idempo.testing._sync.operations import OperationsConformance

CLUSTER_URL = os.environ.get("IDEMPO_REDIS_CLUSTER_URL", "")

pytestmark = [
    pytest.mark.redis,
    pytest.mark.skipif(not CLUSTER_URL, reason="IDEMPO_REDIS_CLUSTER_URL names no cluster"),
]

CAPABILITIES = Capabilities(expires_natively=True, scan_exact=False)


def _forget(prefix: str) -> None:
    client = RedisCluster.from_url(CLUSTER_URL)
    try:
        for key in list(client.scan_iter(match=prefix + "*", count=1000)):
            client.delete(key)
    finally:
        client.close()


class TestClusterScan(OperationsConformance):
    @pytest.fixture
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    @pytest.fixture
    def store(self) -> Iterator[RedisStore]:
        prefix = f"idempo-test-{uuid.uuid4().hex[:12]}:"
        store = RedisStore(RedisCluster.from_url(CLUSTER_URL), prefix=prefix)
        try:
            yield store
        finally:
            store.client.close()
            _forget(prefix)


class TestAsyncClusterScan(AsyncOperationsConformance):
    @pytest.fixture
    def capabilities(self) -> Capabilities:
        return CAPABILITIES

    @pytest.fixture
    async def store(self) -> AsyncIterator[AsyncRedisStore]:
        prefix = f"idempo-test-{uuid.uuid4().hex[:12]}:"
        store = AsyncRedisStore(AsyncRedisCluster.from_url(CLUSTER_URL), prefix=prefix)
        try:
            yield store
        finally:
            await store.client.aclose()
            _forget(prefix)


def test_a_cursor_from_another_topology_is_refused() -> None:
    """A cluster cursor naming a primary the cluster no longer has is a ValueError."""
    store = RedisStore(RedisCluster.from_url(CLUSTER_URL), prefix="idempo-test-none:")
    try:
        with pytest.raises(ValueError, match="cluster changed"):
            store.scan(cursor="99-0")
        with pytest.raises(ValueError, match="cursor"):
            store.scan(cursor="12")
    finally:
        store.client.close()

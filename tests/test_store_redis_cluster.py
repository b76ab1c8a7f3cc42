"""The Redis store on a real Redis Cluster of the tests' own (six redis-server processes: three
primaries, one replica each, started once for the module): the public conformance suite through
``redis+cluster://``, every shard and every node's script cache, a primary killed mid-run and
its replica's failover, a shard down before first use, and a plain ``redis://`` URL pointed at
a cluster node.

The tests run in this file's order on one cluster: the failover test restarts what it kills,
and the shard-down test, last, leaves a shard down.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.crc import key_slot

from idempo import open_async_store, open_store
from idempo.asgi import IdempotencyMiddleware
from idempo.core.records import ClaimStatus
from idempo.errors import StoreError, StoreUnavailableError
from idempo.stores.redis import AsyncRedisStore, RedisStore
from idempo.testing import (
    AsyncServerStoreConformance,
    AsyncStoreConformance,
    Capabilities,
    ServerStoreConformance,
    StoreConformance,
)
from tests.redis_servers import Cluster, Server, redis_cluster, retries, wait_until

pytestmark = pytest.mark.redis

LEASE, TTL = 30.0, 600.0
TIMEOUT = 1.0  # the stores' timeout=: each failing operation must end well within a few
FAILOVER_BOUND = 30.0  # node timeout 2 s, then the replica's election


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the whole module."""
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture
def prefix() -> str:
    return f"idempo-test-{uuid.uuid4().hex[:12]}:"


def _raw(cluster: Cluster) -> RedisCluster:
    """A cluster client to look behind the store's back."""
    return RedisCluster.from_url(cluster.seed.url.removesuffix("/0"), socket_timeout=2)


def _slot_ranges(cluster: Cluster) -> list[tuple[int, int, str]]:
    """(first slot, last slot, the primary's address) of each range, as the seed sees it."""
    with cluster.seed.client() as client:
        return [
            (int(start), int(end), f"127.0.0.1:{int(primary[1])}")
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS")
        ]


def _shard_of(ranges: list[tuple[int, int, str]], store: RedisStore, key: str) -> str:
    """The address of the primary that serves ``key``'s record."""
    slot = key_slot(store.redis_key("s", key).encode())
    return next(address for start, end, address in ranges if start <= slot <= end)


def _keys_by_shard(cluster: Cluster, store: RedisStore, count: int) -> dict[str, list[str]]:
    """``count`` fresh keys per primary (its address -> keys whose records it serves)."""
    ranges = _slot_ranges(cluster)
    shards: dict[str, list[str]] = {address: [] for _, _, address in ranges}
    while any(len(keys) < count for keys in shards.values()):
        key = f"k-{uuid.uuid4().hex}"
        keys = shards[_shard_of(ranges, store, key)]
        if len(keys) < count:
            keys.append(key)
    return shards


class _Pair:
    """A sync and an async store on the cluster, and the one event loop the async one lives
    in (its connections belong to that loop)."""

    def __init__(self, cluster: Cluster, prefix: str) -> None:
        self.sync = RedisStore.from_url(cluster.url(), prefix=prefix, timeout=TIMEOUT)
        self.aio = AsyncRedisStore.from_url(cluster.url(), prefix=prefix, timeout=TIMEOUT)
        self.loop = asyncio.new_event_loop()

    def run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(awaitable)

    def close(self) -> None:
        try:
            self.sync.close()
            self.run(self.aio.close())
        finally:
            self.loop.close()


@contextlib.contextmanager
def _pair(cluster: Cluster, prefix: str) -> Iterator[_Pair]:
    pair = _Pair(cluster, prefix)
    try:
        yield pair
    finally:
        pair.close()


# -- the public suite through redis+cluster:// ---------------------------------------------


class _ClusterStores:
    """Stores of the conformance suite, on the module's cluster, one prefix per test."""

    expires_natively = True

    @pytest.fixture
    def store(self, cluster: Cluster, prefix: str) -> Iterator[RedisStore]:
        s = open_store(cluster.url(), prefix=prefix, timeout=TIMEOUT)
        assert isinstance(s, RedisStore)
        yield s
        s.close()


class _AsyncClusterStores:
    expires_natively = True

    @pytest.fixture
    async def store(self, cluster: Cluster, prefix: str) -> AsyncIterator[AsyncRedisStore]:
        s = open_async_store(cluster.url(), prefix=prefix, timeout=TIMEOUT)
        assert isinstance(s, AsyncRedisStore)
        yield s
        await s.close()


class TestClusterStore(_ClusterStores, StoreConformance):
    @pytest.fixture
    def capabilities(self) -> Capabilities:
        return Capabilities(expires_natively=True, scan_exact=False)  # Redis SCAN: no order


class TestAsyncClusterStore(_AsyncClusterStores, AsyncStoreConformance):
    @pytest.fixture
    def capabilities(self) -> Capabilities:
        return Capabilities(expires_natively=True, scan_exact=False)  # Redis SCAN: no order


class _ClusterHooks:
    """The server-store tier's view behind the store's back, through a cluster client; the
    location is the test's prefix."""

    has_schema = False
    expires_natively = True
    newer_format_match = "schema v2"
    unavailable_match = "Redis is unavailable"

    @pytest.fixture
    def location(self, cluster: Cluster, prefix: str) -> Iterator[str]:
        self.raw = _raw(cluster)
        yield prefix
        self.raw.close()

    def _redis_key(self, location: str, scope: str, key: str) -> str:
        return f"{location}{len(scope)}:{scope}:{key}"

    def write_newer_format(self, location: str, scope: str, key: str) -> None:
        self.raw.hset(self._redis_key(location, scope, key), "v", "2")

    def stored_lease(self, location: str, scope: str, key: str) -> tuple[Any, Any]:
        token, lease_until = self.raw.hmget(
            self._redis_key(location, scope, key), "token", "lease_until"
        )
        return (
            None if token is None else token.decode(),
            None if lease_until is None else lease_until.decode(),
        )

    def count_records(self, location: str) -> int:
        # scan_iter visits every primary
        return sum(1 for _ in self.raw.scan_iter(match=location + "*", count=1000))

    def schema_objects(self, location: str) -> None:
        return None


DOWN_CLUSTER = "redis+cluster://127.0.0.1:1"  # nothing listens on port 1


class TestClusterServerStore(_ClusterHooks, _ClusterStores, ServerStoreConformance):
    @pytest.fixture
    def down_store(self) -> Iterator[RedisStore]:
        s = RedisStore.from_url(DOWN_CLUSTER, timeout=TIMEOUT)
        yield s
        s.close()


class TestAsyncClusterServerStore(_ClusterHooks, _AsyncClusterStores, AsyncServerStoreConformance):
    @pytest.fixture
    async def down_store(self) -> AsyncIterator[AsyncRedisStore]:
        s = AsyncRedisStore.from_url(DOWN_CLUSTER, timeout=TIMEOUT)
        yield s
        await s.close()


# -- every shard, every node's scripts -------------------------------------------------------


def test_every_shard_serves_both_kinds(cluster: Cluster, prefix: str) -> None:
    """Records land on all three primaries, and the sync and the async store read each
    other's."""
    with _pair(cluster, prefix) as both:
        shards = _keys_by_shard(cluster, both.sync, 5)
        assert len(shards) == 3
        keys = [key for shard in shards.values() for key in shard]
        for key in keys:
            claimed = both.sync.claim("s", key, "fp", "t", lease=LEASE, ttl=TTL)
            assert claimed.status is ClaimStatus.ACQUIRED
            both.sync.complete("s", key, "t", key.encode(), ttl=TTL)
        for address, shard in shards.items():
            with cluster.node(address).client() as node:
                assert all(node.exists(both.sync.redis_key("s", key)) for key in shard)

        async def async_side() -> None:
            for key in keys:
                record = await both.aio.get("s", key)
                assert record is not None
                assert record.outcome == key.encode()
                claimed = await both.aio.claim("s", key + "-a", "fp", "t", lease=LEASE, ttl=TTL)
                await both.aio.complete("s", key + "-a", "t", b"async", ttl=TTL)
                assert claimed.status is ClaimStatus.ACQUIRED

        both.run(async_side())
        for key in keys:
            record = both.sync.get("s", key + "-a")
            assert record is not None
            assert record.outcome == b"async"


def test_lost_scripts_are_reloaded_on_each_node(cluster: Cluster, prefix: str) -> None:
    """With every node's script cache flushed, each operation still succeeds, and leaves its
    script cached on the primary of its key: the reload goes where the key lives."""
    with _pair(cluster, prefix) as both:
        shards = _keys_by_shard(cluster, both.sync, 1)
        for node in cluster.nodes:
            if node.alive:
                with node.client() as client:
                    client.script_flush()
        claim_sha, get_sha = both.sync._claim.sha, both.sync._get.sha
        for address, (key,) in shards.items():
            claimed = both.sync.claim("s", key, "fp", "t", lease=LEASE, ttl=TTL)
            assert claimed.status is ClaimStatus.ACQUIRED
            with cluster.node(address).client() as primary:
                assert primary.script_exists(claim_sha) == [True]
                assert primary.script_exists(get_sha) == [False]

        async def async_side() -> None:
            for (key,) in shards.values():
                assert await both.aio.get("s", key) is not None

        both.run(async_side())
        for address in shards:
            with cluster.node(address).client() as primary:
                assert primary.script_exists(get_sha) == [True]


def test_a_plain_url_at_a_cluster_node_says_so(cluster: Cluster, prefix: str) -> None:
    """redis:// pointed at a cluster node serves the keys of that node and refuses the others
    with a StoreError that names MOVED and the URL to use."""
    plain = open_store(cluster.seed.url, prefix=prefix, timeout=TIMEOUT)
    probe = RedisStore.from_url(cluster.url(), prefix=prefix, timeout=TIMEOUT)
    try:
        shards = _keys_by_shard(cluster, probe, 1)
        for address, (key,) in shards.items():
            if address == cluster.seed.name:
                assert plain.get("s", key) is None
            else:
                with pytest.raises(
                    StoreError,
                    match=rf"MOVED \d+ {address}: this is a cluster node: use "
                    r"redis\+cluster://",
                ):
                    plain.get("s", key)
    finally:
        plain.close()
        probe.close()


def test_cluster_operations_are_bounded_and_never_resent(cluster: Cluster) -> None:
    """A cluster store's clients bound each step by the timeout (default 5 s) on every node,
    and resend nothing (they still follow redirections, which ran nothing)."""
    with _pair(cluster, "p:") as default:
        default.sync.get("s", "k")
        default.run(default.aio.get("s", "k"))
        sync_client, async_client = default.sync.client, default.aio.client
        assert isinstance(sync_client, RedisCluster)
        assert retries(sync_client.retry) == 0
        assert isinstance(async_client, AsyncRedisCluster)
        assert retries(async_client.retry) == 0
        for client in (sync_client, async_client):  # what redis-py 5 counts instead
            assert getattr(client, "cluster_error_retry_attempts", 0) == 0
    store = RedisStore.from_url(cluster.url())
    astore = AsyncRedisStore.from_url(cluster.url())
    loop = asyncio.new_event_loop()
    try:
        store.get("s", "k")
        loop.run_until_complete(astore.get("s", "k"))
        for node in store.client.get_nodes():  # type: ignore[union-attr]
            kwargs = node.redis_connection.connection_pool.connection_kwargs
            assert kwargs["socket_timeout"] == 5.0
            assert kwargs["socket_connect_timeout"] == 5.0
            assert node.redis_connection.connection_pool.timeout == 5.0
        for anode in astore.client.get_nodes():  # type: ignore[union-attr]
            assert anode.connection_kwargs["socket_timeout"] == 5.0
            assert anode.connection_kwargs["socket_connect_timeout"] == 5.0
    finally:
        store.close()
        loop.run_until_complete(astore.close())
        loop.close()
    with pytest.raises(ValueError, match="retry="):
        RedisStore.from_url(cluster.url(), retry=None)


def test_a_cursor_from_another_topology_is_refused(cluster: Cluster, prefix: str) -> None:
    """A cluster scan cursor naming a primary the cluster no longer has (or no cluster cursor
    at all) is the caller's ValueError, never an outage. A store over a RedisCluster client
    the caller built takes the cluster path too."""
    store = RedisStore(RedisCluster.from_url(cluster.url("redis")), prefix=prefix)
    try:
        with pytest.raises(ValueError, match="cluster changed"):
            store.scan(cursor="99-0")
        with pytest.raises(ValueError, match="cursor"):
            store.scan(cursor="12")
        assert not store.scan(limit=5).records  # an empty prefix: nothing, and no error
    finally:
        store.client.close()


def test_cluster_url_options_are_checked() -> None:
    """A cluster has one database (0); WAIT is for a plain client; nothing connects at open."""
    with pytest.raises(ValueError, match="one database"):
        open_store("redis+cluster://127.0.0.1:7000/3")
    with pytest.raises(ValueError, match="wait_replicas"):
        open_store("redis+cluster://127.0.0.1:7000", wait_replicas=1)
    with pytest.raises(ValueError, match="socket_timeout"):
        open_store("redis+cluster://127.0.0.1:7000?socket_timeout=soon")
    for url in ("redis+cluster://127.0.0.1:1", "rediss+cluster://127.0.0.1:1/0"):
        store = open_store(url, timeout=TIMEOUT)  # no server: opening it sends nothing
        assert isinstance(store, RedisStore)
        store.close()


# -- a primary killed mid-run ------------------------------------------------------------------


class _Workload:
    """Claims and completes fresh keys in a thread until stopped, keeping what was
    acknowledged (key -> outcome, when) and every error (its type, how long the call took).

    At ``hold()`` it parks between two operations until ``carry_on()``, so that the test can
    kill a primary at a moment when every acknowledged write has reached the replica."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        self.acked: dict[str, tuple[bytes, float]] = {}
        self.errors: list[tuple[BaseException, float, float]] = []
        self.stop = threading.Event()
        self._hold = threading.Event()
        self.parked = threading.Event()
        self._go = threading.Event()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            key = f"w-{n}-{uuid.uuid4().hex}"
            if self._hold.is_set():
                self.parked.set()
                self._go.wait(FAILOVER_BOUND)
                self._hold.clear()
            begun = time.monotonic()
            try:
                claimed = self.store.claim("s", key, "fp", "t", lease=LEASE, ttl=TTL)
                if claimed.status is ClaimStatus.ACQUIRED:
                    self.store.complete("s", key, "t", key.encode(), ttl=TTL)
                    self.acked[key] = (key.encode(), time.monotonic())
            except BaseException as exc:  # every kind is recorded: the test checks them
                self.errors.append((exc, begun, time.monotonic() - begun))
            if n >= 30:
                self.started.set()

    def hold(self) -> None:
        self._hold.set()
        assert self.parked.wait(FAILOVER_BOUND), "the workload did not park"

    def carry_on(self) -> None:
        self._go.set()


def test_killed_primary_fails_over_and_keeps_what_it_replicated(
    cluster: Cluster, prefix: str
) -> None:
    """A primary SIGKILLed while the stores are in use: operations on its slots give
    StoreUnavailableError, each within the timeout, never another error; the other shards
    keep serving; after its replica's failover both stores serve its slots again, and every
    record acknowledged before the kill is there.

    Redis replicates asynchronously: a write acknowledged in the instant before a kill can be
    missing from the promoted replica. The test therefore kills when the replica has confirmed
    every write (the replication offsets match): it proves that the store loses nothing the
    cluster kept, not that Redis keeps what it had not replicated (DESIGN section 4;
    wait_replicas narrows that window on a plain client)."""
    assert cluster.healthy()
    with _pair(cluster, prefix) as both:
        store = both.sync
        ranges = _slot_ranges(cluster)
        shards = _keys_by_shard(cluster, store, 10)
        victim_address = next(iter(shards))
        victim = cluster.node(victim_address)

        def on_victim(key: str) -> bool:
            return _shard_of(ranges, store, key) == victim_address

        # Records from before the run, on every shard, read through the async store as well.
        before = [key for keys in shards.values() for key in keys]
        for key in before:
            store.claim("s", key, "fp", "t", lease=LEASE, ttl=TTL)
            store.complete("s", key, "t", key.encode(), ttl=TTL)
        probe = shards[victim_address][0]
        assert both.run(both.aio.get("s", probe)) is not None

        work = _Workload(store)
        work.thread.start()
        assert work.started.wait(FAILOVER_BOUND)
        work.hold()
        wait_until("the victim's replica has every write", lambda: cluster.replicated(victim), 10)
        cluster.kill(victim)
        killed_at = time.monotonic()
        acked_before_kill = dict(work.acked)
        work.carry_on()

        # Until the failover: StoreUnavailableError on the victim's slots, from both stores.
        def serves_again() -> bool:
            records = []
            for call in (
                lambda: store.get("s", probe),
                lambda: both.run(both.aio.get("s", probe)),
            ):
                begun = time.monotonic()
                try:
                    records.append(call())
                except StoreUnavailableError:
                    assert time.monotonic() - begun < TIMEOUT * 3 + 1
                    return False
            assert all(record is not None for record in records)
            return True

        wait_until("the victim's slots are served again", serves_again, FAILOVER_BOUND)
        recovered_at = time.monotonic()
        assert recovered_at - killed_at > 1.0  # there was an outage to see
        work.stop.set()
        work.thread.join(FAILOVER_BOUND)
        assert not work.thread.is_alive()

        # Every error of the run was StoreUnavailableError, each call within the bound.
        assert work.errors, "the workload saw no outage"
        assert all(isinstance(exc, StoreUnavailableError) for exc, _, _ in work.errors), [
            repr(exc) for exc, _, _ in work.errors if not isinstance(exc, StoreUnavailableError)
        ][:3]
        assert max(took for _, _, took in work.errors) < TIMEOUT * 3 + 1
        # The other shards served throughout the outage.
        during = [
            key
            for key, (_, at) in work.acked.items()
            if killed_at < at < recovered_at and not on_victim(key)
        ]
        assert during, "no other shard served during the outage"

        # Nothing acknowledged before the kill is lost, on any shard; nor anything since.
        assert any(map(on_victim, acked_before_kill))  # the victim held some of them
        expected = {key: key.encode() for key in before}
        expected.update({key: outcome for key, (outcome, _) in work.acked.items()})
        for key, outcome in expected.items():
            record = store.get("s", key)
            assert record is not None, key
            assert record.outcome == outcome
        for key in sorted(expected)[:200]:  # and a retry replays it
            replay = store.claim("s", key, "fp", "t2", lease=LEASE, ttl=TTL)
            assert replay.status is ClaimStatus.COMPLETED

        async def async_reads() -> None:
            for key in sorted(expected)[:100]:
                record = await both.aio.get("s", key)
                assert record is not None
                assert record.outcome == expected[key]

        both.run(async_reads())
    # The killed node comes back as a replica of the promoted one.
    victim.start()
    wait_until("the cluster is whole again", cluster.healthy, FAILOVER_BOUND)


# -- a shard down before first use -------------------------------------------------------------


def test_shard_down_before_first_use(cluster: Cluster, prefix: str) -> None:
    """With a shard's primary and replica both down before the stores' first operation (the
    shard of the cluster's first primary), its keys give StoreUnavailableError (never a raw
    cluster error, which the middleware would answer with 500) and the other shards serve;
    once the servers declare the cluster down (CLUSTERDOWN, as they do when they require full
    coverage), every key gives StoreUnavailableError. Last in the module: the shard stays
    down."""
    with _pair(cluster, prefix) as probe:
        shards = _keys_by_shard(cluster, probe.sync, 3)
    topology = cluster.shards()
    # The shard of slot 0: its primary is the one redis-py's clients ask for COMMAND while
    # they map the cluster, so the stores must map it without that node.
    down = _slot_ranges(cluster)[0][2]
    dead = [cluster.node(address) for address in (down, *topology[down])]
    live = [node for node in cluster.nodes if node.alive and node not in dead]
    # Servers that require full coverage: once they see the shard failed, they refuse all.
    _set_on(live, "cluster-require-full-coverage", "yes")
    try:
        for node in dead:
            cluster.kill(node)
        # New stores at once: the servers still answer for the other shards.
        with _pair(cluster, prefix) as both:
            _check_partial_outage(both, shards, down)

        wait_until("the cluster says it is down", lambda: _states(live) == {"fail"}, 30)
        with _pair(cluster, prefix) as both:
            for keys in shards.values():
                for key in keys:
                    _unavailable(lambda key=key: both.sync.get("s", key))
                    _unavailable(lambda key=key: both.run(both.aio.get("s", key)))
    finally:
        _set_on(live, "cluster-require-full-coverage", "no")
    # Servers that serve what they cover: the other shards serve again, the down one not.
    wait_until("the live shards serve again", lambda: _states(live) == {"ok"}, 30)
    with _pair(cluster, prefix) as both:
        _check_partial_outage(both, shards, down)
        # Through the HTTP middleware: 503 with Retry-After for the keys of the down shard,
        # the others served, never a 500.
        statuses = both.run(_post_many(both.aio, 30))
    assert set(statuses) <= {201, 503}, statuses
    assert 201 in statuses
    assert 503 in statuses


def _states(nodes: list[Server]) -> set[str]:
    """The cluster_state each of ``nodes`` reports."""
    states = set()
    for node in nodes:
        with node.client(decode_responses=True) as client:
            states.add(client.cluster("info")["cluster_state"])
    return states


def _set_on(nodes: list[Server], name: str, value: str) -> None:
    for node in nodes:
        with node.client() as client:
            client.config_set(name, value)


def _unavailable(call: Any) -> None:
    """``call()`` raises StoreUnavailableError, within the bound."""
    begun = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="Redis is unavailable"):
        call()
    assert time.monotonic() - begun < TIMEOUT * 3 + 1


def _check_partial_outage(both: _Pair, shards: dict[str, list[str]], down: str) -> None:
    """The down shard's keys are unavailable to both stores; the other shards serve both."""
    served = (ClaimStatus.ACQUIRED, ClaimStatus.IN_PROGRESS)
    for address, keys in shards.items():
        for key in keys:

            def claim(key: str = key) -> Any:
                return both.sync.claim("s", key, "fp", uuid.uuid4().hex, lease=LEASE, ttl=TTL)

            def aclaim(key: str = key) -> Any:
                token = uuid.uuid4().hex
                return both.run(both.aio.claim("s", key, "fp", token, lease=LEASE, ttl=TTL))

            if address == down:
                _unavailable(claim)
                _unavailable(aclaim)
            else:
                assert claim().status in served
                assert aclaim().status is ClaimStatus.IN_PROGRESS


async def _post_many(store: AsyncRedisStore, count: int) -> list[int]:
    """The statuses of ``count`` POSTs, each with its own key, through the ASGI middleware."""

    async def charge(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"charged"})

    app = IdempotencyMiddleware(charge, store=store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        statuses = []
        for n in range(count):
            headers = {"Idempotency-Key": f'"key-{n}-{uuid.uuid4().hex}"'}
            response = await client.post("/charges", content=b"{}", headers=headers)
            if response.status_code == 503:
                assert "retry-after" in response.headers
            statuses.append(response.status_code)
    return statuses

"""The gateway scaled out: concurrent duplicates, several workers and several gateway processes
on one shared store, SIGTERM with requests in flight, and SIGKILL of one gateway mid-load."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import cleanup, store_url
from tests.gateway_rig import Gateway, Upstream, first_line, gateway, upstream

pytestmark = pytest.mark.timeout(120)

SHARED = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="module")
def node() -> Iterator[Upstream]:
    with upstream() as up:
        yield up


@pytest.fixture
def shared_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, dict[str, Any]]]:
    url, options = store_url(request.param, tmp_path)
    try:
        yield url, options
    finally:
        cleanup(request.param, options)


async def burst(urls: list[str], key: str, n: int) -> list[httpx.Response]:
    """``n`` identical requests at once, spread over ``urls``."""
    limits = httpx.Limits(max_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        return await asyncio.gather(
            *(
                client.post(
                    urls[i % len(urls)] + "/orders",
                    headers={"Idempotency-Key": key},
                    json={"amount": 1},
                )
                for i in range(n)
            )
        )


def assert_one_execution(responses: list[httpx.Response], node: Upstream, key: str) -> None:
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {201, 409}, statuses
    fresh = [
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    assert len(fresh) == 1
    replays = [r for r in responses if r.headers.get("idempotent-replayed") == "true"]
    assert all(r.content == fresh[0].content for r in replays)
    assert node.executions(key) == 1


def test_200_concurrent_identical_requests_execute_once(node: Upstream, tmp_path: Path) -> None:
    """200 identical requests at once through one gateway run the upstream exactly once."""
    key = uuid.uuid4().hex
    with gateway(node.url, "memory://", tmp_path=tmp_path) as g:
        responses = asyncio.run(burst([g.url], key, 200))
    assert_one_execution(responses, node, key)


@pytest.mark.parametrize("shared_store", SHARED, indirect=True)
def test_workers_share_the_store(
    node: Upstream, tmp_path: Path, shared_store: tuple[str, dict[str, Any]]
) -> None:
    """200 identical requests through a gateway with 2 workers run the upstream once."""
    url, options = shared_store
    key = uuid.uuid4().hex
    with gateway(node.url, url, tmp_path=tmp_path, store_options=options, workers=2) as g:
        responses = asyncio.run(burst([g.url], key, 200))
    assert_one_execution(responses, node, key)


@pytest.mark.parametrize("shared_store", SHARED, indirect=True)
def test_two_gateway_processes_on_one_store(
    node: Upstream, tmp_path: Path, shared_store: tuple[str, dict[str, Any]]
) -> None:
    """Two gateways on one Redis or PostgreSQL store: one execution, replays from either."""
    url, options = shared_store
    key = uuid.uuid4().hex
    with (
        gateway(node.url, url, tmp_path=tmp_path, store_options=options) as a,
        gateway(node.url, url, tmp_path=tmp_path, store_options=options) as b,
    ):
        responses = asyncio.run(burst([a.url, b.url], key, 200))
        assert_one_execution(responses, node, key)
        later = httpx.post(b.url + "/orders", headers={"Idempotency-Key": key}, json={"amount": 1})
        assert later.headers["idempotent-replayed"] == "true"
        other = uuid.uuid4().hex
        httpx.post(a.url + "/orders", headers={"Idempotency-Key": other}, json={})
        via_b = httpx.post(b.url + "/orders", headers={"Idempotency-Key": other}, json={})
        assert via_b.headers["idempotent-replayed"] == "true"
    assert node.executions(other) == 1


def _refuses_connections(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_finishes_requests_in_flight(node: Upstream, tmp_path: Path, workers: int) -> None:
    """SIGTERM lets a request in flight finish (and be kept), then the gateway exits 0."""
    url = f"sqlite:///{tmp_path / 'idempo.db'}"
    key = uuid.uuid4().hex
    results: list[httpx.Response] = []
    with gateway(node.url, url, tmp_path=tmp_path, workers=workers) as g:
        thread = threading.Thread(
            target=lambda: results.append(
                httpx.post(
                    g.url + "/hold", headers={"Idempotency-Key": key}, content=b"x", timeout=60
                )
            )
        )
        thread.start()
        node.control(f"/_arrived?key={key}")
        g.proc.send_signal(signal.SIGTERM)
        if workers == 1:
            # The listener closes at once; the request in flight is still being served.
            deadline = time.monotonic() + 20
            while not _refuses_connections(g.url):
                assert time.monotonic() < deadline
        else:
            # The supervisor keeps its socket; the workers' exit is what shows the signal.
            assert g.proc.poll() is None
        node.control(f"/_release?key={key}")
        thread.join(30)
        assert g.proc.wait(30) == 0
    assert results[0].status_code == 201
    assert node.executions(key) == 1


@pytest.mark.parametrize("shared_store", SHARED, indirect=True)
def test_sigkill_mid_load_retries_through_another_gateway(
    node: Upstream, tmp_path: Path, shared_store: tuple[str, dict[str, Any]]
) -> None:
    """Clients whose gateway is SIGKILLed mid-load retry through another: every request gets
    its answer, and only those in flight at the kill may run twice (at-least-once after a
    crash, docs/guarantees.md)."""
    url, options = shared_store
    n = 120
    keys = [uuid.uuid4().hex for _ in range(n)]
    config = "lease = 2\n"
    with (
        gateway(node.url, url, tmp_path=tmp_path, store_options=options, config=config) as a,
        gateway(node.url, url, tmp_path=tmp_path, store_options=options, config=config) as b,
    ):
        answered: dict[str, httpx.Response] = {}
        in_flight_at_kill = 0
        started = asyncio.Event()

        async def one(client: httpx.AsyncClient, key: str) -> None:
            target: Gateway = a
            while True:
                try:
                    r = await client.post(
                        target.url + "/orders", headers={"Idempotency-Key": key}, json={"k": key}
                    )
                except httpx.TransportError:
                    target = b  # the gateway went away: retry the same key through the other
                    continue
                if r.status_code == 409 and "retry-after" in r.headers:
                    # The dead gateway's claim holds until its lease runs out: a client waits
                    # as told, which is the behaviour under test, not a synchronization.
                    await asyncio.sleep(min(float(r.headers["retry-after"]), 3))
                    continue
                answered[key] = r
                if len(answered) == n // 3:
                    started.set()
                return

        async def load() -> None:
            nonlocal in_flight_at_kill
            async with httpx.AsyncClient(
                timeout=30, limits=httpx.Limits(max_connections=16)
            ) as client:
                tasks = [asyncio.create_task(one(client, key)) for key in keys]
                await started.wait()
                in_flight_at_kill = 16  # at most one request per connection
                a.proc.send_signal(signal.SIGKILL)
                await asyncio.gather(*tasks)

        asyncio.run(load())
        a.proc.wait(10)
    assert sorted(answered) == sorted(keys)  # nothing lost
    assert all(r.status_code == 201 for r in answered.values())
    counts = node.stats()["counts"]
    twice = [k for k in keys if counts.get(k, 0) > 1]
    assert all(counts.get(k, 0) >= 1 for k in keys)
    assert all(counts.get(k, 0) <= 2 for k in keys)
    assert len(twice) <= in_flight_at_kill


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def _ready_worker(g: Gateway) -> int:
    # A worker imports the app and opens its store as it starts: slow on a loaded machine.
    return int(first_line(g.proc, "idempo gateway: worker ", timeout=60).split()[3])


def test_a_killed_worker_is_replaced(node: Upstream, tmp_path: Path) -> None:
    """A worker SIGKILLed under a supervisor is forked anew; the gateway keeps serving."""
    url = f"sqlite:///{tmp_path / 'idempo.db'}"
    with gateway(node.url, url, tmp_path=tmp_path, workers=2) as g:
        workers = {_ready_worker(g), _ready_worker(g)}
        assert workers == set(_children(g.proc.pid))
        victim = workers.pop()
        os.kill(victim, signal.SIGKILL)
        replacement = _ready_worker(g)
        assert replacement not in (victim, *workers)
        assert set(_children(g.proc.pid)) == {replacement, *workers}
        for _ in range(10):
            r = httpx.post(
                g.url + "/orders", headers={"Idempotency-Key": uuid.uuid4().hex}, json={}
            )
            assert r.status_code == 201
        assert g.stop() == 0

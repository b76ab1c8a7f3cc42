"""Bounded store operations (DESIGN section 4): a stalled server gives StoreUnavailableError
within the store's ``timeout``, never a request that hangs, and the store recovers with it.

The servers are the tests' own (tests/_servers.py), started on free ports and paused with
SIGSTOP: a stopped server keeps its sockets and its kernel still acknowledges TCP, so nothing
but a client-side deadline can end the wait. The shared services are never paused.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from werkzeug.test import Client

from idempo import open_async_store, open_store
from idempo.core.records import ClaimStatus
from idempo.errors import StoreUnavailableError
from idempo.stores._watchdog import WATCHDOG
from idempo.wsgi import IdempotencyMiddleware
from tests._servers import Server, mariadb_server, postgres_server

T = TypeVar("T")

TIMEOUT = 1.0
# What a deadline may overrun: the watchdog's tick, a thread switch, a busy 2-core machine.
SLACK = 1.5

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def postgres() -> Iterator[Server]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="module")
def mariadb() -> Iterator[Server]:
    if shutil.which("mariadbd") is None or shutil.which("mariadb-install-db") is None:
        pytest.skip("MariaDB server binaries are not installed")
    with mariadb_server() as server:
        yield server


@pytest.fixture(params=["postgres", "mysql"])
def server(request: pytest.FixtureRequest) -> Server:
    """Each networked SQL store's own server (Redis: tests/test_store_redis*.py)."""
    name = "postgres" if request.param == "postgres" else "mariadb"
    found: Server = request.getfixturevalue(name)
    return found


def _url(server: Server, **options: Any) -> str:
    """The server's URL with a fresh schema or table and ``options`` in its query."""
    isolate = "schema" if server.url.startswith("postgresql") else "table"
    query = {isolate: f"idempo_t_{secrets.token_hex(4)}", "timeout": TIMEOUT, **options}
    return server.url + "?" + "&".join(f"{k}={v}" for k, v in query.items())


def _claim(store: Any, key: str) -> Any:
    return store.claim("s", key, "fp", secrets.token_hex(8), lease=30, ttl=60)


# How long a store may take to serve again once its server runs: a pool may be waiting out
# its reconnection backoff.
RECOVERY = 15.0


def _recovered(operation: Callable[[], T]) -> T:
    """``operation``'s result once the store serves again; each attempt is itself bounded."""
    deadline = time.monotonic() + RECOVERY
    while True:
        try:
            return operation()
        except StoreUnavailableError:
            if time.monotonic() > deadline:
                raise


async def _arecovered(operation: Callable[[], Awaitable[T]]) -> T:
    """The async twin of _recovered."""
    deadline = time.monotonic() + RECOVERY
    while True:
        try:
            return await operation()
        except StoreUnavailableError:
            if time.monotonic() > deadline:
                raise


class _Elapsed:
    seconds = 0.0


@contextlib.contextmanager
def elapsed() -> Iterator[_Elapsed]:
    """Measures the block it wraps, whether it raises or not."""
    took = _Elapsed()
    started = time.monotonic()
    try:
        yield took
    finally:
        took.seconds = time.monotonic() - started


def test_sync_store_on_a_stalled_server_fails_within_the_timeout(server: Server) -> None:
    """Sync: each operation on a paused server gives StoreUnavailableError within timeout."""
    store = open_store(_url(server))
    try:
        assert _claim(store, "before").status is ClaimStatus.ACQUIRED  # warm: a pooled conn
        with server.stalled():
            for key in ("first", "second"):  # the second needs a new connection
                with elapsed() as took, pytest.raises(StoreUnavailableError):
                    _claim(store, key)
                assert took.seconds < TIMEOUT + SLACK, (key, took.seconds)
        # Recovered, and no reply of the stalled statements is read by the next ones.
        assert _recovered(lambda: _claim(store, "after")).status is ClaimStatus.ACQUIRED
        assert store.get("s", "before") is not None
        assert store.get("s", "nothing") is None
    finally:
        store.close()


async def test_async_store_on_a_stalled_server_fails_within_the_timeout(server: Server) -> None:
    """Async: each operation on a paused server gives StoreUnavailableError within timeout."""
    store = open_async_store(_url(server))
    try:
        first = await store.claim("s", "before", "fp", "t1", lease=30, ttl=60)
        assert first.status is ClaimStatus.ACQUIRED
        with server.stalled():
            for key in ("first", "second"):
                with elapsed() as took, pytest.raises(StoreUnavailableError):
                    await store.claim("s", key, "fp", "t2", lease=30, ttl=60)
                assert took.seconds < TIMEOUT + SLACK, (key, took.seconds)
        after = await _arecovered(lambda: store.claim("s", "after", "fp", "t3", lease=30, ttl=60))
        assert after.status is ClaimStatus.ACQUIRED
        assert await store.get("s", "before") is not None
        assert await store.get("s", "nothing") is None
    finally:
        await store.close()


def test_a_store_first_used_while_the_server_is_stalled_fails_within_the_timeout(
    server: Server,
) -> None:
    """Opening connections is bounded too: a fresh store's first operation on a paused server
    fails within about the timeout, then works once the server runs again."""
    store = open_store(_url(server, auto_migrate="false"))
    warm = open_store(_url(server))  # a schema for the fresh store to find once it recovers
    try:
        warm.migrate()
        with server.stalled(), elapsed() as took, pytest.raises(StoreUnavailableError):
            store.get("s", "k")
        # PostgreSQL's connect_timeout counts whole seconds, and at least 2.
        assert took.seconds < max(TIMEOUT, 2) + SLACK, took.seconds
    finally:
        store.close()
        warm.close()


def test_the_timeout_defaults_to_5_seconds(server: Server) -> None:
    """Without timeout=, every store bounds its operations by 5 seconds (DESIGN section 4)."""
    store = open_store(server.url)
    try:
        assert store._timeout == 5.0  # type: ignore[attr-defined]
    finally:
        store.close()


def _served(response: Any) -> Any:
    if response.status_code == 503:
        raise StoreUnavailableError("503")
    return response


def test_wsgi_middleware_over_a_stalled_store_answers_503_within_the_bound(
    postgres: Server,
) -> None:
    """HTTP: over a paused PostgreSQL the middleware answers 503 + Retry-After within its
    store round trips' bounds, and the handler does not run; once resumed, it serves again."""
    ran: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        ran.append(environ["PATH_INFO"])
        start_response("201 Created", [("Content-Type", "text/plain")])
        return [b"charged"]

    middleware = IdempotencyMiddleware(app, store=_url(postgres))
    client = Client(middleware)
    try:
        assert client.post("/warm", headers={"Idempotency-Key": '"w"'}).status_code == 201
        with postgres.stalled(), elapsed() as took:
            response = client.post("/charge", headers={"Idempotency-Key": '"k"'})
        assert response.status_code == 503
        assert response.headers["Retry-After"]
        assert response.headers["Content-Type"] == "application/problem+json"
        # Two bounded round trips: the claim, then the engine's best-effort release of that
        # claim, whose reply may be all that was lost (it may have been written).
        assert took.seconds < 2 * TIMEOUT + SLACK, took.seconds
        assert ran == ["/warm"]
        # A new key: the paused server still holds the stalled claim in its socket buffer and
        # writes it once resumed, after the client gave up (a lost reply: issue 8 item 3).
        again = _recovered(
            lambda: _served(client.post("/charge", headers={"Idempotency-Key": '"k2"'}))
        )
        assert again.status_code == 201
        assert ran == ["/warm", "/charge"]
    finally:
        middleware.close()


def _silent_read(timeout: float, then_raise: BaseException | None = None) -> bool:
    """A guarded read on a socket whose peer never writes; whether the watch fired."""
    ours, peer = socket.socketpair()
    try:
        with WATCHDOG.guard(ours.fileno(), timeout, "test") as watch:
            assert ours.recv(1) == b""  # woken by the shutdown, not by a reply
            if then_raise is not None:
                raise then_raise
        return watch.fired
    finally:
        ours.close()
        peer.close()


def test_the_watchdog_shuts_down_a_silent_socket_at_its_deadline() -> None:
    """A read that no reply ends is woken at the deadline (end-of-file), and ``fired`` says so;
    an error raised meanwhile becomes StoreUnavailableError naming the operation."""
    with elapsed() as took:
        assert _silent_read(0.3)
    assert 0.25 < took.seconds < 0.3 + SLACK
    lost = OSError("the driver saw the connection end")
    with pytest.raises(StoreUnavailableError, match=r"test: no reply within timeout=0\.3s"):
        _silent_read(0.3, lost)


def test_the_watchdog_leaves_a_round_trip_that_ends_in_time_alone() -> None:
    """A round trip that ends before its deadline is not touched, even after the deadline has
    passed, and an error of its own passes through unchanged."""
    ours, peer = socket.socketpair()
    try:
        with pytest.raises(ValueError, match="not a store error"):
            _answered(ours, peer, ValueError("not a store error"))
        watch = _answered(ours, peer)
        threading.Event().wait(0.4)  # past the deadline: a disarmed watch must not fire late
        assert not watch.fired
        ours.setblocking(False)
        with pytest.raises(BlockingIOError):
            ours.recv(1)  # open, nothing to read; a shut-down socket would read b""
    finally:
        ours.close()
        peer.close()


def _answered(ours: socket.socket, peer: socket.socket, error: Exception | None = None) -> Any:
    """A round trip guarded for 0.2 s and answered at once; its watch."""
    with WATCHDOG.guard(ours.fileno(), 0.2, "test") as watch:
        peer.send(b"x")
        assert ours.recv(1) == b"x"
        if error is not None:
            raise error
    return watch


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "sqlite://:memory:",
        pytest.param("postgresql://postgres@127.0.0.1:1/none", marks=pytest.mark.postgres),
        pytest.param("mysql://root@127.0.0.1:1/none", marks=pytest.mark.mysql),
    ],
)
@pytest.mark.parametrize("timeout", [0, -1])
def test_a_timeout_that_bounds_nothing_is_refused(url: str, timeout: float) -> None:
    """timeout= must be a positive number of seconds (SQLite: >= 0, where 0 means no wait)."""
    if url.startswith("sqlite") and timeout == 0:
        open_store(url, timeout=0).close()
        return
    with pytest.raises(ValueError, match="timeout must be"):
        open_store(url, timeout=timeout)

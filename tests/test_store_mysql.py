"""The MariaDB store: the server-store tier of the public suite (sync and async), and what it
promises beyond it: one request per operation (counted by the client and by the server), safe
concurrent migrations, error translation, a pool that heals, keys compared byte for byte.

Every test works in its own table ``idempo_test_<uuid>`` (and its procedures) in the URL's
database, dropped afterwards. The server comes from IDEMPO_MYSQL_URL (default: the local one);
without it these tests skip, or fail under IDEMPO_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import pymysql  # type: ignore[import-untyped]
import pytest

from idempo.core.records import ClaimResult, ClaimStatus
from idempo.errors import LeaseLostError, StoreError, StoreUnavailableError
from idempo.stores.mysql import (
    SCHEMA_VERSION,
    AsyncMySQLStore,
    MySQLStore,
    open_async,
    open_sync,
)
from idempo.testing import AsyncServerStoreConformance, ServerStoreConformance
from tests.conftest import REQUIRE_SERVICES

MYSQL_URL = os.environ.get("IDEMPO_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
# Nothing listens on port 1: connecting is refused at once.
DOWN_URL = "mysql://root@127.0.0.1:1/test"
LEASE, TTL = 30.0, 60.0
SCOPE = "my"

_service_error: list[str | None] = []

pytestmark = pytest.mark.mysql


def _raw_connect(**kwargs: Any) -> Any:
    from idempo.stores.mysql import connect_kwargs

    options = {"autocommit": True, "init_command": "SET time_zone = '+00:00'", **kwargs}
    return pymysql.connect(**connect_kwargs(MYSQL_URL), **options)


def require_mysql() -> None:
    """Skip (or, under IDEMPO_REQUIRE_SERVICES=1, fail) when the MariaDB server is missing."""
    if not _service_error:
        try:
            _raw_connect(connect_timeout=2).close()
            _service_error.append(None)
        except Exception as exc:
            _service_error.append(f"mysql is not reachable ({exc})")
    reason = _service_error[0]
    if reason is not None:
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason}; IDEMPO_REQUIRE_SERVICES=1 makes this a failure")
        pytest.skip(reason)


def _token() -> str:
    return uuid.uuid4().hex


def drop_table(table: str) -> None:
    """Remove a store's table and procedures."""
    conn = _raw_connect()
    try:
        cur = conn.cursor()
        cur.execute(f"DROP TABLE IF EXISTS `{table}`")
        for suffix in ("claim", "hold", "purge"):
            cur.execute(f"DROP PROCEDURE IF EXISTS `{table}_{suffix}`")
    finally:
        conn.close()


@contextlib.contextmanager
def fresh_table() -> Iterator[str]:
    require_mysql()
    table = f"idempo_test_{uuid.uuid4().hex[:12]}"
    try:
        yield table
    finally:
        drop_table(table)


def _raw(table: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` with ``{t}`` standing for the store's table, behind the store's back."""
    conn = _raw_connect()
    try:
        cur = conn.cursor()
        cur.execute(query.format(t=f"`{table}`"), params or None)
        return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


@pytest.fixture
def table() -> Iterator[str]:
    with fresh_table() as name:
        yield name


@pytest.fixture
def store(table: str) -> Iterator[MySQLStore]:
    s = MySQLStore.from_url(MYSQL_URL, table=table)
    yield s
    s.close()


# The first tier of the suite runs on MariaDB from tests/test_store_conformance.py (kind "mysql").


# -- the server-store tier of the public suite --------------------------------------------


class _MySQLHooks:
    """What the server-store tier needs to reach a MariaDB store behind its back; the location
    is the test's table."""

    @pytest.fixture
    def location(self, table: str) -> str:
        return table

    def write_newer_format(self, location: str, scope: str, key: str) -> None:
        _raw(location, "UPDATE {t} SET format = 2 WHERE scope = %s AND `key` = %s", scope, key)

    def stored_lease(self, location: str, scope: str, key: str) -> tuple[Any, Any]:
        query = "SELECT token, lease_until FROM {t} WHERE scope = %s AND `key` = %s"
        rows = _raw(location, query, scope, key)
        assert len(rows) == 1
        return rows[0]

    def count_records(self, location: str) -> int:
        ((count,),) = _raw(location, "SELECT COUNT(*) FROM {t}")
        return int(count)

    def schema_objects(self, location: str) -> tuple[int, int]:
        return _objects(location)


class TestMySQLServerStore(_MySQLHooks, ServerStoreConformance):
    @pytest.fixture
    def store(self, location: str) -> Iterator[MySQLStore]:
        s = MySQLStore.from_url(MYSQL_URL, table=location)
        yield s
        s.close()

    @pytest.fixture
    def unmigrated_store(self, location: str) -> Iterator[MySQLStore]:
        s = MySQLStore.from_url(MYSQL_URL, table=location, auto_migrate=False)
        yield s
        s.close()

    @pytest.fixture
    def down_store(self) -> Iterator[MySQLStore]:
        s = MySQLStore.from_url(DOWN_URL, connect_timeout=1, pool_timeout=0.5)
        yield s
        s.close()


class TestAsyncMySQLServerStore(_MySQLHooks, AsyncServerStoreConformance):
    @pytest.fixture
    async def store(self, location: str) -> AsyncIterator[AsyncMySQLStore]:
        s = AsyncMySQLStore.from_url(MYSQL_URL, table=location)
        yield s
        await s.close()

    @pytest.fixture
    async def unmigrated_store(self, location: str) -> AsyncIterator[AsyncMySQLStore]:
        s = AsyncMySQLStore.from_url(MYSQL_URL, table=location, auto_migrate=False)
        yield s
        await s.close()

    @pytest.fixture
    async def down_store(self) -> AsyncIterator[AsyncMySQLStore]:
        s = AsyncMySQLStore.from_url(DOWN_URL, connect_timeout=1, pool_timeout=0.5)
        yield s
        await s.close()


# -- one statement, one round trip ------------------------------------------------------------
#
# Counted three ways on the store's only connection (max_size=1):
#
# * a PyMySQL cursor class counts the statements the store executes (cursor.execute calls);
# * a wrapper around the connection's _execute_command counts the requests put on the wire
#   (every COM_QUERY; reading a CALL's further result sets with nextset() sends nothing);
# * the server's own session counters: Questions counts statements sent by the client (not
#   those run inside procedures), Com_call_procedure the CALLs among them.


class _CountingCursor(pymysql.cursors.Cursor):  # type: ignore[misc]
    executed: list[str] = []  # noqa: RUF012 - shared on purpose: the test reads it

    def execute(self, query: Any, args: Any = None) -> Any:
        _CountingCursor.executed.append(query)
        return super().execute(query, args)


def _server_counters(conn: Any) -> dict[str, int]:
    cur = conn.cursor(pymysql.cursors.Cursor)
    cur.execute("SHOW SESSION STATUS WHERE Variable_name IN ('Questions', 'Com_call_procedure')")
    return {name: int(value) for name, value in cur.fetchall()}


def test_every_operation_is_one_statement_in_one_round_trip(table: str) -> None:
    """Every operation is one statement in one request, counted by the client and the server."""
    store = MySQLStore.from_url(MYSQL_URL, table=table, max_size=1, cursorclass=_CountingCursor)
    try:
        store.migrate()
        with store._pool.connection() as conn:
            pass  # the pool's only connection: every operation below runs on it
        # What reading the counters costs by itself (the SHOW is a question too).
        first = _server_counters(conn)
        base = _server_counters(conn)["Questions"] - first["Questions"]
        seen: dict[str, dict[str, int]] = {}

        @contextlib.contextmanager
        def measure(label: str) -> Iterator[None]:
            before = _server_counters(conn)
            _CountingCursor.executed.clear()
            with mock.patch.object(conn, "_execute_command", wraps=conn._execute_command) as sent:
                yield
            after = _server_counters(conn)
            seen[label] = {
                "statements": len(_CountingCursor.executed),
                "requests": sent.call_count,
                "questions": after["Questions"] - before["Questions"] - base,
                "calls": after["Com_call_procedure"] - before["Com_call_procedure"],
            }

        stale = store.claim(SCOPE, "stale", "fp", _token(), lease=0.05, ttl=TTL)
        with measure("claim acquired"):
            first_claim = store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
        with measure("claim in_progress"):
            store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
        with measure("claim mismatch"):
            store.claim(SCOPE, "k", "other", _token(), lease=LEASE, ttl=TTL)
        with measure("extend"):
            store.extend(SCOPE, "k", first_claim.token, lease=LEASE)
        with measure("set_recovery_point"):
            store.set_recovery_point(SCOPE, "k", first_claim.token, b"p", lease=LEASE)
        with measure("get"):
            store.get(SCOPE, "k")
        with measure("complete"):
            store.complete(SCOPE, "k", first_claim.token, b"done", ttl=TTL)
        with measure("claim completed"):
            replay = store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
        assert replay.status is ClaimStatus.COMPLETED
        with measure("complete refused"), pytest.raises(LeaseLostError):
            store.complete(SCOPE, "k", first_claim.token, b"again", ttl=TTL)
        with measure("release refused"):
            assert store.release(SCOPE, "k", first_claim.token) is False
        with measure("delete"):
            assert store.delete(SCOPE, "k") is True
        held = store.claim(SCOPE, "other", "fp", _token(), lease=LEASE, ttl=TTL)
        with measure("release"):
            assert store.release(SCOPE, "other", held.token) is True
        time.sleep(0.06)
        with measure("claim takeover"):
            taken = store.claim(SCOPE, "stale", "fp", _token(), lease=LEASE, ttl=TTL)
        assert taken.takeover
        assert taken.token != stale.token
        with measure("purge_expired"):
            store.purge_expired(10)

        with store._pool.connection() as again:
            assert again is conn  # nothing ran on another connection
        calls = {"get": 0, "release": 0, "release refused": 0, "delete": 0}
        for label, counts in seen.items():
            expected = {"statements": 1, "requests": 1, "questions": 1}
            expected["calls"] = calls.get(label, 1)
            assert counts == expected, label
        assert len(seen) == 14
    finally:
        store.close()


# -- migrations -------------------------------------------------------------------------------


def _objects(table: str) -> tuple[int, int]:
    """(tables, procedures at SCHEMA_VERSION) of this store in the database."""
    ((tables,),) = _raw(
        table,
        "SELECT COUNT(*) FROM information_schema.TABLES"
        " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
        table,
    )
    ((procedures,),) = _raw(
        table,
        "SELECT COUNT(*) FROM information_schema.ROUTINES"
        " WHERE ROUTINE_SCHEMA = DATABASE() AND ROUTINE_NAME LIKE %s AND ROUTINE_COMMENT = %s",
        table.replace("_", "\\_") + "\\_%",
        f"idempo schema {SCHEMA_VERSION}",
    )
    return int(tables), int(procedures)


def test_migrate_creates_the_table_and_its_procedures(store: MySQLStore, table: str) -> None:
    """Migrated (twice), the database holds the table and its three current procedures."""
    store.migrate()
    store.migrate()  # keeps the data, replaces the procedures
    assert _objects(table) == (1, 3)


def test_concurrent_migrations_from_many_processes_are_safe(table: str) -> None:
    """Stores with their own connections (as separate processes would have) migrating at once,
    while others already use the schema: GET_LOCK makes them take turns, and nobody fails."""
    stores = [MySQLStore.from_url(MYSQL_URL, table=table, auto_migrate=False) for _ in range(8)]
    stores[0].migrate()
    barrier = threading.Barrier(len(stores) * 2)

    def migrate(store: MySQLStore) -> None:
        barrier.wait()
        store.migrate()

    def claim(store: MySQLStore) -> ClaimStatus:
        barrier.wait()
        return store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL).status

    try:
        with ThreadPoolExecutor(len(stores) * 2) as pool:
            migrations = [pool.submit(migrate, s) for s in stores]
            claims = [pool.submit(claim, s) for s in stores]
            for m in migrations:
                m.result()
            statuses = [c.result() for c in claims]
        assert statuses.count(ClaimStatus.ACQUIRED) == 1
        assert statuses.count(ClaimStatus.IN_PROGRESS) == len(stores) - 1
        assert _objects(table) == (1, 3)
    finally:
        for s in stores:
            s.close()


def test_auto_migration_runs_once_per_store(table: str) -> None:
    """64 first callers at once: one migrates, the others wait for it; a second store finds
    the schema current and runs no DDL."""
    store = MySQLStore.from_url(MYSQL_URL, table=table)
    try:
        with (
            mock.patch.object(store, "_migrate", wraps=store._migrate) as migrate,
            ThreadPoolExecutor(64) as pool,
        ):
            results = list(
                pool.map(
                    lambda i: store.claim(SCOPE, f"k{i}", "fp", _token(), lease=LEASE, ttl=TTL),
                    range(64),
                )
            )
        assert [r.status for r in results] == [ClaimStatus.ACQUIRED] * 64
        assert migrate.call_count == 1
    finally:
        store.close()
    again = MySQLStore.from_url(MYSQL_URL, table=table)
    try:
        with mock.patch.object(again, "_migrate", wraps=again._migrate) as migrate:
            assert again.get(SCOPE, "k0") is not None
        assert migrate.call_count == 0
    finally:
        again.close()


def test_application_user_needs_no_ddl_privileges(table: str) -> None:
    """Migrated by an owner, the store runs as a user with DML and EXECUTE rights only."""
    owner = MySQLStore.from_url(MYSQL_URL, table=table)
    owner.migrate()
    owner.close()
    user = f"idempo_app_{uuid.uuid4().hex[:8]}"
    database = _raw(table, "SELECT DATABASE()")[0][0]
    _raw(table, f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
    try:
        _raw(table, f"GRANT SELECT, INSERT, UPDATE, DELETE ON `{database}`.{{t}} TO '{user}'@'%'")
        for suffix in ("claim", "hold", "purge"):
            _raw(
                table,
                f"GRANT EXECUTE ON PROCEDURE `{database}`.`{table}_{suffix}` TO '{user}'@'%'",
            )
        app = MySQLStore.from_url(MYSQL_URL, table=table, user=user, password="pw")
        try:
            # auto_migrate on: the probe finds the schema current, so no DDL is attempted.
            first = app.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
            app.extend(SCOPE, "k", first.token, lease=LEASE)
            app.complete(SCOPE, "k", first.token, b"ok", ttl=TTL)
            assert app.purge_expired() == 0
            assert app.delete(SCOPE, "k") is True
            with pytest.raises(StoreError, match="denied") as info:
                app.migrate()  # DDL is what the user cannot do
            assert not isinstance(info.value, StoreUnavailableError)
        finally:
            app.close()
    finally:
        _raw(table, f"DROP USER '{user}'@'%'")


def test_bad_table_names_are_refused() -> None:
    """Table names that are not plain identifiers, or too long for the procedures, are refused."""
    for bad in ("", "t" * 59, "a-b", "a`b", "1abc", "x y"):
        with pytest.raises(ValueError, match="plain identifier"):
            MySQLStore(table=bad)
    MySQLStore(table="t" * 58).close()


def test_urls() -> None:
    """URLs are parsed with percent-decoding; malformed ones and autocommit=False are refused."""
    for bad in (
        "mysql://root@127.0.0.1/",
        "mysql://root@127.0.0.1",
        "mysql://root@127.0.0.1/a/b",
        "mysql://root@127.0.0.1/test?ssl=1",
        "postgresql://root@127.0.0.1/test",
    ):
        with pytest.raises(ValueError, match="URL"):
            open_sync(bad)
    store = open_sync("mysql://us%40er:p%3Ass@db.example:3307/my%20db", connect_timeout=1)
    kwargs = store._connect_kwargs
    assert (kwargs["user"], kwargs["password"], kwargs["host"], kwargs["port"]) == (
        "us@er",
        "p:ss",
        "db.example",
        3307,
    )
    assert (kwargs["database"], kwargs["connect_timeout"], kwargs["autocommit"]) == (
        "my db",
        1,
        True,
    )
    store.close()
    with pytest.raises(TypeError, match="autocommit"):
        open_sync(MYSQL_URL, autocommit=False)
    assert isinstance(open_async(MYSQL_URL), AsyncMySQLStore)


# -- errors at the boundary -------------------------------------------------------------------


def test_exhausted_pool_is_unavailable(table: str) -> None:
    """Callers wait for a connection up to the pool timeout, then get StoreUnavailableError."""
    store = MySQLStore.from_url(MYSQL_URL, table=table, max_size=1, pool_timeout=0.3)
    try:
        store.migrate()
        with store._pool.connection():  # the only connection is busy elsewhere
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="max_size=1"):
                store.get(SCOPE, "k")
            assert 0.25 < time.monotonic() - started < 2
        assert store.get(SCOPE, "k") is None
    finally:
        store.close()


def test_lost_connection_is_unavailable_then_recovers(store: MySQLStore) -> None:
    """A server-side kill of the session surfaces as StoreUnavailableError; the broken
    connection is discarded and the next operation opens a fresh one."""
    store.migrate()
    with store._pool.connection() as conn:
        thread_id = conn.thread_id()
    conn_count = store._pool._size
    killer = _raw_connect()
    try:
        killer.cursor().execute(f"KILL {int(thread_id)}")
    finally:
        killer.close()
    with pytest.raises(StoreUnavailableError):
        store.get(SCOPE, "k")
    assert store._pool._size == conn_count - 1
    assert store.get(SCOPE, "k") is None
    first = store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
    assert first.status is ClaimStatus.ACQUIRED


def test_server_errors_keep_the_connection(store: MySQLStore) -> None:
    """A clean server error (value too long) is a StoreError, not unavailability, and the
    connection stays in the pool."""
    store.migrate()
    with pytest.raises(StoreError, match="too long") as info:
        store.claim(SCOPE, "k" * 256, "fp", _token(), lease=LEASE, ttl=TTL)
    assert not isinstance(info.value, StoreUnavailableError)
    with pytest.raises(StoreError):
        store.get(SCOPE, "k" * 256 + "é")
    assert store._pool._size == 1
    assert store.get(SCOPE, "k") is None


def test_procedures_refuse_sessions_in_another_time_zone(store: MySQLStore, table: str) -> None:
    """UNIX_TIMESTAMP() reads datetimes in the session time zone: the procedures insist on
    +00:00, which the store's connections always set."""
    store.migrate()
    conn = _raw_connect()
    try:
        cur = conn.cursor()
        cur.execute("SET time_zone = '+01:00'")
        with pytest.raises(pymysql.err.MySQLError, match="time_zone"):
            cur.execute(f"CALL `{table}_claim`('s', 'k', 'fp', 't', 30, 60)")
    finally:
        conn.close()


def test_keys_are_compared_byte_for_byte(store: MySQLStore) -> None:
    """Case and trailing spaces make different keys (ascii_bin would pad 'k ' to equal 'k')."""
    keys = ["k", "k ", "K", "k  ", " k"]
    for key in keys:
        result = store.claim(SCOPE, key, "fp", _token(), lease=LEASE, ttl=TTL)
        assert result.status is ClaimStatus.ACQUIRED, repr(key)
        assert result.record.key == key
    for key in keys:
        record = store.get(SCOPE, key)
        assert record is not None
        assert store.delete(SCOPE, key) is True
    # Fingerprints too: a trailing space is another request.
    first = store.claim(SCOPE, "f", "fp", _token(), lease=LEASE, ttl=TTL)
    assert store.claim(SCOPE, "f", "fp ", _token(), lease=LEASE, ttl=TTL).status is (
        ClaimStatus.MISMATCH
    )
    assert first.token


def test_same_token_reclaim_is_in_progress(store: MySQLStore) -> None:
    """A claim repeated with the token of the live claim (a retried request whose reply was
    lost) sees the record in progress, as transitions.claim decides: not a fresh acquire."""
    token = _token()
    assert store.claim(SCOPE, "k", "fp", token, lease=LEASE, ttl=TTL).token == token
    again = store.claim(SCOPE, "k", "fp", token, lease=LEASE, ttl=TTL)
    assert again.status is ClaimStatus.IN_PROGRESS
    assert again.record.token is None


def test_closed_store_refuses_work(table: str) -> None:
    """A closed store has closed its pool and refuses further work."""
    store = MySQLStore.from_url(MYSQL_URL, table=table)
    store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
    store.close()
    assert store._pool.closed
    assert store._pool._size == 0
    with pytest.raises(StoreError, match="closed"):
        store.get(SCOPE, "k")


# -- purge ------------------------------------------------------------------------------------


def test_purge_deletes_only_expired_rows_in_batches(store: MySQLStore, table: str) -> None:
    """purge_expired(limit) deletes expired rows limit at a time, never a live one."""
    for i in range(7):
        first = store.claim(SCOPE, f"e{i}", "fp", _token(), lease=LEASE, ttl=TTL)
        store.complete(SCOPE, f"e{i}", first.token, b"x", ttl=0.05)
    store.claim(SCOPE, "held", "fp", _token(), lease=LEASE, ttl=TTL)
    time.sleep(0.1)
    assert store.purge_expired(limit=3) == 3
    assert store.purge_expired(limit=3) == 3
    assert store.purge_expired(limit=3) == 1
    assert store.purge_expired(limit=3) == 0
    assert store.purge_expired(limit=0) == 0
    assert _raw(table, "SELECT `key` FROM {t}") == [("held",)]


# -- concurrency beyond the suite -------------------------------------------------------------


def test_claim_storm_over_fewer_connections(table: str) -> None:
    """64 threads on 4 connections, many keys, every claim outcome: each key ends with exactly
    one acquirer per generation, and nobody sees an error."""
    store = MySQLStore.from_url(MYSQL_URL, table=table, max_size=4)
    try:
        keys = [f"s{i}" for i in range(8)]

        def claim(i: int) -> ClaimResult:
            return store.claim(SCOPE, keys[i % len(keys)], "fp", _token(), lease=LEASE, ttl=TTL)

        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(claim, range(256)))
        for key in keys:
            statuses = [r.status for r in results if r.record.key == key]
            assert statuses.count(ClaimStatus.ACQUIRED) == 1, key
            assert statuses.count(ClaimStatus.IN_PROGRESS) == len(statuses) - 1, key
        assert store._pool._size <= 4
    finally:
        store.close()


def _patched_claim(store: MySQLStore, anchor: str, extra: str) -> None:
    """Reinstall the claim procedure with ``extra`` SQL after ``anchor`` (white-box tests)."""
    (ddl,) = [
        m
        for m in store._sql.migration
        if m.lstrip().startswith("CREATE OR REPLACE PROCEDURE") and "_claim`(" in m
    ]
    assert anchor in ddl
    with store._pool.connection() as conn:
        conn.cursor().execute(ddl.replace(anchor, anchor + extra, 1))


def test_a_lost_insert_race_starts_over(store: MySQLStore, table: str) -> None:
    """A claimer that finds the key absent, then loses the INSERT to another (duplicate key),
    rolls back and decides again on the winner's row, inside the same CALL."""
    store.migrate()
    # Pause the first attempt between its locking read (key absent) and its INSERT.
    _patched_claim(
        store,
        "SET v_now = UNIX_TIMESTAMP(SYSDATE(6));",
        " IF v_tries = 1 AND NOT v_found THEN DO SLEEP(0.5); END IF;",
    )
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(store.claim, SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
        time.sleep(0.2)
        # Another claimer's INSERT, committed while the first one sleeps.
        _raw(
            table,
            "INSERT INTO {t} (scope, `key`, fingerprint, state, token, lease_until, created_at,"
            " expires_at) VALUES (%s, 'k', 'fp', 'in_progress', 'winner-token',"
            " UNIX_TIMESTAMP(NOW(6)) + 30, UNIX_TIMESTAMP(NOW(6)), UNIX_TIMESTAMP(NOW(6)) + 60)",
            SCOPE,
        )
        result = pending.result(timeout=10)
    assert result.status is ClaimStatus.IN_PROGRESS
    assert result.record.token is None
    assert _raw(table, "SELECT token FROM {t}") == [("winner-token",)]


def test_a_failed_call_leaves_no_transaction_open(table: str) -> None:
    """A lock wait timeout inside a procedure is StoreUnavailableError (nothing written), and
    the connection goes back to the pool outside any transaction, holding no lock."""
    store = MySQLStore.from_url(MYSQL_URL, table=table, max_size=1)
    try:
        first = store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
        with store._pool.connection() as conn:
            conn.cursor().execute("SET SESSION innodb_lock_wait_timeout = 1")
        holder = _raw_connect()
        try:
            cur = holder.cursor()
            cur.execute("START TRANSACTION")
            cur.execute(f"SELECT 1 FROM `{table}` WHERE `key` = 'k' FOR UPDATE")
            with pytest.raises(StoreUnavailableError, match="Lock wait timeout"):
                store.extend(SCOPE, "k", first.token, lease=LEASE)
            with store._pool.connection() as again:
                assert again is conn
                in_trx = again.cursor()
                in_trx.execute("SELECT @@in_transaction")
                assert in_trx.fetchone() == (0,)
            cur.execute("ROLLBACK")
        finally:
            holder.close()
        assert store.extend(SCOPE, "k", first.token, lease=LEASE) > first.record.lease_until  # type: ignore[operator]
    finally:
        store.close()

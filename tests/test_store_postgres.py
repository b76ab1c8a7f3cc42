"""The PostgreSQL store: the server-store tier of the public suite (sync and async), and what it
promises beyond it: one statement in one round trip per operation, safe concurrent migrations,
error translation, a purge that skips locked rows, and pool ownership. Every test works in its
own schema ``idempo_test_<uuid>`` and drops it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from idempo import open_store
from idempo.core.records import ClaimStatus
from idempo.errors import LeaseLostError, StoreError, StoreUnavailableError
from idempo.stores import _postgres_sql as pg_sql
from idempo.stores.postgres import AsyncPostgresStore, PostgresStore, migration_sql
from idempo.testing import AsyncServerStoreConformance, ServerStoreConformance
from tests.conftest import POSTGRES_URL, require_service

pytestmark = pytest.mark.postgres

LEASE, TTL = 30.0, 60.0
SCOPE = "pg"
# Nothing listens on port 1: connecting is refused at once.
DOWN_URL = "postgresql://postgres@127.0.0.1:1/test"


def _token() -> str:
    return uuid.uuid4().hex


def _drop_schema(name: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@contextlib.contextmanager
def _fresh_schema(name: str | None = None) -> Iterator[str]:
    name = name or f"idempo_test_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        _drop_schema(name)


@pytest.fixture
def schema() -> Iterator[str]:
    require_service("postgres")
    with _fresh_schema() as name:
        yield name


@pytest.fixture
def store(schema: str) -> Iterator[PostgresStore]:
    s = PostgresStore.from_url(POSTGRES_URL, schema=schema)
    yield s
    s.close()


@pytest.fixture
async def astore(schema: str) -> AsyncIterator[AsyncPostgresStore]:
    s = AsyncPostgresStore.from_url(POSTGRES_URL, schema=schema)
    yield s
    await s.close()


def _raw(schema: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run ``query`` with ``{t}`` standing for the store's table, behind the store's back."""
    table = sql.SQL(".").join([sql.Identifier(schema), sql.Identifier("idempo_records")])
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        cur = conn.execute(sql.SQL(query).format(t=table), params)
        return cur.fetchall() if cur.description else []


# -- the server-store tier of the public suite --------------------------------------------


class _PostgresHooks:
    """What the server-store tier needs to reach a PostgreSQL store behind its back; the
    location is the test's schema."""

    @pytest.fixture
    def location(self, schema: str) -> str:
        return schema

    def write_newer_format(self, location: str, scope: str, key: str) -> None:
        _raw(location, "UPDATE {t} SET format = 2 WHERE scope = %s AND key = %s", scope, key)

    def stored_lease(self, location: str, scope: str, key: str) -> tuple[Any, Any]:
        rows = _raw(
            location, "SELECT token, lease_until FROM {t} WHERE scope = %s AND key = %s", scope, key
        )
        assert len(rows) == 1
        return rows[0]

    def count_records(self, location: str) -> int:
        ((count,),) = _raw(location, "SELECT count(*) FROM {t}")
        return int(count)

    def schema_objects(self, location: str) -> tuple[int, int, int]:
        return _objects(location)


class TestPostgresServerStore(_PostgresHooks, ServerStoreConformance):
    @pytest.fixture
    def store(self, location: str) -> Iterator[PostgresStore]:
        s = PostgresStore.from_url(POSTGRES_URL, schema=location)
        yield s
        s.close()

    @pytest.fixture
    def unmigrated_store(self, location: str) -> Iterator[PostgresStore]:
        s = PostgresStore.from_url(POSTGRES_URL, schema=location, auto_migrate=False)
        yield s
        s.close()

    @pytest.fixture
    def down_store(self) -> Iterator[PostgresStore]:
        s = PostgresStore.from_url(DOWN_URL, connect_timeout=1, pool_timeout=0.5)
        yield s
        s.close()


class TestAsyncPostgresServerStore(_PostgresHooks, AsyncServerStoreConformance):
    @pytest.fixture
    async def store(self, location: str) -> AsyncIterator[AsyncPostgresStore]:
        s = AsyncPostgresStore.from_url(POSTGRES_URL, schema=location)
        yield s
        await s.close()

    @pytest.fixture
    async def unmigrated_store(self, location: str) -> AsyncIterator[AsyncPostgresStore]:
        s = AsyncPostgresStore.from_url(POSTGRES_URL, schema=location, auto_migrate=False)
        yield s
        await s.close()

    @pytest.fixture
    async def down_store(self) -> AsyncIterator[AsyncPostgresStore]:
        s = AsyncPostgresStore.from_url(DOWN_URL, connect_timeout=1, pool_timeout=0.5)
        yield s
        await s.close()


# -- one statement, one round trip ------------------------------------------------------------
#
# Counted on the client, at two levels, because the server offers no per-session statement
# counter that is reliable across backends (pg_stat_* are flushed lazily, pg_stat_statements is
# not installed everywhere):
#
# * a psycopg cursor factory counts the statements the store executes (cursor.execute calls);
# * libpq's own protocol trace (PQtrace) records every message the connection sends. In the
#   extended protocol the client waits for the server only at a Sync (or a simple Query), so
#   Sync + Query messages are the round trips, and Execute messages the statements the server
#   ran (an Execute runs exactly one statement: the server refuses several in one Parse).
#
# The trace sees everything the driver sends, including what the store does not ask for
# explicitly (psycopg's Parse of a prepared statement, transaction control, pool resets).


class _CountingCursor(psycopg.Cursor[Any]):
    executed: list[Any] = []  # noqa: RUF012 - shared on purpose: the test reads it

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        _CountingCursor.executed.append(query)
        return super().execute(query, params, **kwargs)


class _AsyncCountingCursor(psycopg.AsyncCursor[Any]):
    executed: list[Any] = []  # noqa: RUF012

    async def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        _AsyncCountingCursor.executed.append(query)
        return await super().execute(query, params, **kwargs)


class _Wire:
    """libpq protocol trace of one connection, read one operation at a time."""

    def __init__(self, pgconn: Any, directory: Path) -> None:
        self.pgconn = pgconn
        self.directory = directory
        self.n = 0

    @contextlib.contextmanager
    def measure(self, executed: list[Any]) -> Iterator[dict[str, int]]:
        self.n += 1
        path = self.directory / f"trace-{self.n}.txt"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        counts: dict[str, int] = {}
        executed.clear()
        self.pgconn.trace(fd)
        self.pgconn.set_trace_flags(
            psycopg.pq.Trace.SUPPRESS_TIMESTAMPS | psycopg.pq.Trace.REGRESS_MODE
        )
        try:
            yield counts
        finally:
            self.pgconn.untrace()  # flushes libpq's stream
            os.close(fd)
        sent = [
            fields[2].strip()
            for fields in (line.split("\t") for line in path.read_text().splitlines())
            if len(fields) > 2 and fields[0] == "F"
        ]
        counts["statements"] = len(executed)
        counts["round_trips"] = sent.count("Sync") + sent.count("Query")
        counts["executes"] = sent.count("Execute")
        counts["parses"] = sent.count("Parse")


def test_every_operation_is_one_statement_in_one_round_trip(schema: str, tmp_path: Path) -> None:
    """Every operation and every claim outcome: one execute, one Execute, one Sync on the wire.

    Seven rounds, so that each statement crosses psycopg's prepare threshold (5): the Parse of
    the prepared statement travels in the same flight, not in a round trip of its own.
    """
    connections: list[psycopg.Connection[Any]] = []
    pool = ConnectionPool(
        POSTGRES_URL,
        min_size=1,
        max_size=1,
        kwargs={"autocommit": True, "cursor_factory": _CountingCursor},
        configure=connections.append,
        open=True,
    )
    store = PostgresStore(pool, schema=schema)
    try:
        store.migrate()
        wire = _Wire(connections[0].pgconn, tmp_path)
        seen: dict[str, list[dict[str, int]]] = {}

        @contextlib.contextmanager
        def measure(label: str) -> Iterator[None]:
            with wire.measure(_CountingCursor.executed) as counts:
                yield
            seen.setdefault(label, []).append(counts)

        for i in range(7):
            key, other, stale = f"k{i}", f"o{i}", f"s{i}"
            short = store.claim(SCOPE, stale, "fp", _token(), lease=0.05, ttl=TTL)
            with measure("claim acquired"):
                first = store.claim(SCOPE, key, "fp", _token(), lease=LEASE, ttl=TTL)
            with measure("claim in_progress"):
                store.claim(SCOPE, key, "fp", _token(), lease=LEASE, ttl=TTL)
            with measure("claim mismatch"):
                store.claim(SCOPE, key, "other", _token(), lease=LEASE, ttl=TTL)
            with measure("extend"):
                store.extend(SCOPE, key, first.token, lease=LEASE)
            with measure("set_recovery_point"):
                store.set_recovery_point(SCOPE, key, first.token, b"p", lease=LEASE)
            with measure("get"):
                store.get(SCOPE, key)
            with measure("complete"):
                store.complete(SCOPE, key, first.token, b"done", ttl=TTL)
            with measure("claim completed"):
                replay = store.claim(SCOPE, key, "fp", _token(), lease=LEASE, ttl=TTL)
            assert replay.status is ClaimStatus.COMPLETED
            with measure("complete refused"), pytest.raises(LeaseLostError):
                store.complete(SCOPE, key, first.token, b"again", ttl=TTL)
            with measure("release refused"):
                assert store.release(SCOPE, key, first.token) is False
            with measure("delete"):
                assert store.delete(SCOPE, key) is True
            held = store.claim(SCOPE, other, "fp", _token(), lease=LEASE, ttl=TTL)
            with measure("release"):
                assert store.release(SCOPE, other, held.token) is True
            time.sleep(0.06)
            with measure("claim takeover"):
                taken = store.claim(SCOPE, stale, "fp", _token(), lease=LEASE, ttl=TTL)
            assert taken.takeover
            assert taken.token != short.token
            with measure("purge_expired"):
                store.purge_expired(10)
    finally:
        store.close()
        pool.close()

    assert len(seen) == 14
    for label, rounds in seen.items():
        for n, counts in enumerate(rounds):
            where = f"{label}, round {n + 1}: {counts}"
            assert counts["statements"] == 1, where
            assert counts["executes"] == 1, where
            assert counts["round_trips"] == 1, where
            assert counts["parses"] <= 1, where
        # From the 6th use on the statement is prepared: no Parse any more.
        assert rounds[-1]["parses"] == 0, label


def test_without_prepared_statements_each_operation_is_one_round_trip(
    schema: str, tmp_path: Path
) -> None:
    """With prepare_threshold=None (behind a pgbouncer that cannot keep prepared statements)
    nothing is ever prepared: every use parses its statement, still in one flight."""
    connections: list[psycopg.Connection[Any]] = []
    pool = ConnectionPool(
        POSTGRES_URL,
        min_size=1,
        max_size=1,
        kwargs={
            "autocommit": True,
            "prepare_threshold": None,
            "cursor_factory": _CountingCursor,
        },
        configure=connections.append,
        open=True,
    )
    store = PostgresStore(pool, schema=schema)
    try:
        store.migrate()
        wire = _Wire(connections[0].pgconn, tmp_path)
        for i in range(7):
            with wire.measure(_CountingCursor.executed) as claim:
                first = store.claim(SCOPE, f"k{i}", "fp", _token(), lease=LEASE, ttl=TTL)
            with wire.measure(_CountingCursor.executed) as complete:
                store.complete(SCOPE, f"k{i}", first.token, b"x", ttl=TTL)
            with wire.measure(_CountingCursor.executed) as replay:
                again = store.claim(SCOPE, f"k{i}", "fp", _token(), lease=LEASE, ttl=TTL)
            assert again.status is ClaimStatus.COMPLETED
            assert again.record.outcome == b"x"
            for counts in (claim, complete, replay):
                assert counts["statements"] == counts["executes"] == 1, counts
                assert counts["round_trips"] == 1, counts
                assert counts["parses"] == 1, counts
    finally:
        store.close()
        pool.close()


async def test_async_operations_are_one_round_trip(schema: str, tmp_path: Path) -> None:
    """The async twin sends the same single flight."""
    connections: list[psycopg.AsyncConnection[Any]] = []

    async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
        connections.append(conn)

    pool = AsyncConnectionPool(
        POSTGRES_URL,
        min_size=1,
        max_size=1,
        kwargs={"autocommit": True, "cursor_factory": _AsyncCountingCursor},
        configure=configure,
        open=False,
    )
    await pool.open()
    store = AsyncPostgresStore(pool, schema=schema)
    try:
        await store.migrate()
        wire = _Wire(connections[0].pgconn, tmp_path)
        for i in range(7):
            with wire.measure(_AsyncCountingCursor.executed) as claim:
                first = await store.claim(SCOPE, f"k{i}", "fp", _token(), lease=LEASE, ttl=TTL)
            with wire.measure(_AsyncCountingCursor.executed) as complete:
                await store.complete(SCOPE, f"k{i}", first.token, b"x", ttl=TTL)
            with wire.measure(_AsyncCountingCursor.executed) as replay:
                again = await store.claim(SCOPE, f"k{i}", "fp", _token(), lease=LEASE, ttl=TTL)
            assert again.status is ClaimStatus.COMPLETED
            for counts in (claim, complete, replay):
                assert counts["statements"] == counts["executes"] == 1, counts
                assert counts["round_trips"] == 1, counts
    finally:
        await store.close()
        await pool.close()


# -- migrations ------------------------------------------------------------------------------


def _objects(schema: str) -> tuple[int, int, int]:
    """How many tables, indexes and functions the schema holds."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        row = conn.execute(
            """
            SELECT
                (SELECT count(*) FROM pg_tables WHERE schemaname = %(s)s),
                (SELECT count(*) FROM pg_indexes WHERE schemaname = %(s)s),
                (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE n.nspname = %(s)s)
            """,
            {"s": schema},
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def test_migrate_creates_the_table_its_indexes_and_the_claim_function(
    store: PostgresStore, schema: str
) -> None:
    """Migrated (twice), the schema holds one table, its three indexes and the claim function."""
    store.migrate()
    store.migrate()
    assert _objects(schema) == (1, 3, 1)  # the table; primary key, expiry, in-progress; claim


def test_schema_2_is_upgraded_to_3_in_place(schema: str) -> None:
    """A schema at version 2 (claim function marked 2, the body of that idempo) is upgraded by
    the first operation of a store object: CREATE OR REPLACE keeps the function's signature,
    the records and every object; the new body reads before it writes."""
    store = PostgresStore.from_url(POSTGRES_URL, schema=schema)
    try:
        held = store.claim(SCOPE, "held", "fp", _token(), lease=LEASE, ttl=TTL)
        done = store.claim(SCOPE, "done", "fp", _token(), lease=LEASE, ttl=TTL)
        store.complete(SCOPE, "done", done.token, b"out", ttl=TTL)
    finally:
        store.close()
    statements = pg_sql.statements(schema, "idempo_records")
    # Version 2's body, as far as this test can tell: it always locks the row (FOR UPDATE)
    # before answering. The signature is the one every version since 1 has.
    old_body = """
    DECLARE v_row {table}%ROWTYPE;
    BEGIN
        SELECT t.* INTO v_row FROM {table} AS t
        WHERE t.scope = p_scope AND t.key = p_key FOR UPDATE;
        o_status := 'completed';
        o_now := extract(epoch FROM clock_timestamp())::float8;
        o_fingerprint := v_row.fingerprint;
        o_state := v_row.state;
        o_outcome := v_row.outcome;
        o_created_at := extract(epoch FROM v_row.created_at)::float8;
        o_expires_at := extract(epoch FROM v_row.expires_at)::float8;
        o_format := v_row.format;
    END
    """
    body = sql.SQL(old_body).format(table=statements.table)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL(pg_sql._CLAIM_FUNCTION).format(
                function=statements.function, body=sql.Literal(body.as_string(None))
            )
        )
        conn.execute(
            sql.SQL("COMMENT ON FUNCTION {}{} IS 'idempo schema 2'").format(
                statements.function, sql.SQL(pg_sql.CLAIM_ARGS)
            )
        )
    # The old body locks: a replay through it writes the row's xmax.
    xmax = _raw(schema, "SELECT xmax::text FROM {t} WHERE key = 'done'")[0][0]
    old = PostgresStore.from_url(POSTGRES_URL, schema=schema, auto_migrate=False)
    try:
        assert old.claim(SCOPE, "done", "fp", _token(), lease=LEASE, ttl=TTL).record.outcome
    finally:
        old.close()
    locked = _raw(schema, "SELECT xmax::text FROM {t} WHERE key = 'done'")[0][0]
    assert locked != xmax

    store = PostgresStore.from_url(POSTGRES_URL, schema=schema)
    try:
        replay = store.claim(SCOPE, "done", "fp", _token(), lease=LEASE, ttl=TTL)
        assert replay.status is ClaimStatus.COMPLETED
        assert replay.record.outcome == b"out"
        assert _raw(schema, "SELECT xmax::text FROM {t} WHERE key = 'done'")[0][0] == locked
        busy = store.claim(SCOPE, "held", "fp", _token(), lease=LEASE, ttl=TTL)
        assert busy.status is ClaimStatus.IN_PROGRESS
        store.complete(SCOPE, "held", held.token, b"late", ttl=TTL)
    finally:
        store.close()
    assert _objects(schema) == (1, 3, 1)
    ((comment, source),) = _raw(
        schema,
        "SELECT obj_description(p.oid, 'pg_proc'), p.prosrc FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %s",
        schema,
    )
    assert comment == f"idempo schema {pg_sql.SCHEMA_VERSION}" == "idempo schema 3"
    assert "Read first, without a lock" in source


def test_concurrent_migrations_are_safe() -> None:
    """Several processes' stores migrating one fresh schema at the same instant all succeed."""
    require_service("postgres")
    for _ in range(3):
        with _fresh_schema() as schema:
            stores = [PostgresStore.from_url(POSTGRES_URL, schema=schema) for _ in range(4)]
            barrier = threading.Barrier(len(stores))

            def migrate(s: PostgresStore, barrier: threading.Barrier = barrier) -> None:
                s._open_pool()  # connect first, so that the DDL itself starts together
                s._is_current()
                barrier.wait()
                s.migrate()

            try:
                with ThreadPoolExecutor(len(stores)) as executor:
                    list(executor.map(migrate, stores))
                claims = [s.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL) for s in stores]
                assert [c.status for c in claims].count(ClaimStatus.ACQUIRED) == 1
                assert _objects(schema) == (1, 3, 1)
            finally:
                for s in stores:
                    s.close()


def test_auto_migrate_runs_once_for_concurrent_first_calls(schema: str) -> None:
    """64 threads' first calls on a new store: one migrates, the rest wait for it."""
    store = PostgresStore.from_url(POSTGRES_URL, schema=schema, max_size=10)
    try:
        with mock.patch.object(store, "_migrate", wraps=store._migrate) as migrate:
            barrier = threading.Barrier(64)

            def first_call(i: int) -> ClaimStatus:
                barrier.wait()
                return store.claim(SCOPE, f"k{i}", "fp", _token(), lease=LEASE, ttl=TTL).status

            with ThreadPoolExecutor(64) as executor:
                statuses = list(executor.map(first_call, range(64)))
        assert statuses == [ClaimStatus.ACQUIRED] * 64
        assert migrate.call_count == 1
    finally:
        store.close()
    # A second store object finds the schema current and runs no DDL at all.
    second = PostgresStore.from_url(POSTGRES_URL, schema=schema)
    try:
        with mock.patch.object(second, "_migrate", wraps=second._migrate) as migrate:
            assert second.get(SCOPE, "k0") is not None
        assert migrate.call_count == 0
    finally:
        second.close()


async def test_async_auto_migrate_runs_once_for_concurrent_first_calls(schema: str) -> None:
    """64 first callers at once on the async store: one migrates, the others wait for it."""
    store = AsyncPostgresStore.from_url(POSTGRES_URL, schema=schema, max_size=10)
    try:
        with mock.patch.object(store, "_migrate", wraps=store._migrate) as migrate:
            results = await asyncio.gather(
                *(
                    store.claim(SCOPE, f"k{i}", "fp", _token(), lease=LEASE, ttl=TTL)
                    for i in range(64)
                )
            )
        assert [r.status for r in results] == [ClaimStatus.ACQUIRED] * 64
        assert migrate.call_count == 1
    finally:
        await store.close()


def test_migration_sql_script_creates_the_same_schema(schema: str) -> None:
    """migration_sql() applied by another tool yields a schema the store accepts as current."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(migration_sql(schema).encode())
    store = PostgresStore.from_url(POSTGRES_URL, schema=schema)
    try:
        with mock.patch.object(store, "_migrate", wraps=store._migrate) as migrate:
            assert store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL).token
        assert migrate.call_count == 0
    finally:
        store.close()
    assert _objects(schema) == (1, 3, 1)


def test_application_role_needs_no_ddl_privileges(schema: str) -> None:
    """Migrated by an owner, the store runs as a role with DML and EXECUTE rights only."""
    role = f"idempo_test_role_{uuid.uuid4().hex[:8]}"
    owner = PostgresStore.from_url(POSTGRES_URL, schema=schema)
    owner.migrate()
    owner.close()
    ident = sql.Identifier(role)
    table = sql.SQL(".").join([sql.Identifier(schema), sql.Identifier("idempo_records")])
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident)
            )
            conn.execute(
                sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {}").format(table, ident)
            )
        url = POSTGRES_URL.replace("postgres@", f"{role}@", 1)
        app = PostgresStore.from_url(url, schema=schema)  # auto_migrate on: finds it current
        try:
            first = app.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
            app.complete(SCOPE, "k", first.token, b"ok", ttl=TTL)
            assert app.purge_expired() == 0
            with pytest.raises(StoreError, match="permission denied"):
                app.migrate()  # DDL is what the role cannot do
        finally:
            app.close()
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def test_odd_schema_and_table_names_are_quoted() -> None:
    """Schema and table names are identifiers, never SQL: quotes, spaces and case survive."""
    require_service("postgres")
    name = f"idempo_test_{uuid.uuid4().hex[:8]} \"'; DROP--$$"
    with _fresh_schema(name):
        store = open_store(POSTGRES_URL, schema=name, table='Weird "T"$body$')
        try:
            first = store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
            store.complete(SCOPE, "k", first.token, b"ok", ttl=0.1)
            time.sleep(0.15)
            assert store.purge_expired() == 1
            store.migrate()
        finally:
            store.close()
        # The auto-migration probe finds odd names current too: no DDL the second time.
        again = PostgresStore.from_url(POSTGRES_URL, schema=name, table='Weird "T"$body$')
        try:
            with mock.patch.object(again, "_migrate", wraps=again._migrate) as migrate:
                assert again.get(SCOPE, "k") is None
            assert migrate.call_count == 0
        finally:
            again.close()


def test_names_postgres_would_truncate_are_refused() -> None:
    """Table and schema names PostgreSQL would truncate, and empty ones, are refused up front."""
    with pytest.raises(ValueError, match="48 bytes"):
        PostgresStore.from_url(POSTGRES_URL, table="t" * 49)
    with pytest.raises(ValueError, match="63 bytes"):
        PostgresStore.from_url(POSTGRES_URL, schema="s" * 64)
    with pytest.raises(ValueError, match="non-empty"):
        PostgresStore.from_url(POSTGRES_URL, schema="")


# -- errors at the boundary ------------------------------------------------------------------


def test_exhausted_pool_is_unavailable(schema: str) -> None:
    """Callers wait for a connection up to the pool timeout, then get StoreUnavailableError."""
    pool = ConnectionPool(
        POSTGRES_URL, min_size=1, max_size=1, timeout=0.3, kwargs={"autocommit": True}, open=True
    )
    store = PostgresStore(pool, schema=schema)
    try:
        store.migrate()
        # The only connection is busy elsewhere.
        with pool.connection(), pytest.raises(StoreUnavailableError):
            store.get(SCOPE, "k")
        assert store.get(SCOPE, "k") is None
    finally:
        store.close()
        pool.close()


def test_lost_connection_is_unavailable_then_recovers(schema: str) -> None:
    """A server-side kill of the session surfaces as StoreUnavailableError; the pool heals."""
    app = f"idempo-test-{uuid.uuid4().hex[:8]}"
    store = PostgresStore.from_url(POSTGRES_URL, schema=schema, max_size=1, application_name=app)
    try:
        store.migrate()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (app,),
            ).fetchone()
        assert killed is not None
        assert killed[0] == 1
        with pytest.raises(StoreUnavailableError):
            store.get(SCOPE, "k")
        assert store.get(SCOPE, "k") is None
    finally:
        store.close()


def test_non_autocommit_pool_is_refused(schema: str) -> None:
    """In a transaction each statement would cost BEGIN and COMMIT round trips, and the pool
    would roll it back on return: the store refuses such connections."""
    pool = ConnectionPool(POSTGRES_URL, min_size=1, max_size=1, open=True)
    store = PostgresStore(pool, schema=schema)
    try:
        with pytest.raises(StoreError, match="autocommit"):
            store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
    finally:
        store.close()
        pool.close()


def test_repeatable_read_sessions_are_refused(store: PostgresStore, schema: str) -> None:
    """The claim function's retry loop needs READ COMMITTED; anything else fails loudly."""
    store.migrate()
    rr = PostgresStore.from_url(
        POSTGRES_URL,
        schema=schema,
        options="-c default_transaction_isolation=repeatable\\ read",
    )
    try:
        with pytest.raises(StoreError, match="READ COMMITTED"):
            rr.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
    finally:
        rr.close()


# -- reads and writes ------------------------------------------------------------------------


def _xmax(schema: str, key: str) -> str:
    """The row's xmax: a row lock (SELECT ... FOR UPDATE) or an update changes it."""
    return str(
        _raw(schema, "SELECT xmax::text FROM {t} WHERE scope = %s AND key = %s", SCOPE, key)[0][0]
    )


def test_replay_duplicate_and_mismatch_take_no_lock(store: PostgresStore, schema: str) -> None:
    """A claim answered without a write (completed, in progress under a live lease, another
    fingerprint) locks nothing: the rows' xmax stays as it was. A takeover and the revival of
    an expired record still write."""
    done = store.claim(SCOPE, "done", "fp", _token(), lease=LEASE, ttl=TTL)
    store.complete(SCOPE, "done", done.token, b"out", ttl=TTL)
    store.claim(SCOPE, "held", "fp", _token(), lease=LEASE, ttl=TTL)
    before = {k: _xmax(schema, k) for k in ("done", "held")}
    for _ in range(3):
        assert store.claim(SCOPE, "done", "fp", _token(), lease=LEASE, ttl=TTL).status is (
            ClaimStatus.COMPLETED
        )
        assert store.claim(SCOPE, "done", "fp2", _token(), lease=LEASE, ttl=TTL).status is (
            ClaimStatus.MISMATCH
        )
        assert store.claim(SCOPE, "held", "fp", _token(), lease=LEASE, ttl=TTL).status is (
            ClaimStatus.IN_PROGRESS
        )
        assert store.claim(SCOPE, "held", "fp2", _token(), lease=LEASE, ttl=TTL).status is (
            ClaimStatus.MISMATCH
        )
    assert {k: _xmax(schema, k) for k in ("done", "held")} == before

    stale = store.claim(SCOPE, "stale", "fp", _token(), lease=0.05, ttl=TTL)
    gone = store.claim(SCOPE, "gone", "fp", _token(), lease=LEASE, ttl=TTL)
    store.complete(SCOPE, "gone", gone.token, b"x", ttl=0.05)
    time.sleep(0.1)
    written = {k: _xmax(schema, k) for k in ("stale", "gone")}
    taken = store.claim(SCOPE, "stale", "fp", _token(), lease=LEASE, ttl=TTL)
    assert taken.takeover
    assert taken.token != stale.token
    revived = store.claim(SCOPE, "gone", "fp2", _token(), lease=LEASE, ttl=TTL)
    assert revived.status is ClaimStatus.ACQUIRED
    assert not revived.takeover
    assert _xmax(schema, "stale") != written["stale"]
    assert _xmax(schema, "gone") != written["gone"]


def test_an_unknown_claim_status_is_a_store_error(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim function of another version answering a status this code does not know."""
    row = ("weird", None, 1.0, "fp", "completed", None, None, b"x", None, 1.0, 2.0, 1)
    monkeypatch.setattr(store, "_run", lambda *a: [row])
    with pytest.raises(StoreError, match="weird"):
        store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)


def test_a_replay_in_a_transaction_assigns_no_transaction_id(
    store: PostgresStore, schema: str
) -> None:
    """Bound to a caller's transaction, a replay and a refused duplicate leave it read-only
    (no transaction id: nothing to commit, no WAL flush); a new key's claim makes it a write."""
    done = store.claim(SCOPE, "done", "fp", _token(), lease=LEASE, ttl=TTL)
    store.complete(SCOPE, "done", done.token, b"out", ttl=TTL)
    store.claim(SCOPE, "held", "fp", _token(), lease=LEASE, ttl=TTL)
    with psycopg.connect(POSTGRES_URL) as conn:
        bound = store.bind(conn)
        with conn.transaction():
            assert bound.claim(SCOPE, "done", "fp", _token(), lease=LEASE, ttl=TTL).status is (
                ClaimStatus.COMPLETED
            )
            assert bound.claim(SCOPE, "held", "fp", _token(), lease=LEASE, ttl=TTL).status is (
                ClaimStatus.IN_PROGRESS
            )
            assert bound.claim(SCOPE, "held", "x", _token(), lease=LEASE, ttl=TTL).status is (
                ClaimStatus.MISMATCH
            )
            xid = conn.execute("SELECT pg_current_xact_id_if_assigned()").fetchone()
            assert xid == (None,)
            assert bound.claim(SCOPE, "new", "fp", _token(), lease=LEASE, ttl=TTL).token
            xid = conn.execute("SELECT pg_current_xact_id_if_assigned()").fetchone()
            assert xid is not None
            assert xid[0] is not None


def test_concurrent_revival_of_an_expired_record_one_wins(schema: str) -> None:
    """64 simultaneous claimers of an expired completed record (each read sees it expired, so
    each goes to the locking path): exactly one acquires it anew, the rest see it held."""
    store = PostgresStore.from_url(POSTGRES_URL, schema=schema, max_size=16)
    try:
        first = store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
        store.complete(SCOPE, "k", first.token, b"old", ttl=0.05)
        time.sleep(0.1)
        barrier = threading.Barrier(64)

        def claim(_: int) -> Any:
            barrier.wait()
            return store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)

        with ThreadPoolExecutor(64) as executor:
            results = list(executor.map(claim, range(64)))
        statuses = [r.status for r in results]
        assert statuses.count(ClaimStatus.ACQUIRED) == 1
        assert statuses.count(ClaimStatus.IN_PROGRESS) == 63
        (winner,) = [r for r in results if r.status is ClaimStatus.ACQUIRED]
        assert not winner.takeover
        assert winner.record.outcome is None
    finally:
        store.close()


# -- purge -----------------------------------------------------------------------------------


def test_purge_skips_rows_a_claimer_holds_locked(schema: str) -> None:
    """An expired row locked by a claim in flight is passed over, without waiting for it."""
    store = PostgresStore.from_url(
        POSTGRES_URL, schema=schema, options="-c lock_timeout=2000"
    )  # a purge that waited for the lock would fail after 2 s instead of passing the test
    try:
        for key in ("locked", "free"):
            first = store.claim(SCOPE, key, "fp", _token(), lease=LEASE, ttl=TTL)
            store.complete(SCOPE, key, first.token, b"x", ttl=0.05)
        time.sleep(0.1)
        table = sql.SQL(".").join([sql.Identifier(schema), sql.Identifier("idempo_records")])
        with psycopg.connect(POSTGRES_URL) as holder:  # a transaction holding the row lock
            holder.execute(
                sql.SQL("SELECT 1 FROM {} WHERE key = 'locked' FOR UPDATE").format(table)
            )
            started = time.monotonic()
            assert store.purge_expired() == 1
            assert time.monotonic() - started < 1
            assert _raw(schema, "SELECT key FROM {t}") == [("locked",)]
            holder.rollback()
        assert store.purge_expired() == 1
        assert _raw(schema, "SELECT key FROM {t}") == []
    finally:
        store.close()


# -- pool ownership --------------------------------------------------------------------------


def test_a_pool_passed_in_stays_open(schema: str) -> None:
    """Closing a store leaves a pool passed in open for its owner; the store refuses work."""
    pool = ConnectionPool(
        POSTGRES_URL, min_size=1, max_size=2, kwargs={"autocommit": True}, open=True
    )
    store = PostgresStore(pool, schema=schema)
    try:
        store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
        store.close()
        with pool.connection() as conn:  # still usable by its owner
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(StoreError, match="closed"):
            store.get(SCOPE, "k")
    finally:
        pool.close()


def test_a_store_from_a_url_closes_its_pool(schema: str) -> None:
    """A store built from a URL owns its pool and closes it; the store refuses work."""
    store = PostgresStore.from_url(POSTGRES_URL, schema=schema)
    store.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
    store.close()
    assert store._pool.closed
    with pytest.raises(StoreError, match="closed"):
        store.get(SCOPE, "k")


async def test_async_store_opens_its_pool_lazily_in_the_loop(astore: AsyncPostgresStore) -> None:
    """Built outside any event loop, the async store opens its pool on first use."""
    assert astore._pool.closed
    first = await astore.claim(SCOPE, "k", "fp", _token(), lease=LEASE, ttl=TTL)
    assert first.status is ClaimStatus.ACQUIRED
    assert not astore._pool.closed


async def test_a_cancelled_operation_never_leaves_its_connection_to_the_next(
    schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operation cancelled at any point of its round trip (a heartbeat stopped, a request
    task cancelled) leaves no connection that misreads the next statement. psycopg 3.3 yields
    to the loop after entering pipeline mode when the loop has been busy: made to yield at
    every step here, a cancellation at each step in turn hits that point too (before the fix,
    the next claim on the one pooled connection read no rows)."""
    import psycopg.waiting

    monkeypatch.setattr(psycopg.waiting, "MAX_BUSY_TIME", -1.0, raising=False)
    cancelled_at = 0
    for step in range(12):
        pool = AsyncConnectionPool(
            POSTGRES_URL, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
        )
        await pool.open()
        store = AsyncPostgresStore(pool, schema=schema)
        try:
            key = f"k{step}"
            held = await store.claim(SCOPE, key, "fp", _token(), lease=LEASE, ttl=TTL)
            assert held.token is not None
            # A fresh connection: the extend is its first use there, sent in a pipeline.
            task = asyncio.create_task(store.extend(SCOPE, key, held.token, lease=LEASE))
            for _ in range(step):
                await asyncio.sleep(0)
            if not task.done():
                task.cancel()
                cancelled_at += 1
            with contextlib.suppress(asyncio.CancelledError):
                await task
            for i in range(3):  # the one pooled connection, or its replacement
                other = await store.claim(SCOPE, f"{key}-{i}", "fp", _token(), lease=LEASE, ttl=TTL)
                assert other.status is ClaimStatus.ACQUIRED
                assert other.token is not None
                await store.complete(SCOPE, f"{key}-{i}", other.token, b"v", ttl=TTL)
                again = await store.claim(SCOPE, f"{key}-{i}", "fp", _token(), lease=LEASE, ttl=TTL)
                assert again.status is ClaimStatus.COMPLETED
        finally:
            await store.close()
            await pool.close()
    assert cancelled_at >= 3  # the scan really cut operations short

# DO NOT EDIT: generated from src/idempo/stores/_async/postgres.py by scripts/unasync.py
"""The PostgreSQL store on psycopg 3 (``_sync/postgres.py`` is generated from ``_async/``).

Every contract operation is one statement, sent in one round trip (see ``_execute``), atomic on
its own:

* ``claim`` calls a plpgsql function that ``migrate()`` installs next to the table (see
  ``_CLAIM_BODY`` in :mod:`idempo.stores._postgres_sql` for why a function and not a CTE);
* ``complete``, ``extend``, ``set_recovery_point``, ``release``, ``delete`` are one
  ``UPDATE``/``DELETE ... RETURNING`` each, guarded by the token in their ``WHERE`` clause;
* ``get`` is one ``SELECT``; ``purge_expired`` one batched ``DELETE``.

Time is the server's ``clock_timestamp()`` everywhere, returned to Python as float epoch
seconds. The SQL text lives in :mod:`idempo.stores._postgres_sql`; this module holds only what
differs between the sync and async worlds: the store classes.

Connections must be in autocommit mode: in a transaction the statement would need a ``BEGIN``
and a ``COMMIT`` round trip around it, and a pool rolls back what a connection returns
mid-transaction.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import Connection, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import ExecStatus, PipelineStatus, TransactionStatus
from psycopg.rows import TupleRow, tuple_row
from psycopg_pool import ConnectionPool

from idempo._primitives import Lock
from idempo.core.records import ClaimResult, ClaimStatus, Record, State
from idempo.errors import StoreError
from idempo.stores import _scan
from idempo.stores._postgres_sql import (
    CLAIM_ARGS,
    IS_CURRENT,
    MIGRATE_LOCK,
    marker,
    migration,
    scan_statement,
    statements,
    stats_statement,
    store_errors,
)
from idempo.stores._rows import lease_lost, record
from idempo.stores._watchdog import WATCHDOG, Watch
from idempo.stores.base import Page, Stats

__all__ = ["BoundPostgresStore", "PostgresStore"]


def _unsettled(conn: Connection[Any]) -> bool:
    """Whether a statement cut short (cancelled, or failed in the driver) left ``conn`` where
    the next statement would misread it: mid-protocol, in a transaction, or still in pipeline
    mode. psycopg 3.3 can yield to the event loop after a connection entered pipeline mode and
    before its ``pipeline()`` block is entered, so a cancellation there skips the block's exit:
    libpq stays in pipeline mode with the connection IDLE, which the pool would keep, and the
    next statement on it (sent plainly) would read no rows. (Decision 0010.)"""
    if conn.closed:
        return False
    pgconn = conn.pgconn
    return (
        pgconn.pipeline_status != PipelineStatus.OFF
        or pgconn.transaction_status != TransactionStatus.IDLE
    )


# Whether libpq can pipeline (libpq >= 14): see _execute.
_PIPELINE = psycopg.capabilities.has_pipeline()
_STATUSES = {s.value: s for s in ClaimStatus}
# The (operation, statement text) pairs that each connection has prepared: see _execute. The
# operation too, because psycopg prepares a statement per parameter types (extend sends a NULL
# recovery point where set_recovery_point sends bytea). Weak, so that a connection the pool
# discards takes its entry with it.
_PREPARED: weakref.WeakKeyDictionary[Connection[Any], set[tuple[str, str]]] = (
    weakref.WeakKeyDictionary()
)
# The bound on migrate(), whatever ``timeout`` is: DDL may wait for locks that busy writers hold.
MIGRATE_TIMEOUT = 60.0


class PostgresStore:
    """An :class:`~idempo.stores.base.Store` in a PostgreSQL table.

    Build it from a URL (the store then owns its connection pool and closes it)::

        store = PostgresStore.from_url("postgresql://app@db/app", schema="idempo")
        store.migrate()

    or hand it a psycopg_pool pool of autocommit connections that you open and close yourself
    (``kwargs={"autocommit": True}``)::

        store = PostgresStore(pool, schema="idempo")

    ``migrate()`` creates the schema, table, index and claim function idempotently, and is safe
    to run from several processes at once. With ``auto_migrate=True`` (the default) the first
    operation of each store object runs it if the schema is missing or older than this code.
    In production, run ``migrate()`` explicitly at deploy time with a role that may create
    objects, and pass ``auto_migrate=False`` so that a missing or outdated schema is a loud
    StoreError instead of DDL at runtime. Once migrated, the application role needs only USAGE
    on the schema and SELECT, INSERT, UPDATE, DELETE on the table (EXECUTE on the claim
    function is granted to PUBLIC by default).

    ``timeout`` (seconds, default 5) bounds every round trip on the store's connections, on the
    client's clock: a server that does not answer within it (paused, partitioned, overloaded)
    gives StoreUnavailableError, and the connection is discarded, never reused mid-reply (see
    :mod:`idempo.stores._watchdog`). ``migrate()`` is bounded by ``MIGRATE_TIMEOUT`` (60 s) or
    ``timeout`` if longer. Statements of :meth:`bind` run on the caller's connection and are the
    caller's to bound: there a duplicate's claim legitimately waits for the first transaction.

    The table name must be at most 48 bytes (PostgreSQL truncates longer identifiers, which its
    index and function names are derived from).
    """

    def __init__(
        self,
        pool: ConnectionPool[Connection[TupleRow]],
        *,
        schema: str = "public",
        table: str = "idempo_records",
        auto_migrate: bool = True,
        owns_pool: bool = False,
        timeout: float = 5.0,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
        self._sql = statements(schema, table)
        self._timeout = float(timeout)
        self._schema_name = schema
        self._table_name = table
        self._pool = pool
        self._owns_pool = owns_pool
        self._auto_migrate = auto_migrate
        self._ready = False
        self._closed = False
        # Guards the lazy first-use step (open the pool, auto-migrate): a task waits for it
        # without blocking its event loop, a thread blocks.
        self._init_lock = Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        schema: str = "public",
        table: str = "idempo_records",
        min_size: int = 1,
        max_size: int = 10,
        auto_migrate: bool = True,
        timeout: float = 5.0,
        pool_timeout: float | None = None,
        **connect_kwargs: Any,
    ) -> PostgresStore:
        """A store with its own pool of ``min_size``..``max_size`` autocommit connections.

        ``timeout`` bounds each round trip (see the class). Callers beyond ``max_size`` queue
        for a connection for up to ``pool_timeout`` seconds (default: ``timeout``), then get
        StoreUnavailableError. ``connect_kwargs`` go to ``psycopg.connect`` (for example
        ``connect_timeout``, by default ``timeout`` rounded up to whole seconds, at least 2,
        unless the URL sets it; ``application_name``; or ``prepare_threshold=None`` behind a
        pgbouncer that cannot keep prepared statements). The pool opens on first use.
        """
        statements(schema, table)  # refuse bad names before a pool exists
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
        kwargs = dict(connect_kwargs)
        kwargs["autocommit"] = True
        if "connect_timeout" not in kwargs and "connect_timeout" not in conninfo_to_dict(url):
            # libpq waits forever by default: a black-holed server would stall the pool. It
            # counts whole seconds, and psycopg raises anything below 2 to 2.
            kwargs["connect_timeout"] = max(2, math.ceil(timeout))
        pool = ConnectionPool(
            url,
            kwargs=kwargs,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout if pool_timeout is None else pool_timeout,
            name=f"idempo:{schema}.{table}",
            # Opened on first use, in _ensure_ready: psycopg_pool deprecates opening in the
            # constructor, and an asyncio pool can only open inside a running event loop.
            open=False,
        )
        return cls(
            pool,
            schema=schema,
            table=table,
            auto_migrate=auto_migrate,
            owns_pool=True,
            timeout=timeout,
        )

    # -- lifecycle ------------------------------------------------------------------------

    def _open_pool(self) -> None:
        if self._closed:
            raise StoreError("this PostgreSQL store is closed")
        if self._owns_pool:
            with store_errors("open"):
                self._pool.open()  # a no-op once open

    def _ensure_ready(self) -> None:
        """Open the pool and auto-migrate, once per store object, before the first operation.

        Concurrent first callers must not race through it: the first takes the lock, the others
        wait for it (a one-time wait). If the first caller fails (server down), the next one
        tries again, so a store recovers with its server.
        """
        if self._closed:
            raise StoreError("this PostgreSQL store is closed")
        if self._ready:
            return
        with self._init_lock:
            if not self._ready:
                self._open_pool()
                if self._auto_migrate and not self._is_current():
                    self._migrate()
                self._ready = True

    def _is_current(self) -> bool:
        """Whether the table exists and the claim function is at SCHEMA_VERSION."""
        function = sql.Composed([self._sql.function, sql.SQL(CLAIM_ARGS)]).as_string(None)
        rows, _ = self._execute(
            "auto-migrate",
            sql.SQL(IS_CURRENT),
            (self._sql.table.as_string(None), function, marker()),
        )
        return bool(rows[0][0])

    def migrate(self) -> None:
        """Create or upgrade the schema, table, index and claim function (idempotent).

        One transaction under ``pg_advisory_xact_lock``: two processes migrating at once run one
        after the other (concurrent CREATE ... IF NOT EXISTS can otherwise fail on the catalog's
        unique indexes, and concurrent CREATE OR REPLACE FUNCTION with "tuple concurrently
        updated"), and a failed migration leaves nothing half-made.
        """
        self._open_pool()
        self._migrate()
        self._ready = True  # the pool is open and the schema current: skip the first-use check

    def _migrate(self) -> None:
        with store_errors("migrate"):
            with self._pool.connection() as conn:
                self._check_autocommit(conn)
                with self._watched(conn, "migrate", max(self._timeout, MIGRATE_TIMEOUT)) as watch:
                    try:
                        with conn.transaction():
                            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                            for statement in migration(self._sql):
                                conn.execute(statement)
                    finally:
                        if watch.fired:
                            conn.close()

    def close(self) -> None:
        """Close the pool if this store created it (from_url); a pool passed in stays open."""
        self._closed = True
        if self._owns_pool:
            self._pool.close()

    def bind(self, conn: Connection[Any]) -> BoundPostgresStore:
        """This store's operations on ``conn``, inside the caller's transaction.

        Transactional mode: every statement runs on ``conn`` and commits or rolls back with the
        caller's own writes; idempo never commits. A concurrent duplicate's claim waits on the
        row's unique key until this transaction ends, then sees the completed record (or, after
        a rollback, claims it afresh). ``conn`` must not be in autocommit mode and must use READ
        COMMITTED (PostgreSQL's default). The schema is migrated, if needed, through this
        store's own pool.
        """
        return BoundPostgresStore(self, conn)

    # -- one statement each -------------------------------------------------------------------

    @staticmethod
    def _check_autocommit(conn: Connection[TupleRow]) -> None:
        if not conn.autocommit:
            raise StoreError(
                "the PostgreSQL store needs autocommit connections "
                '(create the pool with kwargs={"autocommit": True})'
            )

    def _execute(
        self,
        operation: str,
        query: sql.SQL | sql.Composed | str,
        params: Sequence[Any] | Mapping[str, Any],
    ) -> tuple[list[TupleRow], int]:
        """Run one statement on a pooled connection: one round trip, its own transaction.

        Returns the rows (if any) and the row count.

        An operation's statement (a ``str``, see ``Statements``) is prepared on its first use
        on each connection, and that first use is sent in a pipeline: psycopg sends the named
        Parse first, and outside a pipeline that Parse would be a round trip of its own; in one
        it travels in the same flight, ending in one Sync. Every later use is sent plainly,
        since the prepared statement is only bound and executed: one flight without a
        pipeline, whose setup costs more CPU than the whole rest of the call's client side.
        Prepared statements save the server parsing and planning every call. A connection
        whose ``prepare_threshold`` is None (behind a pgbouncer that cannot keep prepared
        statements) never prepares: each statement is parsed every time, in one flight, with no
        pipeline either.
        Other statements (scan, stats, the migration probe) keep psycopg's own threshold and
        are always pipelined. Without libpq pipeline support (libpq < 14) statements are sent
        plainly, and a statement's preparation costs one extra round trip, once per
        connection.
        """
        with store_errors(operation):
            # getconn/putconn rather than pool.connection(): that one also enters the
            # connection's own context, whose exit commits (a no-op in autocommit, but not
            # free); putconn alone rolls back or discards whatever is left unfinished.
            conn = self._pool.getconn()
            try:
                self._check_autocommit(conn)
                # An operation's statement: results in binary (floats, bytea and smallints
                # cross without being printed by the server and parsed again here), and
                # prepared on first use, in a pipeline only then.
                text = isinstance(query, str)
                prepare: bool | None = None
                piped = _PIPELINE and not text
                first: tuple[str, str] | None = None  # (operation, text) on its first use here
                if isinstance(query, str) and conn.prepare_threshold is not None:
                    prepare = True
                    seen = _PREPARED.get(conn)
                    if seen is None:
                        seen = _PREPARED[conn] = set()
                    if (operation, query) not in seen:
                        first = (operation, query)
                        piped = _PIPELINE
                with self._watched(conn, operation, self._timeout) as watch:
                    try:
                        if piped:
                            with conn.pipeline():
                                cursor = conn.execute(
                                    query, params, prepare=prepare, binary=text
                                )
                        else:
                            cursor = conn.execute(query, params, prepare=prepare, binary=text)
                        # Not cursor.description: it builds a Column object per column.
                        result = cursor.pgresult
                        rows = (
                            cursor.fetchall()
                            if result is not None and result.status == ExecStatus.TUPLES_OK
                            else []
                        )
                    finally:
                        if watch.fired:
                            # Shut down mid-protocol: closed, so that the pool discards it.
                            conn.close()
                if first is not None:
                    # Only once it succeeded: psycopg keeps no statement whose Parse failed.
                    _PREPARED[conn].add(first)
                return rows, cursor.rowcount
            except BaseException:
                if _unsettled(conn):
                    conn.close()  # closed: the pool discards it
                raise
            finally:
                self._pool.putconn(conn)

    @staticmethod
    def _watched(
        conn: Connection[TupleRow], operation: str, timeout: float
    ) -> AbstractContextManager[Watch]:
        return WATCHDOG.guard(conn.fileno(), timeout, f"PostgreSQL store, during {operation}")

    def _run(
        self,
        operation: str,
        query: sql.SQL | sql.Composed | str,
        params: Sequence[Any] | Mapping[str, Any],
    ) -> list[TupleRow]:
        self._ensure_ready()
        rows, _ = self._execute(operation, query, params)
        return rows

    def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        # float(): the parameters' types are part of psycopg's key for a prepared statement;
        # an int would be sent as int2, int4 or int8 by its value, a statement each.
        rows = self._run(
            "claim", self._sql.claim, (scope, key, fingerprint, token, float(lease), float(ttl))
        )
        if len(rows) != 1:
            raise StoreError(f"the claim function returned {len(rows)} rows, not 1")
        status, takeover, now, *row = rows[0]
        known = _STATUSES.get(status)  # a dict: an enum call costs ten times more
        if known is None:
            raise StoreError(f"the claim function answered {status!r}")
        return ClaimResult(known, record(scope, key, row), now, takeover=bool(takeover))

    def _hold(self, operation: str, query: str, params: dict[str, Any]) -> float | None:
        rows = self._run(operation, query, params)
        held, lease_until, reason = rows[0]
        if not held:
            raise lease_lost(reason)
        return None if lease_until is None else float(lease_until)

    def complete(
        self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float
    ) -> None:
        params = {
            "scope": scope,
            "key": key,
            "token": token,
            "outcome": outcome,
            "ttl": float(ttl),
        }
        self._hold("complete", self._sql.complete, params)

    def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        params = {"scope": scope, "key": key, "token": token, "lease": float(lease)}
        until = self._hold("extend", self._sql.extend, {**params, "recovery_point": None})
        assert until is not None  # an in_progress record always has a lease
        return until

    def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        params = {
            "scope": scope,
            "key": key,
            "token": token,
            "lease": float(lease),
            "recovery_point": recovery_point,
        }
        until = self._hold("set_recovery_point", self._sql.extend, params)
        assert until is not None
        return until

    def release(self, scope: str, key: str, token: str) -> bool:
        rows = self._run("release", self._sql.release, (scope, key, token))
        return bool(rows)

    def get(self, scope: str, key: str) -> Record | None:
        rows = self._run("get", self._sql.get, (scope, key))
        return record(scope, key, rows[0]) if rows else None

    def delete(self, scope: str, key: str) -> bool:
        rows = self._run("delete", self._sql.delete, (scope, key))
        return bool(rows and rows[0][0])

    def purge_expired(self, limit: int = 1000) -> int:
        if limit <= 0:
            return 0
        self._ensure_ready()
        _, count = self._execute("purge_expired", self._sql.purge, (limit,))
        return max(count, 0)

    def scan(
        self,
        *,
        state: State | None = None,
        scope: str | None = None,
        older_than: float = 0.0,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        state = _scan.check(state, limit, older_than)
        after = _scan.decode(cursor)
        if scope is not None:
            after = (scope, after[1] if after[0] == scope else "")
        query = scan_statement(self._sql, None if state is None else state.value, scope is not None)
        rows = self._run("scan", query, {"scope": after[0], "key": after[1], "limit": limit})
        window = [row[1:] for row in rows if row[1] is not None]
        return _scan.page(rows[0][0], window, state=state, older_than=older_than, limit=limit)

    def stats(self) -> Stats:
        rows = self._run("stats", stats_statement(self._sql), ())
        return _scan.stats_row(rows[0])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schema={self._schema_name!r}, table={self._table_name!r})"


class BoundPostgresStore(PostgresStore):
    """An :class:`PostgresStore` whose statements run on the caller's connection, in the
    caller's transaction (see :meth:`PostgresStore.bind`)."""

    def __init__(self, parent: PostgresStore, conn: Connection[Any]) -> None:
        super().__init__(
            parent._pool,
            schema=parent._schema_name,
            table=parent._table_name,
            auto_migrate=parent._auto_migrate,
            owns_pool=False,
            timeout=parent._timeout,
        )
        self._parent = parent
        self._conn = conn

    def _ensure_ready(self) -> None:
        self._parent._ensure_ready()  # migrations go through the parent's own pool

    def _execute(
        self,
        operation: str,
        query: sql.SQL | sql.Composed | str,
        params: Sequence[Any] | Mapping[str, Any],
    ) -> tuple[list[TupleRow], int]:
        if (
            self._conn.autocommit
            and self._conn.info.transaction_status != TransactionStatus.INTRANS
        ):
            raise StoreError(
                "transactional mode needs a connection in a transaction: autocommit off, or "
                "inside `with conn.transaction():`"
            )
        with store_errors(operation):
            # A plain tuple cursor, whatever row factory the caller's connection defaults to.
            cursor = self._conn.cursor(row_factory=tuple_row)
            cursor.execute(query, params)
            rows = cursor.fetchall() if cursor.description is not None else []
            return rows, cursor.rowcount

    def close(self) -> None:
        """The connection is the caller's: nothing to close."""

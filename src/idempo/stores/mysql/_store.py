"""The MariaDB store: one ``CALL`` or statement per operation, on a pool of its own."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pymysql  # type: ignore[import-untyped]

from idempo.core.records import ClaimResult, ClaimStatus, Record, State
from idempo.errors import StoreError, StoreUnavailableError
from idempo.stores import _scan
from idempo.stores._rows import lease_lost, record
from idempo.stores._threaded import SyncStoreAsAsync
from idempo.stores.base import Page, Stats
from idempo.stores.mysql import _pool
from idempo.stores.mysql._bound import BoundMySQLStore
from idempo.stores.mysql._errors import session_intact, store_errors
from idempo.stores.mysql._pool import Conn, Pool, end_transaction
from idempo.stores.mysql._sql import (
    IS_CURRENT,
    SESSION,
    marker,
    scan_statement,
    statements,
    stats_statement,
)

__all__ = ["AsyncMySQLStore", "MySQLStore"]


# Connection settings the store depends on: they cannot be overridden.
_RESERVED = frozenset({"autocommit", "init_command", "sql_mode"})
# The bound on migrate() beyond its lock wait, whatever ``timeout`` is: DDL may wait for locks.
MIGRATE_TIMEOUT = 60.0


class MySQLStore:
    """A :class:`~idempo.stores.base.Store` in a MariaDB table.

    Build it from a URL (``MySQLStore.from_url("mysql://app:secret@db:3306/app")``) or from
    PyMySQL connection arguments (``MySQLStore(host="db", user="app", database="app")``);
    ``connect_kwargs`` go to ``pymysql.connect`` (``ssl``, ``unix_socket`` and so on as you need
    them). The store owns a pool of at most ``max_size`` autocommit connections, opened on
    demand; callers beyond it wait up to ``pool_timeout`` seconds (default: ``timeout``), then
    get StoreUnavailableError.

    ``timeout`` (seconds, default 5) bounds every round trip: it is PyMySQL's
    ``connect_timeout``, ``read_timeout`` and ``write_timeout`` unless you set those yourself. A
    server that does not answer within it (paused, partitioned, overloaded) gives
    StoreUnavailableError, and the connection is discarded, never reused mid-reply. ``migrate()``
    waits up to ``migrate_lock_timeout`` for another migration, then up to ``MIGRATE_TIMEOUT``
    (60 s) or ``timeout`` if longer for its DDL, on a connection of its own.

    ``migrate()`` creates the table and its three procedures idempotently, and is safe to run
    from several processes at once. With ``auto_migrate=True`` (the default) the first
    operation of each store object runs it if the schema is missing or older than this code. In
    production run ``migrate()`` at deploy time with a user that may create tables and routines,
    and pass ``auto_migrate=False``: a missing schema is then a loud StoreError instead of DDL
    at runtime. Once migrated, the application user needs only SELECT, INSERT, UPDATE, DELETE on
    the table and EXECUTE on the procedures (``GRANT EXECUTE ON PROCEDURE db.<table>_claim``,
    ``_hold``, ``_purge``).
    """

    def __init__(
        self,
        *,
        table: str = "idempo_records",
        max_size: int = 10,
        timeout: float = 5.0,
        pool_timeout: float | None = None,
        max_idle: float = 300.0,
        auto_migrate: bool = True,
        migrate_lock_timeout: float = 10.0,
        **connect_kwargs: Any,
    ) -> None:
        self._sql = statements(table)
        reserved = _RESERVED & connect_kwargs.keys()
        if reserved:
            raise TypeError(f"the MariaDB store sets {', '.join(sorted(reserved))} itself")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout!r}")
        self._timeout = float(timeout)
        # PyMySQL's defaults wait forever for a reply: a stalled server would hang the caller.
        bounds = dict.fromkeys(("connect_timeout", "read_timeout", "write_timeout"), timeout)
        kwargs = {"charset": "utf8mb4", **bounds, **connect_kwargs}
        kwargs.update(autocommit=True, init_command=SESSION)
        self._connect_kwargs = kwargs
        self._pool = Pool(
            self._connect,
            max_size=max_size,
            timeout=timeout if pool_timeout is None else pool_timeout,
            max_idle=max_idle,
        )
        self._auto_migrate = auto_migrate
        self._migrate_lock_timeout = migrate_lock_timeout
        self._ready = False
        self._closed = False
        self._init_lock = threading.Lock()  # the first-use auto-migration, once per store

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MySQLStore:
        """A store for ``mysql://user:password@host:port/database``.

        User and password are percent-decoded. Options are keyword arguments (they override the
        URL's parts too); :func:`~idempo.stores.open_store` also reads them from the URL's query.
        """
        return cls(**{**_pool.connect_kwargs(url), **options})

    def _connect(self) -> Conn:
        return pymysql.connect(**self._connect_kwargs)

    # -- lifecycle ----------------------------------------------------------------------------

    def _ensure_ready(self) -> None:
        """Auto-migrate, once per store object, before its first operation.

        Concurrent first callers wait for the first. If it fails (server down), the next caller
        tries again, so a store recovers with its server.
        """
        if self._closed:
            raise StoreError("this MariaDB store is closed")
        if self._ready:
            return
        with self._init_lock:
            if not self._ready:
                if self._auto_migrate and not self._is_current():
                    self._migrate()
                self._ready = True

    def _is_current(self) -> bool:
        rows, _ = self._execute(
            "auto-migrate", IS_CURRENT, (self._sql.table, *self._sql.names, marker())
        )
        return int(rows[0][0]) == 1 + len(self._sql.names)

    def migrate(self) -> None:
        """Create or upgrade the table and its procedures (idempotent).

        Under a server-wide user-level lock (GET_LOCK), so that processes migrating at once run
        one after the other: concurrent CREATE OR REPLACE PROCEDURE of one routine can fail on
        the routine table. DDL in MariaDB commits implicitly, statement by statement; every
        statement is idempotent, so a migration interrupted halfway is finished by the next.
        """
        if self._closed:
            raise StoreError("this MariaDB store is closed")
        self._migrate()
        self._ready = True

    @contextlib.contextmanager
    def _migration_connection(self) -> Iterator[Conn]:
        """A connection of its own, whose reads may wait for the lock and the DDL: the pool's
        give up after ``timeout``."""
        patience = self._migrate_lock_timeout + max(self._timeout, MIGRATE_TIMEOUT)
        try:
            conn = pymysql.connect(**{**self._connect_kwargs, "read_timeout": patience})
        except pymysql.err.MySQLError as exc:
            raise StoreUnavailableError(f"cannot connect to the MariaDB store: {exc}") from exc
        try:
            yield conn
        finally:
            _pool.close_quietly(conn)

    def _migrate(self) -> None:
        with store_errors("migrate"), self._migration_connection() as conn:
            cursor = conn.cursor()
            cursor.execute("SELECT GET_LOCK(%s, %s)", (self._sql.lock, self._migrate_lock_timeout))
            (locked,) = cursor.fetchone()
            if locked != 1:
                raise StoreUnavailableError(
                    f"another process has been migrating {self._sql.table!r} for"
                    f" {self._migrate_lock_timeout:g} s (lock {self._sql.lock!r})"
                )
            done = False
            try:
                for statement in self._sql.migration:
                    cursor.execute(statement)
                done = True
            finally:
                if done:
                    cursor.execute("DO RELEASE_LOCK(%s)", (self._sql.lock,))
                else:
                    # The error propagating matters more; a broken connection is discarded,
                    # and the server releases the lock with its session.
                    with contextlib.suppress(Exception):
                        cursor.execute("DO RELEASE_LOCK(%s)", (self._sql.lock,))

    def close(self) -> None:
        """Close the pool's connections (those in use when they come back)."""
        self._closed = True
        self._pool.close()

    # -- one statement each -------------------------------------------------------------------

    def _execute(
        self, operation: str, query: str, params: Sequence[Any]
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement on a pooled connection: one request, one reply, its own
        transaction. Returns the rows of the first result set (if any) and the row count."""
        with store_errors(operation), self._pool.connection() as conn:
            cursor = conn.cursor()
            try:
                count = cursor.execute(query, params)
                rows = list(cursor.fetchall()) if cursor.description is not None else []
                # A CALL's reply holds its result set, then the CALL's own status: read the
                # rest of the reply (already received, no new request) so the connection is
                # clean for its next user.
                while cursor.nextset():
                    pass
            except pymysql.err.MySQLError as exc:
                if query.startswith("CALL") and session_intact(exc):
                    end_transaction(conn)
                raise
            return rows, int(count)

    def _run(self, operation: str, query: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self._ensure_ready()
        rows, _ = self._execute(operation, query, params)
        return rows

    def claim(
        self, scope: str, key: str, fingerprint: str, token: str, *, lease: float, ttl: float
    ) -> ClaimResult:
        rows = self._run(
            "claim", self._sql.claim, (scope, key, fingerprint, token, float(lease), float(ttl))
        )
        if len(rows) != 1:
            raise StoreError(f"the claim procedure returned {len(rows)} rows, not 1")
        status, takeover, now, *row = rows[0]
        return ClaimResult(
            ClaimStatus(status), record(scope, key, row), float(now), takeover=bool(takeover)
        )

    def _hold(self, operation: str, query: str, params: Sequence[Any]) -> float | None:
        rows = self._run(operation, query, params)
        if len(rows) != 1:
            raise StoreError(f"the hold procedure returned {len(rows)} rows, not 1")
        result, lease_until = rows[0]
        if result != "held":
            raise lease_lost(result)
        return None if lease_until is None else float(lease_until)

    def complete(self, scope: str, key: str, token: str, outcome: bytes, *, ttl: float) -> None:
        self._hold("complete", self._sql.complete, (scope, key, token, bytes(outcome), float(ttl)))

    def extend(self, scope: str, key: str, token: str, *, lease: float) -> float:
        until = self._hold("extend", self._sql.extend, (scope, key, token, float(lease), None))
        assert until is not None  # an in_progress record always has a lease
        return until

    def set_recovery_point(
        self, scope: str, key: str, token: str, recovery_point: bytes, *, lease: float
    ) -> float:
        until = self._hold(
            "set_recovery_point",
            self._sql.extend,
            (scope, key, token, float(lease), bytes(recovery_point)),
        )
        assert until is not None
        return until

    def release(self, scope: str, key: str, token: str) -> bool:
        self._ensure_ready()
        _, count = self._execute("release", self._sql.release, (scope, key, token))
        return count > 0

    def get(self, scope: str, key: str) -> Record | None:
        rows = self._run("get", self._sql.get, (scope, key))
        return record(scope, key, rows[0]) if rows else None

    def delete(self, scope: str, key: str) -> bool:
        rows = self._run("delete", self._sql.delete, (scope, key))
        return bool(rows and rows[0][0])

    def purge_expired(self, limit: int = 1000) -> int:
        if limit <= 0:
            return 0
        rows = self._run("purge_expired", self._sql.purge, (min(int(limit), 2**32 - 1),))
        return int(rows[0][0]) if rows else 0

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
        after_scope, after_key = _scan.decode(cursor)
        if scope is not None:
            params: tuple[Any, ...] = (scope, after_key if after_scope == scope else "", limit)
        else:
            params = (after_scope, after_scope, after_key, limit)
        query = scan_statement(
            self._sql.table, None if state is None else state.value, scope is not None
        )
        rows = self._run("scan", query, params)
        window = [row[1:] for row in rows if row[1] is not None]
        return _scan.page(
            float(rows[0][0]), window, state=state, older_than=older_than, limit=limit
        )

    def stats(self) -> Stats:
        return _scan.stats_row(self._run("stats", stats_statement(self._sql.table), ())[0])

    def bind(self, conn: Any) -> BoundMySQLStore:
        """This store's operations on ``conn`` (a PyMySQL connection, not autocommit), inside
        the caller's transaction: transactional mode. The caller commits; idempo never does."""
        return BoundMySQLStore(self, conn)

    def __repr__(self) -> str:
        host = self._connect_kwargs.get("host", "localhost")
        database = self._connect_kwargs.get("database")
        table = self._sql.table
        return f"{type(self).__name__}(host={host!r}, database={database!r}, table={table!r})"


class AsyncMySQLStore(SyncStoreAsAsync):
    """The MariaDB store, awaited: each operation runs :class:`MySQLStore` in a worker thread
    (see :mod:`idempo.stores.mysql` for why threads and not an async driver)."""

    sync_store: MySQLStore

    def __init__(self, store: MySQLStore) -> None:
        super().__init__(store, offload=True)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AsyncMySQLStore:
        return cls(MySQLStore.from_url(url, **options))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.sync_store!r})"

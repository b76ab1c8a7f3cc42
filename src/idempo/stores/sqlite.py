"""The embedded SQLite store: one database file (or a private in-memory database), no server.

Safe across the threads and processes of one host. Every operation is one ``BEGIN IMMEDIATE``
transaction: the write lock is taken before the record is read, so two claimers can never both
see it absent. The file runs in WAL mode (readers never wait for the writer) and waiting for the
lock is bounded by ``timeout``; past it the operation raises
:class:`~idempo.errors.StoreUnavailableError` and has written nothing. Not for network file
systems: their locks are unreliable and WAL needs memory shared between the processes.

Durability: with WAL, ``synchronous="NORMAL"`` (the default) survives the crash of any process,
but a power loss or OS crash may lose the last committed transactions (the file stays intact).
A record lost that way lets one retry execute again; ``synchronous="FULL"`` syncs every commit
to disk instead, at the cost of an fsync per operation.

Time is SQLite's clock (``julianday('now')``), read once per transaction, never Python's.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from idempo.core.records import Record, State
from idempo.errors import IdempoError, StoreError, StoreUnavailableError
from idempo.stores import _rows as rows
from idempo.stores import _scan
from idempo.stores._rows import RECORD_FORMAT
from idempo.stores._threaded import SyncStoreAsAsync
from idempo.stores._transitional import TransitionalStore
from idempo.stores._url import UrlOptions, boolean, choice, number, text
from idempo.stores.base import Page, Stats

__all__ = [
    "RECORD_FORMAT",
    "URL_OPTIONS",
    "SCHEMA_VERSION",
    "AsyncSQLiteStore",
    "SQLiteStore",
    "open_async",
    "open_pair",
    "open_sync",
]

# The version of the table layout (kept in the idempo_schema table). Each row also carries the
# record format it was written in (column format_version, idempo.stores._rows.RECORD_FORMAT).
# 2: the partial index of in-progress records that scan() and stats() read.
SCHEMA_VERSION = 2

# Schema versions live in a table of their own, not in PRAGMA user_version: the database may be
# the application's, whose own migrations may use user_version.
_META = "idempo_schema"
# Epoch seconds from SQLite's clock (millisecond resolution). 'now' is fixed within a statement.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")
# What sqlite:///path.db?... may carry (see idempo.stores._url).
URL_OPTIONS = UrlOptions(
    {
        "timeout": number,
        "table": text,
        "synchronous": choice(*_SYNCHRONOUS),
        "auto_migrate": boolean,
    }
)
# Primary result codes that mean "the data cannot be reached", not "the data is wrong".
_UNAVAILABLE = {
    sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_CANTOPEN,
}
# idempo.stores._rows.COLUMNS, in its order; this table names the format column format_version.
_COLUMNS = (
    "fingerprint, state, token, lease_until, outcome, recovery_point, created_at, expires_at,"
    " format_version"
)


# scan(state="in_progress") and stats() walk only the records in flight, which are few next to
# the completed ones kept for replay. Partial: a completed record leaves the index, so claims
# and completions pay for it only while a record is in progress. (SCHEMA_VERSION 2.)
_IN_PROGRESS_INDEX = (
    "CREATE INDEX IF NOT EXISTS {index} ON {table} (scope, \"key\") WHERE state = 'in_progress'"
)
# scan's columns, in the order idempo.stores._scan.page reads them.
_SCAN_COLUMNS = (
    'scope, "key", fingerprint, state, lease_until, recovery_point, created_at, expires_at,'
    " format_version"
)


class _Held:
    """One thread's connection. The thread's locals drop it when the thread ends, and a
    finalizer then closes the connection, so short-lived threads do not pile connections up."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.pid = os.getpid()


def _forget(
    conns: dict[sqlite3.Connection, int], lock: threading.Lock, conn: sqlite3.Connection, pid: int
) -> None:
    # Module-level, holding no reference to the store (nor the holder): a finalizer must not
    # keep alive what it waits for.
    with lock:
        conns.pop(conn, None)
    _close(conn, pid)


def _close(conn: sqlite3.Connection, pid: int) -> None:
    # A connection inherited through fork() is abandoned, never closed: closing it in the child
    # could checkpoint or delete the WAL under the parent, which still uses it.
    if pid == os.getpid():
        with contextlib.suppress(sqlite3.Error):
            conn.close()


class SQLiteStore(TransitionalStore[sqlite3.Connection]):
    """A :class:`~idempo.stores.base.Store` in a SQLite database.

    ``path`` is a file (created if missing; its directory must exist) or ``":memory:"`` for a
    private in-memory database shared by this store's threads and gone when it is closed.
    ``table`` names the records table. ``timeout`` (seconds, default 5) bounds the wait for
    another connection's write lock (``busy_timeout``, its older name, is accepted too; give one
    of the two). ``synchronous`` is ``"NORMAL"``, ``"FULL"`` or ``"EXTRA"`` (see the
    module docstring). ``auto_migrate`` creates the schema on first use; without it call
    :meth:`migrate` once (a deployment step).

    Each thread uses a connection of its own, opened on its first operation. :meth:`close`
    closes all of them; call it once no operation is running.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] = ":memory:",
        *,
        table: str = "idempo_records",
        timeout: float | None = None,
        synchronous: str = "NORMAL",
        auto_migrate: bool = True,
        busy_timeout: float | None = None,
    ) -> None:
        if timeout is not None and busy_timeout is not None:
            raise TypeError("give timeout= or its older name busy_timeout=, not both")
        if timeout is None:
            timeout = 5.0 if busy_timeout is None else busy_timeout
        if not _IDENTIFIER.fullmatch(table) or table.lower().startswith(("sqlite_", _META)):
            raise ValueError(f"table must be a plain identifier (letters, digits, _): {table!r}")
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        if timeout < 0:
            raise ValueError("timeout must be >= 0 seconds")
        self.path = os.fspath(path)
        self.table = table
        self._memory = self.path == ":memory:"
        self._busy_timeout = float(timeout)
        self._synchronous = synchronous.upper()
        self._auto_migrate = auto_migrate
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _conns and _closed
        self._migrate_lock = threading.Lock()
        self._conns: dict[sqlite3.Connection, int] = {}  # every open connection -> its pid
        self._closed = False
        self._ready = False  # schema migrated (or checked) once
        self._keeper: sqlite3.Connection | None = None
        self._turns: threading.Lock | None = None
        self._bound: sqlite3.Connection | None = None  # the caller's connection (bind())
        if self._memory:
            # A named shared-cache database is visible to every connection of this process that
            # names it, and lives while one is open: the keeper holds it until close().
            self._target = f"file:idempo-{uuid.uuid4().hex}?mode=memory&cache=shared"
            self._keeper = sqlite3.connect(self._target, uri=True, check_same_thread=False)
            # Shared-cache connections get SQLITE_LOCKED at once instead of waiting in the busy
            # handler, so operations on it take turns on a lock (one process: a lock suffices).
            self._turns = threading.Lock()
        else:
            self._target = self.path

        t = f'"{table}"'
        self._sql_load = (
            f"SELECT clock.now, {', '.join('r.' + c.strip() for c in _COLUMNS.split(','))}"
            f" FROM (SELECT {_NOW} AS now) AS clock LEFT JOIN {t} AS r"
            ' ON r.scope = ? AND r."key" = ?'
        )
        self._sql_save = (
            f'INSERT OR REPLACE INTO {t} (scope, "key", {_COLUMNS})'
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._sql_release = f'DELETE FROM {t} WHERE scope = ? AND "key" = ?'
        self._sql_delete = f'DELETE FROM {t} WHERE scope = ? AND "key" = ? AND expires_at > {_NOW}'
        self._sql_purge = (
            f"DELETE FROM {t} WHERE rowid IN"
            f" (SELECT rowid FROM {t} WHERE expires_at <= {_NOW} LIMIT ?)"
        )
        self._ddl = (
            f"CREATE TABLE IF NOT EXISTS {t} ("
            ' scope TEXT NOT NULL, "key" TEXT NOT NULL, fingerprint TEXT NOT NULL,'
            " state TEXT NOT NULL, token TEXT, lease_until REAL, outcome BLOB,"
            " recovery_point BLOB, created_at REAL NOT NULL, expires_at REAL NOT NULL,"
            ' format_version INTEGER NOT NULL, PRIMARY KEY (scope, "key"))',
            f'CREATE INDEX IF NOT EXISTS "{table}_expires_at" ON {t} (expires_at)',
            _IN_PROGRESS_INDEX.format(index=f'"{table}_in_progress"', table=t),
        )

    # -- the contract (the rest is TransitionalStore's, over the hooks below) -------------------

    def delete(self, scope: str, key: str) -> bool:
        # An expired record counts as absent: it is left for purge_expired and reported False.
        with self._session() as conn:
            return conn.execute(self._sql_delete, (scope, key)).rowcount > 0

    def purge_expired(self, limit: int = 1000) -> int:
        if limit < 0:
            raise ValueError("limit must be >= 0")  # SQLite reads a negative LIMIT as "no limit"
        with self._session() as conn:
            return conn.execute(self._sql_purge, (limit,)).rowcount

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
        params = (scope, after[1] if after[0] == scope else "") if scope is not None else after
        with self._session() as conn:
            c = conn.cursor()
            c.row_factory = None  # plain tuples, whatever the (caller's) connection's factory
            found = c.execute(self._scan_sql(state, scope is not None), (*params, limit)).fetchall()
        now = float(found[0][0])
        window = [row[1:] for row in found if row[1] is not None]
        return _scan.page(
            now, window, state=state, older_than=older_than, limit=limit, where=self._where()
        )

    def _scan_sql(self, state: State | None, scoped: bool) -> str:
        """One page: the store's clock, LEFT JOINed to at most ``limit`` rows after the cursor
        in (scope, key) order (the primary key; for in-progress records the partial index),
        so that an empty page still tells the time. Expiry and age are judged in Python, on
        the rows examined, so that a page's work is bounded however few of them match."""
        t = f'"{self.table}"'
        where = 'scope = ? AND "key" > ?' if scoped else '(scope, "key") > (?, ?)'
        if state is not None:
            where += f" AND state = '{state.value}'"  # a literal: the partial index needs it
        return (
            f"SELECT c.now, w.* FROM (SELECT {_NOW} AS now) AS c LEFT JOIN"
            f" (SELECT {_SCAN_COLUMNS} FROM {t} WHERE {where}"
            ' ORDER BY scope, "key" LIMIT ?) AS w ON 1'
            ' ORDER BY w.scope, w."key"'
        )

    def stats(self) -> Stats:
        t = f'"{self.table}"'
        live = "expires_at > c.now"
        flight = f"FROM {t} WHERE state = 'in_progress' AND {live}"
        query = (
            f"SELECT (SELECT count(*) {flight}),"
            f" (SELECT count(*) FROM {t} WHERE state = 'completed' AND {live}),"
            f" (SELECT count(*) FROM {t} WHERE expires_at <= c.now),"
            f" (SELECT count(*) {flight} AND lease_until <= c.now),"
            f" (SELECT min(created_at) {flight}),"
            f" c.now FROM (SELECT {_NOW} AS now) AS c"
        )
        with self._session() as conn:
            c = conn.cursor()
            c.row_factory = None
            return _scan.stats_row(c.execute(query).fetchone())

    def migrate(self) -> None:
        """Create the table and its index if missing (idempotent, safe to run concurrently);
        refuse a database written by a newer idempo."""
        with self._session(prepare=False) as conn, self._migrate_lock:
            self._prepare(conn, force=True)

    def close(self) -> None:
        """Close every thread's connection (an in-memory database is gone afterwards)."""
        with self._lock:
            self._closed = True
            conns = list(self._conns.items())
            self._conns.clear()
            keeper, self._keeper = self._keeper, None
        for conn, pid in conns:
            _close(conn, pid)
        if keeper is not None:  # last: the in-memory database lives while a connection does
            keeper.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r}, table={self.table!r})"

    def bind(self, conn: sqlite3.Connection) -> SQLiteStore:
        """This store's operations on ``conn``, inside the caller's transaction.

        Transactional mode: the record is written with the caller's own writes and commits or
        rolls back with them; idempo never commits. If ``conn`` has no transaction open, the
        first operation opens one with ``BEGIN IMMEDIATE`` (the write lock up front, so that a
        concurrent duplicate waits for this transaction instead of racing it) and the caller
        commits it. Open your own with ``BEGIN IMMEDIATE`` too: a deferred transaction that
        has already read may fail with "database is locked" when it first writes.
        ``conn`` must be a connection to the same database file as this store.
        """
        if self._auto_migrate and not self._ready:
            if conn.in_transaction:
                # The caller may already hold the write lock, which our own connection would
                # wait for until the timeout: create the schema in the caller's transaction
                # instead (it commits with it; _ready stays unset, so the next bind checks again).
                try:
                    if self._check_version(conn) < SCHEMA_VERSION:
                        self._create_schema(conn)
                except sqlite3.Error as exc:
                    raise self._translate(exc) from exc
            else:
                with self._session():  # migrate through our own connection
                    pass
        bound = copy.copy(self)
        bound._bound = conn
        return bound

    # -- transactions and connections -----------------------------------------------------------

    @contextlib.contextmanager
    def _session(self, *, prepare: bool = True) -> Iterator[sqlite3.Connection]:
        """This thread's connection (or the caller's, when bound). The one place where sqlite3
        errors become idempo's."""
        try:
            if self._bound is not None:
                yield self._bound
                return
            with self._turn():
                yield self._connection(prepare=prepare)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        if self._bound is not None:
            # The caller's transaction: open it if needed, never commit or roll it back.
            with self._session() as conn:
                if not conn.in_transaction:
                    conn.execute("BEGIN IMMEDIATE")
                yield conn
            return
        with self._session() as conn, _immediate(conn):
            yield conn

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        if self._turns is None:
            yield
            return
        if not self._turns.acquire(timeout=self._busy_timeout):
            raise StoreUnavailableError(
                f"the in-memory SQLite store stayed busy longer than"
                f" timeout={self._busy_timeout:g}s"
            )
        try:
            yield
        finally:
            self._turns.release()

    def _connection(self, *, prepare: bool) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailableError(f"{self!r} is closed")
        held: _Held | None = getattr(self._local, "held", None)
        if held is None or held.pid != os.getpid():  # a forked child opens its own
            held = self._local.held = self._open()
        if prepare and not self._ready:
            with self._migrate_lock:
                if not self._ready:
                    self._prepare(held.conn)
        return held.conn

    def _prepare(self, conn: sqlite3.Connection, *, force: bool = False) -> None:
        """Before the store's first operation (or by migrate(), forced): WAL mode, the schema."""
        if not self._memory:
            self._enable_wal(conn)
        # Read first: an up-to-date schema needs no write lock on first use (readers start while
        # a writer holds it, and processes starting together do not queue for it).
        version = self._check_version(conn)  # refuses a newer schema
        if force or (self._auto_migrate and version < SCHEMA_VERSION):
            self._migrate(conn)
        self._ready = True

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        # The mode is stored in the file, so once is enough. Switching needs an exclusive lock
        # and SQLite reports "locked" at once, without its busy handler, while another
        # connection (another process opening the same new file) reads: retry until the
        # timeout.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.005)

    def _open(self) -> _Held:
        # isolation_level=None: autocommit, so that the module never opens transactions behind
        # our back and BEGIN IMMEDIATE is ours. check_same_thread=False only so that close() may
        # close every thread's connection: otherwise each is used by its own thread alone.
        conn = sqlite3.connect(
            self._target,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            uri=self._memory,
        )
        try:
            if not self._memory:
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")  # per connection
            with self._lock:
                if self._closed:
                    raise StoreUnavailableError(f"{self!r} is closed")
                self._conns[conn] = os.getpid()
        except BaseException:
            conn.close()
            raise
        held = _Held(conn)
        weakref.finalize(held, _forget, self._conns, self._lock, conn, held.pid)
        return held

    def _migrate(self, conn: sqlite3.Connection) -> None:
        with _immediate(conn):
            self._create_schema(conn)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        """The DDL, in the transaction ``conn`` has open (SQLite's DDL is transactional)."""
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_META}"
            " (table_name TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )
        self._check_version(conn)
        for statement in self._ddl:
            conn.execute(statement)
        conn.execute(
            f"INSERT OR REPLACE INTO {_META} (table_name, version) VALUES (?, ?)",
            (self.table, SCHEMA_VERSION),
        )

    def _check_version(self, conn: sqlite3.Connection) -> int:
        """The table's schema version (0: none recorded); StoreError if newer than ours."""
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (_META,)).fetchone():
            return 0
        row = conn.execute(
            f"SELECT version FROM {_META} WHERE table_name = ?", (self.table,)
        ).fetchone()
        version = 0 if row is None else int(row[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"table {self.table!r} in {self._where()} has schema version {version}, newer"
                f" than this idempo understands ({SCHEMA_VERSION}): upgrade idempo"
            )
        return version

    # -- the hooks of TransitionalStore: a transaction, one SELECT, one write ---------------------

    def _atomic(self, operation: str, *, write: bool) -> AbstractContextManager[sqlite3.Connection]:
        # One SELECT is a consistent snapshot on its own: a read takes no write lock.
        return self._transaction() if write else self._session()

    def _load(
        self, h: sqlite3.Connection, operation: str, scope: str, key: str, *, lock: bool
    ) -> tuple[float, Record | None]:
        """The store's clock and the (scope, key) row, read by one statement (the transaction
        holds the write lock already)."""
        cursor = h.cursor()
        cursor.row_factory = None  # plain tuples, whatever the (caller's) connection's factory
        now, *row = cursor.execute(self._sql_load, (scope, key)).fetchone()
        if row[0] is None:  # fingerprint is NOT NULL: no row joined
            return float(now), None
        return float(now), rows.record(scope, key, row, where=self._where())

    def _save(self, h: sqlite3.Connection, operation: str, record: Record, *, insert: bool) -> None:
        h.execute(self._sql_save, (record.scope, record.key, *rows.values(record)))

    def _remove(self, h: sqlite3.Connection, operation: str, scope: str, key: str) -> None:
        h.execute(self._sql_release, (scope, key))

    # -- errors -----------------------------------------------------------------------------------

    def _where(self) -> str:
        return "a private in-memory database" if self._memory else f"SQLite file {self.path!r}"

    def _translate(self, exc: sqlite3.Error) -> IdempoError:
        code = getattr(exc, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None
        message = str(exc)
        if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in message:
            return StoreUnavailableError(
                f"{self._where()} stayed locked longer than timeout={self._busy_timeout:g}s"
                f" (another connection holds a long write transaction): {message}"
            )
        if primary in _UNAVAILABLE or "unable to open" in message:
            return StoreUnavailableError(f"cannot use {self._where()}: {message}")
        if "no such table" in message:
            return StoreError(
                f"{self._where()} has no idempo table {self.table!r}: call migrate() or open the"
                f" store with auto_migrate=True ({message})"
            )
        return StoreError(f"{self._where()}: {message}")


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, its lock taken up front (waiting up to the timeout for it)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # Also after a failed COMMIT (busy in rollback-journal mode): nothing stays half-written.
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


class AsyncSQLiteStore(SyncStoreAsAsync):
    """The SQLite store, awaited: each operation runs in a worker thread, as it may wait for the
    database lock, and uses that thread's connection."""

    sync_store: SQLiteStore

    def __init__(
        self, store: SQLiteStore | str | os.PathLike[str] = ":memory:", **options: Any
    ) -> None:
        if not isinstance(store, SQLiteStore):
            store = SQLiteStore(store, **options)
        elif options:
            raise TypeError("options apply only when AsyncSQLiteStore opens a path itself")
        super().__init__(store, offload=True)


def _path(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if scheme.lower() != "sqlite" or not sep:
        raise ValueError(f"not a sqlite:// URL: {url!r}")
    if rest in (":memory:", "/:memory:"):
        return ":memory:"
    if not rest.startswith("/") or rest == "/":
        raise ValueError(
            f"bad SQLite URL {url!r}: use sqlite:///relative/path.db,"
            " sqlite:////absolute/path.db or sqlite://:memory:"
        )
    return rest[1:]


def open_sync(url: str, **options: Any) -> SQLiteStore:
    """``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite://:memory:``."""
    return SQLiteStore(_path(url), **options)


def open_async(url: str, **options: Any) -> AsyncSQLiteStore:
    return AsyncSQLiteStore(SQLiteStore(_path(url), **options))


def open_pair(url: str, **options: Any) -> tuple[SQLiteStore, AsyncSQLiteStore]:
    """Both kinds over one :class:`SQLiteStore` (for ``sqlite://:memory:``: one database)."""
    store = SQLiteStore(_path(url), **options)
    return store, AsyncSQLiteStore(store)

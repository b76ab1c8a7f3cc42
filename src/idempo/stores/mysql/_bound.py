"""The MariaDB store in transactional mode: plain statements in the caller's transaction."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import pymysql  # type: ignore[import-untyped]
import pymysql.cursors  # type: ignore[import-untyped]
from pymysql.constants import CLIENT  # type: ignore[import-untyped]

from idempo.core.records import Record, State
from idempo.errors import StoreError
from idempo.stores import _rows as rows
from idempo.stores._transitional import RowConflict, TransitionalStore
from idempo.stores.base import Page, Stats
from idempo.stores.mysql._errors import store_errors
from idempo.stores.mysql._sql import quote

if TYPE_CHECKING:
    from idempo.stores.mysql._store import MySQLStore

__all__ = ["BoundMySQLStore"]


class BoundMySQLStore(TransitionalStore[None]):
    """A :class:`MySQLStore`'s operations on the caller's PyMySQL connection, inside the
    caller's transaction (transactional mode; see :meth:`MySQLStore.bind`).

    The store's procedures open and commit transactions of their own, so they cannot run inside
    the caller's. Here each operation is plain statements instead: the row is read ``FOR
    UPDATE`` and the pure transitions of :mod:`idempo.core.transitions` decide, as in the SQLite
    store (the shared steps are :class:`~idempo.stores._transitional.TransitionalStore`'s). A
    claim of an absent key INSERTs; a concurrent duplicate's INSERT waits on the unique key
    until this transaction ends, then finds the row there (the winner committed: it reads the
    row again and replays) or inserts (the winner rolled back). This costs two or three
    statements per operation instead of one.

    The INSERT is ``INSERT ... ON DUPLICATE KEY UPDATE`` with a no-op update, not a plain one:
    a plain INSERT that meets a duplicate leaves a shared lock on the row, and two duplicates
    that then read it ``FOR UPDATE`` each wait for the other's shared lock: a deadlock, which
    rolls back the caller's whole transaction. (The claim procedure of the pooled store can roll
    back and start over; this store may not end the caller's transaction.) The no-op update
    takes the row's exclusive lock instead, so duplicates queue one behind the other.
    """

    def __init__(self, parent: MySQLStore, conn: Any) -> None:
        self._parent = parent
        self._conn = conn
        t = quote(parent._sql.table)
        columns = ", ".join(quote(c) for c in rows.COLUMNS)
        self._sql_select = f"SELECT {columns} FROM {t} WHERE scope = %s AND `key` = %s"
        self._sql_insert = (
            f"INSERT INTO {t} (scope, `key`, {columns})"
            f" VALUES (%s, %s, {', '.join(['%s'] * len(rows.COLUMNS))})"
            " ON DUPLICATE KEY UPDATE scope = scope"
        )
        self._sql_token = f"SELECT token FROM {t} WHERE scope = %s AND `key` = %s"
        # With CLIENT_FOUND_ROWS a no-op update counts 1 row, like an insert: see _save.
        self._found_rows = bool(getattr(conn, "client_flag", CLIENT.FOUND_ROWS) & CLIENT.FOUND_ROWS)
        assignments = ", ".join(f"{quote(c)} = %s" for c in rows.COLUMNS)
        self._sql_update = f"UPDATE {t} SET {assignments} WHERE scope = %s AND `key` = %s"
        self._sql_delete = f"DELETE FROM {t} WHERE scope = %s AND `key` = %s"

    def _query(self, operation: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._execute(operation, sql, params)[0]

    def _execute(
        self, operation: str, sql: str, params: Sequence[Any]
    ) -> tuple[list[tuple[Any, ...]], int]:
        """One statement on the caller's connection: its rows (if any) and its row count."""
        with store_errors(operation):
            # A plain tuple cursor, whatever cursorclass the caller's connection defaults to.
            cursor = self._conn.cursor(pymysql.cursors.Cursor)
            count = cursor.execute(sql, params)
            rows = list(cursor.fetchall()) if cursor.description is not None else []
            return rows, int(count)

    def _check_transaction(self) -> None:
        """Refuse what would silently break exactly-once: an autocommit connection commits the
        record apart from the effect; REPEATABLE READ (MariaDB's default) makes two duplicates'
        gap locks deadlock instead of one waiting for the other."""
        if self._conn.get_autocommit():
            raise StoreError(
                "transactional mode needs a connection with autocommit off "
                "(pymysql.connect(..., autocommit=False)): otherwise the record commits apart "
                "from your writes"
            )
        level = self._query("claim", "SELECT @@SESSION.tx_isolation", ())[0][0]
        if str(level).upper() != "READ-COMMITTED":
            raise StoreError(
                f"transactional mode on MariaDB needs READ COMMITTED, not {level}: run "
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED on the connection (or "
                "init_command=...) before the transaction; under REPEATABLE READ concurrent "
                "duplicates deadlock instead of waiting"
            )

    # -- the hooks of TransitionalStore: the caller's transaction, row locks ------------------

    def _atomic(self, operation: str, *, write: bool) -> AbstractContextManager[None]:
        # The caller's transaction is the atomic step: row locks last until it ends. A claim,
        # the first operation of a transaction, checks that the transaction can serve.
        if operation == "claim":
            self._parent._ensure_ready()
            self._check_transaction()
        return contextlib.nullcontext()

    def _load(
        self, h: None, operation: str, scope: str, key: str, *, lock: bool
    ) -> tuple[float, Record | None]:
        found = self._query(
            operation, self._sql_select + (" FOR UPDATE" if lock else ""), (scope, key)
        )
        # The clock after the row lock is granted: a wait must not make leases look younger.
        now = float(self._query(operation, "SELECT UNIX_TIMESTAMP(SYSDATE(6))", ())[0][0])
        return now, (rows.record(scope, key, found[0]) if found else None)

    def _save(self, h: None, operation: str, record: Record, *, insert: bool) -> None:
        values = rows.values(record)
        if not insert:
            self._query(operation, self._sql_update, (*values, record.scope, record.key))
            return
        _, count = self._execute(operation, self._sql_insert, (record.scope, record.key, *values))
        if count == 1 and not self._found_rows:
            return  # inserted
        if count == 1:  # inserted, or found the row: its token tells (tokens are unique)
            found = self._query(operation, self._sql_token, (record.scope, record.key))
            if found and found[0][0] == record.token:
                return
        # A concurrent claimer inserted the key first and committed: we now hold its row lock.
        raise RowConflict

    def _remove(self, h: None, operation: str, scope: str, key: str) -> None:
        self._query(operation, self._sql_delete, (scope, key))

    # -- housekeeping: never in the caller's transaction --------------------------------------

    def purge_expired(self, limit: int = 1000) -> int:
        return self._parent.purge_expired(limit)

    def scan(
        self,
        *,
        state: State | None = None,
        scope: str | None = None,
        older_than: float = 0.0,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page:
        return self._parent.scan(
            state=state, scope=scope, older_than=older_than, cursor=cursor, limit=limit
        )

    def stats(self) -> Stats:
        return self._parent.stats()

    def migrate(self) -> None:
        self._parent.migrate()

    def close(self) -> None:
        """The connection is the caller's: nothing to close."""

"""Connections to MariaDB: the URL's connection arguments, and a small thread-safe pool."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql  # type: ignore[import-untyped]

from idempo.errors import StoreError, StoreUnavailableError
from idempo.stores._url import redact
from idempo.stores.mysql._errors import session_intact

__all__ = ["Conn", "Pool", "close_quietly", "connect_kwargs", "end_transaction"]

# A driver connection. PyMySQL has no type information: keep what is untyped to this alias.
Conn = Any


def connect_kwargs(url: str) -> dict[str, Any]:
    """``pymysql.connect`` arguments (host, port, database, user, password) for
    ``mysql://user:password@host:port/database``; user and password are percent-decoded."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "mysql":
        raise ValueError(f"not a mysql:// URL: {redact(url)!r}")
    if parts.query or parts.fragment:
        raise ValueError(
            f"connect_kwargs takes a mysql:// URL without a query string or fragment:"
            f" {redact(url)!r}; open_store() reads options from the query, or pass them as"
            " keyword arguments"
        )
    database = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not database or "/" in database:
        raise ValueError(
            f"the mysql:// URL must name one database: mysql://user:password@host:3306/dbname,"
            f" not {redact(url)!r}"
        )
    kwargs: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": parts.port or 3306,
        "database": database,
    }
    if parts.username is not None:
        kwargs["user"] = unquote(parts.username)
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    return kwargs


class Pool:
    """A small thread-safe pool of autocommit PyMySQL connections.

    At most ``max_size`` connections are open; a caller finding none free waits up to
    ``timeout`` seconds, then gets StoreUnavailableError. Connections are opened on demand and
    never pinged before use (a ping is a round trip per operation): one that turns out broken
    fails its operation with StoreUnavailableError and is discarded, and the next operation
    opens a fresh one. Idle connections older than ``max_idle`` seconds are closed instead of
    reused, before the server's wait_timeout (8 hours by default) can silently drop them.
    """

    def __init__(
        self, connect: Callable[[], Conn], *, max_size: int, timeout: float, max_idle: float
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._connect = connect
        self.max_size = max_size
        self._timeout = timeout
        self._max_idle = max_idle
        self._cond = threading.Condition()
        self._idle: list[tuple[Conn, float]] = []  # (connection, when returned); LIFO
        self._size = 0  # open connections: idle + lent
        self._closed = False
        self._pid = os.getpid()

    def _check_fork(self) -> None:
        # Called with the condition held. A forked child shares its parent's sockets: it must
        # neither use nor close them (closing sends COM_QUIT, ending the parent's sessions).
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._idle.clear()
            self._size = 0

    @contextlib.contextmanager
    def connection(self) -> Iterator[Conn]:
        conn = self._acquire()
        keep = False
        try:
            yield conn
            keep = True
        except BaseException as exc:
            keep = session_intact(exc)
            raise
        finally:
            self._release(conn, keep)

    def _acquire(self) -> Conn:
        deadline = time.monotonic() + self._timeout
        stale: list[Conn] = []
        try:
            with self._cond:
                self._check_fork()
                while True:
                    if self._closed:
                        raise StoreError("this MariaDB store is closed")
                    now = time.monotonic()
                    while self._idle:
                        conn, since = self._idle.pop()
                        if now - since <= self._max_idle:
                            return conn
                        stale.append(conn)
                        self._size -= 1
                    if self._size < self.max_size:
                        self._size += 1  # reserve the slot; connect outside the lock
                        break
                    if now >= deadline:
                        raise StoreUnavailableError(
                            f"no MariaDB connection free within {self._timeout:g} s"
                            f" (max_size={self.max_size})"
                        )
                    # Woken by a returned connection or a freed slot (or the deadline): look
                    # again, as another waiter may have been quicker.
                    self._cond.wait(deadline - now)
        finally:
            for conn in stale:
                close_quietly(conn)
        try:
            return self._open()
        except BaseException:
            with self._cond:
                self._size -= 1
                self._cond.notify()
            raise

    def _open(self) -> Conn:
        try:
            return self._connect()
        except pymysql.err.MySQLError as exc:
            # Refused, timed out, unknown host, access denied, unknown database: unreachable.
            raise StoreUnavailableError(f"cannot connect to the MariaDB store: {exc}") from exc

    def _release(self, conn: Conn, keep: bool) -> None:
        with self._cond:
            if self._pid != os.getpid():
                return  # lent before a fork: the parent's, and no longer counted here
            if keep and not self._closed and conn.open:
                self._idle.append((conn, time.monotonic()))
                self._cond.notify()
                return
            self._size -= 1
            self._cond.notify()
        close_quietly(conn)

    def close(self) -> None:
        """Close idle connections now, lent ones when they come back; refuse new requests."""
        with self._cond:
            self._check_fork()
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            self._cond.notify_all()
        for conn, _ in idle:
            close_quietly(conn)

    @property
    def closed(self) -> bool:
        return self._closed


def end_transaction(conn: Conn) -> None:
    """After a procedure failed, make sure its transaction is over (on the error path only).

    The procedures roll back before passing an error on, but MariaDB does not run a procedure's
    handlers for every error (see _CLAIM on deadlocks): a connection left inside a transaction
    would keep its row locks and fail its next CALL. A connection that cannot even roll back is
    closed, which the pool then discards.
    """
    try:
        conn.rollback()
    except Exception:
        close_quietly(conn)


def close_quietly(conn: Conn) -> None:
    # PyMySQL's close() sends COM_QUIT (ignoring failures) and always closes the socket; it
    # raises only when already closed.
    with contextlib.suppress(Exception):
        conn.close()

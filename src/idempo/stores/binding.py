"""Transactional mode's store binding: which store speaks a caller's driver connection.

``bind_sync(store, conn)`` / ``bind_async(store, conn)`` give the store's operations on the
caller's own connection (sqlite3, psycopg, PyMySQL, or a SQLAlchemy Session/Connection over
one), inside the caller's transaction. Used by ``Idempotency.transaction``, atomic phases and
the consumers' transactional inbox.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from idempo.stores.base import AsyncStore, Store

__all__ = ["bind_async", "bind_sync", "driver_connection"]


def driver_connection(conn: Any) -> Any:
    """The DB-API connection under a SQLAlchemy Session or Connection (else ``conn`` itself)."""
    module = type(conn).__module__
    if module.startswith("sqlalchemy."):
        if hasattr(conn, "get_bind") and hasattr(conn, "connection"):  # Session
            conn = conn.connection()
        # Connection -> its pooled DB-API connection -> the driver's own connection object.
        return conn.connection.driver_connection
    return conn


def bind_sync(store: Store, conn: Any) -> Store:
    """``store`` bound to ``conn``'s transaction. A sqlite3 connection with no transaction open
    gets one now, with ``BEGIN IMMEDIATE``: the write lock up front, so that everything written
    on it until the caller commits (an atomic phase's writes, then its recovery point) is one
    unit, and a concurrent duplicate waits instead of racing it."""
    raw = driver_connection(conn)
    bind = getattr(store, "bind", None)
    if bind is None:
        raise TypeError(
            "transactional mode needs a SQL store (sqlite:///, postgresql://, mysql://), "
            f"not {store!r}"
        )
    if isinstance(raw, sqlite3.Connection) or type(raw).__module__.startswith(
        ("psycopg", "pymysql")
    ):
        bound: Store = bind(raw)
        if isinstance(raw, sqlite3.Connection) and not raw.in_transaction:
            raw.execute("BEGIN IMMEDIATE")
        return bound
    raise TypeError(
        f"transactional mode does not know {type(raw).__module__}.{type(raw).__name__}: "
        "pass a sqlite3, psycopg or PyMySQL connection, or a SQLAlchemy Session/Connection "
        "over one"
    )


async def bind_async(store: AsyncStore, conn: Any) -> AsyncStore:
    """``store`` bound to an async connection's transaction (psycopg AsyncConnection, or a
    SQLAlchemy AsyncSession/AsyncConnection over one)."""
    module = type(conn).__module__
    if module.startswith("sqlalchemy."):
        if hasattr(conn, "get_bind") and hasattr(conn, "connection"):  # AsyncSession
            conn = await conn.connection()
        raw = (await conn.get_raw_connection()).driver_connection
    else:
        raw = conn
    bind = getattr(store, "bind", None)
    if bind is None or not type(raw).__module__.startswith("psycopg"):
        raise TypeError(
            "async transactional mode needs a postgresql:// store and a psycopg AsyncConnection "
            f"(or a SQLAlchemy AsyncSession over one), not {type(raw).__name__} on {store!r}"
        )
    bound: AsyncStore = bind(raw)
    return bound

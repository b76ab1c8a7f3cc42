"""The idempotent-write helpers on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from idempo.sql import VersionConflictError, update_if_version, upsert
from tests.conftest import POSTGRES_URL, REQUIRE_SERVICES, require_service

MYSQL = dict(host="127.0.0.1", port=3306, user="root", password="", database="test")


def _mysql() -> Any:
    import pymysql

    try:
        return pymysql.connect(**MYSQL, connect_timeout=2)  # type: ignore[arg-type]
    except pymysql.err.OperationalError as exc:
        if REQUIRE_SERVICES or os.environ.get("IDEMPO_REQUIRE_SERVICES") == "1":
            pytest.fail(f"MariaDB is not reachable ({exc})")
        pytest.skip(f"MariaDB is not reachable ({exc})")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "mysql"])
def db(request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    table = f"accounts_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        conn: Any = sqlite3.connect(":memory:", isolation_level=None)
        conn.execute(
            f'CREATE TABLE "{table}"'
            " (id TEXT PRIMARY KEY, balance INTEGER, owner TEXT, version INTEGER)"
        )
        yield conn, table
        conn.close()
    elif request.param == "postgres":
        require_service("postgres")
        conn = psycopg.connect(POSTGRES_URL, autocommit=True)
        conn.execute(
            f'CREATE TABLE "{table}" (id text PRIMARY KEY, balance int, owner text, version int)'
        )
        yield conn, table
        conn.execute(f'DROP TABLE "{table}"')
        conn.close()
    else:
        conn = _mysql()
        conn.autocommit(True)
        with conn.cursor() as cur:
            cur.execute(
                f"CREATE TABLE `{table}`"
                " (id VARCHAR(64) PRIMARY KEY, balance INT, owner TEXT, version INT)"
            )
        yield conn, table
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE `{table}`")
        conn.close()


def rows(conn: Any, table: str) -> list[tuple[Any, ...]]:
    q = "`" if type(conn).__module__.startswith("pymysql") else '"'
    sql = f"SELECT id, balance, owner, version FROM {q}{table}{q} ORDER BY id"
    if q == "`":
        with conn.cursor() as cur:
            cur.execute(sql)
            return [tuple(r) for r in cur.fetchall()]
    return [tuple(r) for r in conn.execute(sql).fetchall()]


def test_upsert_is_idempotent(db: tuple[Any, str]) -> None:
    """Inserting, repeating, and changing: the table ends as one run would leave it, and a
    repeat reports no change."""
    conn, table = db
    row = {"id": "a", "balance": 10, "owner": "ann", "version": 1}
    assert upsert(conn, table, row, key=["id"]) is True
    assert upsert(conn, table, row, key=["id"]) is False
    assert rows(conn, table) == [("a", 10, "ann", 1)]
    assert upsert(conn, table, {**row, "balance": 20}, key=["id"]) is True
    assert rows(conn, table) == [("a", 20, "ann", 1)]


def test_update_if_version(db: tuple[Any, str]) -> None:
    """The update applies at the expected version and bumps it; a repeat or a stale writer
    gets VersionConflictError and changes nothing."""
    conn, table = db
    upsert(conn, table, {"id": "b", "balance": 5, "owner": "bo", "version": 1}, key=["id"])
    assert (
        update_if_version(conn, table, {"balance": 6}, where={"id": "b"}, expected_version=1) == 2
    )
    with pytest.raises(VersionConflictError) as info:
        update_if_version(conn, table, {"balance": 6}, where={"id": "b"}, expected_version=1)
    assert info.value.status == 409
    assert rows(conn, table) == [("b", 6, "bo", 2)]
    with pytest.raises(VersionConflictError):
        update_if_version(conn, table, {"balance": 1}, where={"id": "missing"}, expected_version=1)


def test_bad_arguments_are_refused() -> None:
    """Key columns must be written; the version column is not the caller's to set."""
    conn = sqlite3.connect(":memory:")
    with pytest.raises(ValueError, match="key"):
        upsert(conn, "t", {"a": 1}, key=["b"])
    with pytest.raises(ValueError, match="version"):
        update_if_version(conn, "t", {"version": 3}, where={"a": 1}, expected_version=1)
    with pytest.raises(TypeError):
        upsert(object(), "t", {"a": 1}, key=["a"])
    conn.close()

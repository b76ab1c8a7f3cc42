"""Schema 2 (the indexes scan and stats read) from a store migrated by an idempo of schema 1:
the first use of the store adds the index and keeps every record, on each SQL store."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql  # type: ignore[import-untyped]
import pytest

from idempo import open_store
from idempo.core.records import State
from idempo.stores.base import Store
from idempo.stores.mysql import connect_kwargs
from tests.conftest import MYSQL_URL, POSTGRES_URL, cleanup, store_url


def _seed(store: Store) -> None:
    store.claim("s", "held", "fp", "t1", lease=30, ttl=60)
    store.claim("s", "done", "fp", "t2", lease=30, ttl=60)
    store.complete("s", "done", "t2", b"out", ttl=60)


def _upgraded(store: Store) -> None:
    """The first operation of a fresh store object migrates; every record is still there."""
    page = store.scan(state=State.IN_PROGRESS)
    assert [r.key for r in page.records] == ["held"]
    assert {r.key for r in store.scan().records} == {"held", "done"}
    assert (store.stats().in_progress, store.stats().completed) == (1, 1)


@pytest.fixture
def location(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, dict[str, Any]]]:
    """A store URL and options on a fresh location of the parametrized kind."""
    kind = request.param
    url, options = store_url(kind, tmp_path)
    try:
        yield url, options
    finally:
        cleanup(kind, options)


@pytest.mark.sqlite
@pytest.mark.parametrize("location", ["sqlite"], indirect=True)
def test_sqlite_schema_1_gains_the_in_progress_index(location: tuple[str, dict[str, Any]]) -> None:
    """A SQLite table at schema 1 (no in-progress index) is at schema 2 after first use."""
    url, options = location
    store = open_store(url, **options)
    try:
        _seed(store)
    finally:
        store.close()
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute('DROP INDEX "idempo_records_in_progress"')
        conn.execute("UPDATE idempo_schema SET version = 1")
    store = open_store(url, **options)
    try:
        _upgraded(store)
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM idempo_schema").fetchone() == (2,)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "idempo_records_in_progress" in names


@pytest.mark.postgres
@pytest.mark.parametrize("location", ["postgres"], indirect=True)
def test_postgres_schema_1_gains_the_in_progress_index(
    location: tuple[str, dict[str, Any]],
) -> None:
    """A PostgreSQL schema at version 1 (claim function marked 1, no partial index) is
    migrated by the first operation of a store object."""
    url, options = location
    schema = options["schema"]
    store = open_store(url, **options)
    try:
        _seed(store)
    finally:
        store.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP INDEX "{schema}".idempo_records_inflight_idx')
        conn.execute(
            f'COMMENT ON FUNCTION "{schema}".idempo_records_claim'
            "(text, text, text, text, double precision, double precision) IS 'idempo schema 1'"
        )
    store = open_store(url, **options)
    try:
        _upgraded(store)
    finally:
        store.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        found = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
            (schema, "idempo_records_inflight_idx"),
        ).fetchone()
    assert found is not None
    assert "WHERE (state = 'in_progress'::text)" in found[0]


@pytest.mark.mysql
@pytest.mark.parametrize("location", ["mysql"], indirect=True)
def test_mysql_schema_1_gains_the_state_index(location: tuple[str, dict[str, Any]]) -> None:
    """A MariaDB table at version 1 (procedures marked 1, no state index) is migrated by the
    first operation of a store object."""
    url, options = location
    table = options["table"]
    store = open_store(url, **options)
    try:
        _seed(store)
    finally:
        store.close()
    conn = pymysql.connect(**connect_kwargs(MYSQL_URL), autocommit=True)
    try:
        cursor = conn.cursor()
        cursor.execute(f"DROP INDEX state_idx ON `{table}`")
        for suffix in ("claim", "hold", "purge"):
            cursor.execute(f"ALTER PROCEDURE `{table}_{suffix}` COMMENT 'idempo schema 1'")
        store = open_store(url, **options)
        try:
            _upgraded(store)
        finally:
            store.close()
        cursor.execute(f"SHOW INDEX FROM `{table}` WHERE Key_name = 'state_idx'")
        assert cursor.fetchall()
    finally:
        conn.close()

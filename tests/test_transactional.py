"""Transactional mode: the record commits (or rolls back) with the caller's own writes.

Includes the crash tests: a worker process is killed with SIGKILL after its claim, after its
effect (before the commit) and after the commit (before it could reply); a retry then runs or
replays, and the effect is in the database exactly once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from idempo import Idempotency
from idempo.errors import KeyReuseError
from tests.conftest import POSTGRES_URL, cleanup, store_url

ROOT = Path(__file__).resolve().parent.parent


# -- SQLite ---------------------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[tuple[Idempotency, str]]:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE charges (order_id TEXT, amount INTEGER)")
    idem = Idempotency(f"sqlite:///{path}")
    yield idem, str(path)
    idem.close()


def sqlite_charge(idem: Idempotency, path: str, key: str, amount: int = 10) -> dict[str, Any]:
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        with idem.transaction(conn, key=key, fingerprint={"amount": amount}) as tx:
            if not tx.replayed:
                conn.execute("INSERT INTO charges VALUES (?, ?)", (key, amount))
                tx.result = {"order": key, "amount": amount}
        conn.execute("COMMIT")
        return {"replayed": tx.replayed, "result": tx.result}
    finally:
        conn.close()


def sqlite_count(path: str, key: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(
            conn.execute("SELECT count(*) FROM charges WHERE order_id = ?", (key,)).fetchone()[0]
        )


def test_sqlite_effect_and_record_commit_together(sqlite_db: tuple[Idempotency, str]) -> None:
    """The first transaction runs the effect; a repeat replays and writes nothing."""
    idem, path = sqlite_db
    first = sqlite_charge(idem, path, "o-1")
    again = sqlite_charge(idem, path, "o-1")
    assert first == {"replayed": False, "result": {"order": "o-1", "amount": 10}}
    assert again == {"replayed": True, "result": {"order": "o-1", "amount": 10}}
    assert sqlite_count(path, "o-1") == 1
    with pytest.raises(KeyReuseError):
        sqlite_charge(idem, path, "o-1", amount=99)


def test_sqlite_rollback_undoes_the_claim(sqlite_db: tuple[Idempotency, str]) -> None:
    """A failed transaction leaves neither effect nor record: the retry runs."""
    idem, path = sqlite_db
    conn = sqlite3.connect(path, isolation_level=None)

    def fail_halfway() -> None:
        with idem.transaction(conn, key="o-2"):
            conn.execute("INSERT INTO charges VALUES ('o-2', 10)")
            raise RuntimeError("effect failed halfway")

    with pytest.raises(RuntimeError):
        fail_halfway()
    conn.execute("ROLLBACK")
    conn.close()
    assert idem.store.get("", "o-2") is None
    assert sqlite_count(path, "o-2") == 0
    assert sqlite_charge(idem, path, "o-2")["replayed"] is False
    assert sqlite_count(path, "o-2") == 1


def test_sqlite_concurrent_duplicates_run_once(sqlite_db: tuple[Idempotency, str]) -> None:
    """16 threads, each its own connection, one key: one effect, every other call replays."""
    idem, path = sqlite_db
    results: list[dict[str, Any]] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        results.append(sqlite_charge(idem, path, "o-3"))

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 16
    assert sum(not r["replayed"] for r in results) == 1
    assert sqlite_count(path, "o-3") == 1


# -- PostgreSQL -----------------------------------------------------------------------------------


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[tuple[Idempotency, str]]:
    url, options = store_url("postgres", tmp_path)
    schema = options["schema"]
    idem = Idempotency(url, store_options=options)
    idem.store.migrate()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{schema}".charges (order_id text, amount int)')
    yield idem, schema
    idem.close()
    cleanup("postgres", options)


def pg_charge(idem: Idempotency, schema: str, key: str, amount: int = 10) -> dict[str, Any]:
    with psycopg.connect(POSTGRES_URL) as conn:
        with idem.transaction(conn, key=key, fingerprint={"amount": amount}) as tx:
            if not tx.replayed:
                conn.execute(f'INSERT INTO "{schema}".charges VALUES (%s, %s)', (key, amount))
                tx.result = {"order": key, "amount": amount}
        conn.commit()
    return {"replayed": tx.replayed, "result": tx.result}


def pg_count(schema: str, key: str) -> int:
    with psycopg.connect(POSTGRES_URL) as conn:
        row = conn.execute(
            f'SELECT count(*) FROM "{schema}".charges WHERE order_id = %s', (key,)
        ).fetchone()
        assert row is not None
        return int(row[0])


def test_postgres_effect_and_record_commit_together(pg: tuple[Idempotency, str]) -> None:
    """psycopg: one effect, a replay after it, key reuse refused."""
    idem, schema = pg
    assert pg_charge(idem, schema, "p-1")["replayed"] is False
    assert pg_charge(idem, schema, "p-1") == {
        "replayed": True,
        "result": {"order": "p-1", "amount": 10},
    }
    assert pg_count(schema, "p-1") == 1
    with pytest.raises(KeyReuseError):
        pg_charge(idem, schema, "p-1", amount=5)


def test_postgres_rollback_undoes_the_claim(pg: tuple[Idempotency, str]) -> None:
    """psycopg: a rolled-back transaction leaves no record; the retry runs."""
    idem, schema = pg
    with psycopg.connect(POSTGRES_URL) as conn:

        def fail_halfway() -> None:
            with idem.transaction(conn, key="p-2"):
                conn.execute(f"INSERT INTO \"{schema}\".charges VALUES ('p-2', 10)")
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            fail_halfway()
        conn.rollback()
    assert idem.store.get("", "p-2") is None
    assert pg_count(schema, "p-2") == 0
    assert pg_charge(idem, schema, "p-2")["replayed"] is False


def test_postgres_concurrent_duplicates_wait_then_replay(pg: tuple[Idempotency, str]) -> None:
    """16 connections claim one key at once: the unique key serializes them; one effect, 15
    replays (each waited for the winner's commit)."""
    idem, schema = pg
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        try:
            results.append(pg_charge(idem, schema, "p-3"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sum(not r["replayed"] for r in results) == 1
    assert pg_count(schema, "p-3") == 1


def test_sqlalchemy_session_over_postgres(pg: tuple[Idempotency, str]) -> None:
    """A SQLAlchemy Session is accepted: the record rides in the session's transaction."""
    idem, schema = pg
    engine = sa.create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    try:
        for expect_replay in (False, True):
            with Session(engine) as session:
                with idem.transaction(session, key="sa-1", fingerprint="x") as tx:
                    if not tx.replayed:
                        session.execute(
                            sa.text(f"INSERT INTO \"{schema}\".charges VALUES ('sa-1', 1)")
                        )
                        tx.result = "charged"
                session.commit()
            assert tx.replayed is expect_replay
            assert tx.result == "charged"
    finally:
        engine.dispose()
    assert pg_count(schema, "sa-1") == 1


async def test_async_psycopg_and_sqlalchemy(pg: tuple[Idempotency, str]) -> None:
    """Async: a psycopg AsyncConnection and a SQLAlchemy AsyncSession both work."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    idem, schema = pg
    for expect_replay in (False, True):
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
            async with idem.atransaction(conn, key="a-1") as tx:
                if not tx.replayed:
                    await conn.execute(f"INSERT INTO \"{schema}\".charges VALUES ('a-1', 1)")
                    tx.result = 1
            await conn.commit()
        assert tx.replayed is expect_replay
    engine = create_async_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    try:
        for expect_replay in (False, True):
            async with AsyncSession(engine) as session:
                async with idem.atransaction(session, key="a-2") as atx:
                    if not atx.replayed:
                        await session.execute(
                            sa.text(f"INSERT INTO \"{schema}\".charges VALUES ('a-2', 1)")
                        )
                        atx.result = 2
                await session.commit()
            assert atx.replayed is expect_replay
    finally:
        await engine.dispose()
    await idem.aclose()
    assert pg_count(schema, "a-1") == 1
    assert pg_count(schema, "a-2") == 1


# -- crash tests ----------------------------------------------------------------------------------

CRASH_POINTS = ["after_claim", "after_effect", "after_commit"]


def run_worker(
    kind: str, url: str, options: dict[str, Any], key: str, crash: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.transactional_worker",
            kind,
            url,
            json.dumps(options),
            key,
            crash,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


def crash_then_retry(
    kind: str, url: str, options: dict[str, Any], crash: str
) -> tuple[str, dict[str, Any]]:
    key = f"crash-{crash}-{uuid.uuid4().hex[:6]}"
    killed = run_worker(kind, url, options, key, crash)
    assert killed.returncode == -9, killed.stderr  # SIGKILL: no cleanup ran
    retried = run_worker(kind, url, options, key, "none")  # the client retries
    assert retried.returncode == 0, retried.stderr
    return key, json.loads(retried.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("crash", CRASH_POINTS)
def test_crash_sqlite(tmp_path: Path, crash: str) -> None:
    """SQLite: killed at each point, then retried: exactly one effect."""
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE charges (order_id TEXT, amount INTEGER)")
    key, out = crash_then_retry("sqlite", f"sqlite:///{path}", {}, crash)
    assert out["replayed"] is (crash == "after_commit")
    assert sqlite_count(str(path), key) == 1


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["postgres", "postgres-sqlalchemy"])
@pytest.mark.parametrize("crash", CRASH_POINTS)
def test_crash_postgres(pg: tuple[Idempotency, str], crash: str, kind: str) -> None:
    """PostgreSQL (psycopg and SQLAlchemy): killed at each point, retried: one effect."""
    _, schema = pg
    key, out = crash_then_retry(kind, POSTGRES_URL, {"schema": schema}, crash)
    assert out["replayed"] is (crash == "after_commit")
    assert pg_count(schema, key) == 1


# -- MariaDB --------------------------------------------------------------------------------------


@pytest.fixture
def maria(tmp_path: Path) -> Iterator[tuple[Idempotency, str]]:
    import pymysql

    from idempo.stores.mysql import connect_kwargs

    url, options = store_url("mysql", tmp_path)
    idem = Idempotency(url, store_options=options)
    idem.store.migrate()
    effects = f"{options['table']}_charges"
    conn = pymysql.connect(**connect_kwargs(url), autocommit=True)
    conn.cursor().execute(f"CREATE TABLE `{effects}` (order_id VARCHAR(64), amount INT)")
    yield idem, options["table"]
    conn.cursor().execute(f"DROP TABLE IF EXISTS `{effects}`")
    conn.close()
    idem.close()
    cleanup("mysql", options)


def maria_connect() -> Any:
    import pymysql

    from idempo.stores.mysql import connect_kwargs
    from tests.conftest import MYSQL_URL

    return pymysql.connect(
        **connect_kwargs(MYSQL_URL),
        autocommit=False,
        init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    )


def maria_charge(idem: Idempotency, table: str, key: str, amount: int = 10) -> dict[str, Any]:
    conn = maria_connect()
    try:
        with idem.transaction(conn, key=key, fingerprint={"amount": amount}) as tx:
            if not tx.replayed:
                conn.cursor().execute(
                    f"INSERT INTO `{table}_charges` VALUES (%s, %s)", (key, amount)
                )
                tx.result = {"order": key, "amount": amount}
        conn.commit()
        return {"replayed": tx.replayed, "result": tx.result}
    finally:
        conn.close()


def maria_count(table: str, key: str) -> int:
    conn = maria_connect()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT count(*) FROM `{table}_charges` WHERE order_id = %s", (key,))
        return int(cur.fetchone()[0])
    finally:
        conn.close()


@pytest.mark.mysql
def test_mariadb_effect_and_record_commit_together(maria: tuple[Idempotency, str]) -> None:
    """PyMySQL: one effect, then a replay; reuse refused; a rollback leaves nothing."""
    idem, table = maria
    assert maria_charge(idem, table, "m-1")["replayed"] is False
    assert maria_charge(idem, table, "m-1")["replayed"] is True
    assert maria_count(table, "m-1") == 1
    with pytest.raises(KeyReuseError):
        maria_charge(idem, table, "m-1", amount=3)
    conn = maria_connect()

    def fail_halfway() -> None:
        with idem.transaction(conn, key="m-2"):
            conn.cursor().execute(f"INSERT INTO `{table}_charges` VALUES ('m-2', 1)")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_halfway()
    conn.rollback()
    conn.close()
    assert idem.store.get("", "m-2") is None
    assert maria_count(table, "m-2") == 0


@pytest.mark.mysql
def test_mariadb_concurrent_duplicates_wait_then_replay(maria: tuple[Idempotency, str]) -> None:
    """16 connections, one key: the unique key serializes them; one effect, 15 replays."""
    idem, table = maria
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        try:
            results.append(maria_charge(idem, table, "m-3"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sum(not r["replayed"] for r in results) == 1
    assert maria_count(table, "m-3") == 1


@pytest.mark.slow
@pytest.mark.mysql
@pytest.mark.parametrize("crash", CRASH_POINTS)
def test_crash_mariadb(maria: tuple[Idempotency, str], crash: str) -> None:
    """MariaDB: killed at each point, then retried: exactly one effect."""
    from tests.conftest import MYSQL_URL

    _, table = maria
    key, out = crash_then_retry("mysql", MYSQL_URL, {"table": table}, crash)
    assert out["replayed"] is (crash == "after_commit")
    assert maria_count(table, key) == 1


@pytest.mark.mysql
def test_mariadb_refuses_autocommit_and_repeatable_read(maria: tuple[Idempotency, str]) -> None:
    """An autocommit connection (the record would commit apart from the effect) and REPEATABLE
    READ (duplicates would deadlock) are refused with a clear error before anything is written."""
    import pymysql

    from idempo.errors import StoreError
    from idempo.stores.mysql import connect_kwargs
    from tests.conftest import MYSQL_URL

    idem, _ = maria
    auto = pymysql.connect(**connect_kwargs(MYSQL_URL), autocommit=True)
    with pytest.raises(StoreError, match="autocommit"), idem.transaction(auto, key="x1"):
        pass
    auto.close()
    rr = pymysql.connect(**connect_kwargs(MYSQL_URL), autocommit=False)
    with pytest.raises(StoreError, match="READ COMMITTED"), idem.transaction(rr, key="x2"):
        pass
    rr.rollback()
    rr.close()
    assert idem.store.get("", "x1") is None
    assert idem.store.get("", "x2") is None


def test_postgres_dict_rows_and_autocommit_transaction_blocks(pg: tuple[Idempotency, str]) -> None:
    """A connection with row_factory=dict_row works, and so does psycopg's autocommit
    connection inside `with conn.transaction():`; a bare autocommit connection is refused."""
    from psycopg.rows import dict_row

    from idempo.errors import StoreError

    idem, schema = pg
    with psycopg.connect(POSTGRES_URL, row_factory=dict_row) as conn:
        with idem.transaction(conn, key="d-1") as tx:
            if not tx.replayed:
                conn.execute(f"INSERT INTO \"{schema}\".charges VALUES ('d-1', 1)")
                tx.result = 1
        conn.commit()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        with conn.transaction(), idem.transaction(conn, key="d-2") as tx2:
            conn.execute(f"INSERT INTO \"{schema}\".charges VALUES ('d-2', 1)")
            tx2.result = 2
        with pytest.raises(StoreError, match="in a transaction"), idem.transaction(conn, key="d-3"):
            pass
    assert pg_count(schema, "d-1") == pg_count(schema, "d-2") == 1
    assert idem.store.get("", "d-3") is None


def test_sqlite_first_use_inside_the_callers_write_transaction(tmp_path: Path) -> None:
    """A fresh database, the caller's BEGIN IMMEDIATE already open, a Row factory: the schema
    is created in the caller's transaction (no wait on its own lock) and it all commits."""
    import time

    path = tmp_path / "fresh.db"
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("CREATE TABLE charges (order_id TEXT, amount INTEGER)")
    idem = Idempotency(f"sqlite:///{path}", store_options={"busy_timeout": 2})
    conn.execute("BEGIN IMMEDIATE")
    t0 = time.monotonic()
    with idem.transaction(conn, key="f-1", fingerprint={"amount": 10}) as tx:
        conn.execute("INSERT INTO charges VALUES ('f-1', 10)")
        tx.result = "ok"
    conn.execute("COMMIT")
    assert time.monotonic() - t0 < 1.5
    again = sqlite_charge(idem, str(path), "f-1")
    assert again == {"replayed": True, "result": "ok"}
    conn.close()
    idem.close()

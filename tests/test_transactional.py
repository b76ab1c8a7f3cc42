"""Transactional mode: the record commits (or rolls back) with the caller's own writes.

The scenarios every database must pass (one effect then replays, a rollback undoes the claim,
concurrent duplicates, the crash tests) are written once, over a ``db`` fixture fanned out over
SQLite, PostgreSQL and MariaDB. The crash tests kill a worker process with SIGKILL after its
claim, after its effect (before the commit) and after the commit (before it could reply); a
retry then runs or replays, and the effect is in the database exactly once. What only one
database (or driver) has follows them.
"""

from __future__ import annotations

import contextlib
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
from tests.conftest import MYSQL_URL, POSTGRES_URL, cleanup, store_url

ROOT = Path(__file__).resolve().parent.parent


# -- the databases --------------------------------------------------------------------------------


class Database:
    """One database in transactional mode: an Idempotency on it, a ``charges`` table beside
    its records, and how a caller writes a charge and ends its transaction."""

    url: str
    options: dict[str, Any]  # the store's options (for the crash workers too)

    def __init__(self, idem: Idempotency) -> None:
        self.idem = idem

    def connect(self) -> Any:
        """A connection of the caller's, ready for ``idem.transaction``."""
        raise NotImplementedError

    def insert(self, conn: Any, key: str, amount: int) -> None:
        """The effect: one charge row, written in ``conn``'s transaction."""
        raise NotImplementedError

    def commit(self, conn: Any) -> None:
        conn.commit()

    def rollback(self, conn: Any) -> None:
        conn.rollback()

    def count(self, key: str) -> int:
        """How many charges ``key`` made (read on a connection of its own)."""
        raise NotImplementedError

    def charge(self, key: str, amount: int = 10) -> dict[str, Any]:
        """One charge in transactional mode, committed: what the caller saw."""
        conn = self.connect()
        try:
            with self.idem.transaction(conn, key=key, fingerprint={"amount": amount}) as tx:
                if not tx.replayed:
                    self.insert(conn, key, amount)
                    tx.result = {"order": key, "amount": amount}
            self.commit(conn)
            return {"replayed": tx.replayed, "result": tx.result}
        finally:
            conn.close()


class SQLite(Database):
    def __init__(self, idem: Idempotency, path: Path) -> None:
        super().__init__(idem)
        self.path = path
        self.url = f"sqlite:///{path}"
        self.options = {}

    def connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, timeout=10)

    def insert(self, conn: Any, key: str, amount: int) -> None:
        conn.execute("INSERT INTO charges VALUES (?, ?)", (key, amount))

    def commit(self, conn: Any) -> None:
        conn.execute("COMMIT")

    def rollback(self, conn: Any) -> None:
        conn.execute("ROLLBACK")

    def count(self, key: str) -> int:
        with contextlib.closing(sqlite3.connect(self.path)) as conn:
            row = conn.execute("SELECT count(*) FROM charges WHERE order_id = ?", (key,))
            return int(row.fetchone()[0])


class Postgres(Database):
    def __init__(self, idem: Idempotency, schema: str) -> None:
        super().__init__(idem)
        self.schema = schema
        self.url = POSTGRES_URL
        self.options = {"schema": schema}

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(POSTGRES_URL)

    def insert(self, conn: Any, key: str, amount: int) -> None:
        conn.execute(f'INSERT INTO "{self.schema}".charges VALUES (%s, %s)', (key, amount))

    def count(self, key: str) -> int:
        with psycopg.connect(POSTGRES_URL) as conn:
            row = conn.execute(
                f'SELECT count(*) FROM "{self.schema}".charges WHERE order_id = %s', (key,)
            ).fetchone()
            assert row is not None
            return int(row[0])


def maria_connect(**options: Any) -> Any:
    import pymysql

    from idempo.stores.mysql import connect_kwargs

    return pymysql.connect(**connect_kwargs(MYSQL_URL), **options)


class MariaDB(Database):
    def __init__(self, idem: Idempotency, table: str) -> None:
        super().__init__(idem)
        self.table = table  # the store's table; the charges live in `<table>_charges`
        self.url = MYSQL_URL
        self.options = {"table": table}

    def connect(self) -> Any:
        return maria_connect(
            autocommit=False,
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )

    def insert(self, conn: Any, key: str, amount: int) -> None:
        conn.cursor().execute(f"INSERT INTO `{self.table}_charges` VALUES (%s, %s)", (key, amount))

    def count(self, key: str) -> int:
        conn = self.connect()
        try:
            cur = conn.cursor()
            cur.execute(f"SELECT count(*) FROM `{self.table}_charges` WHERE order_id = %s", (key,))
            return int(cur.fetchone()[0])
        finally:
            conn.close()


@contextlib.contextmanager
def open_database(name: str, tmp_path: Path) -> Iterator[Database]:
    """A database of kind ``name`` with an empty ``charges`` table, removed afterwards."""
    if name == "sqlite":
        path = tmp_path / "app.db"
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE charges (order_id TEXT, amount INTEGER)")
        idem = Idempotency(f"sqlite:///{path}")
        try:
            yield SQLite(idem, path)
        finally:
            idem.close()
    elif name == "postgres":
        url, options = store_url("postgres", tmp_path)
        schema = options["schema"]
        idem = Idempotency(url, store_options=options)
        try:
            idem.store.migrate()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f'CREATE TABLE "{schema}".charges (order_id text, amount int)')
            yield Postgres(idem, schema)
        finally:
            idem.close()
            cleanup("postgres", options)
    elif name == "mariadb":
        url, options = store_url("mysql", tmp_path)
        effects = f"{options['table']}_charges"
        idem = Idempotency(url, store_options=options)
        conn = maria_connect(autocommit=True)
        try:
            idem.store.migrate()
            conn.cursor().execute(f"CREATE TABLE `{effects}` (order_id VARCHAR(64), amount INT)")
            yield MariaDB(idem, options["table"])
        finally:
            conn.cursor().execute(f"DROP TABLE IF EXISTS `{effects}`")
            conn.close()
            idem.close()
            cleanup("mysql", options)
    else:
        raise ValueError(name)


DATABASES = [
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mariadb", marks=pytest.mark.mysql),
]


@pytest.fixture(params=DATABASES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """Each database in turn, with an empty ``charges`` table."""
    with open_database(request.param, tmp_path) as database:
        yield database


@pytest.fixture
def pg(tmp_path: Path) -> Iterator[Postgres]:
    """PostgreSQL only, for what only its drivers offer."""
    with open_database("postgres", tmp_path) as database:
        assert isinstance(database, Postgres)
        yield database


@pytest.fixture
def maria(tmp_path: Path) -> Iterator[MariaDB]:
    """MariaDB only, for its connection checks."""
    with open_database("mariadb", tmp_path) as database:
        assert isinstance(database, MariaDB)
        yield database


# -- every database -------------------------------------------------------------------------------


def test_effect_and_record_commit_together(db: Database) -> None:
    """The first transaction runs the effect; a repeat replays and writes nothing; reusing the
    key for another charge is refused."""
    first = db.charge("o-1")
    again = db.charge("o-1")
    assert first == {"replayed": False, "result": {"order": "o-1", "amount": 10}}
    assert again == {"replayed": True, "result": {"order": "o-1", "amount": 10}}
    assert db.count("o-1") == 1
    with pytest.raises(KeyReuseError):
        db.charge("o-1", amount=99)


def test_rollback_undoes_the_claim(db: Database) -> None:
    """A failed transaction, rolled back, leaves neither effect nor record: the retry runs."""
    conn = db.connect()

    def fail_halfway() -> None:
        with db.idem.transaction(conn, key="o-2"):
            db.insert(conn, "o-2", 10)
            raise RuntimeError("effect failed halfway")

    with pytest.raises(RuntimeError):
        fail_halfway()
    db.rollback(conn)
    conn.close()
    assert db.idem.store.get("", "o-2") is None
    assert db.count("o-2") == 0
    assert db.charge("o-2")["replayed"] is False
    assert db.count("o-2") == 1


def test_concurrent_duplicates_run_once(db: Database) -> None:
    """16 threads, each its own connection, claim one key at once: the database serializes
    them (each duplicate waits for the winner's commit); one effect, 15 replays."""
    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        try:
            results.append(db.charge("o-3"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 16
    assert sum(not r["replayed"] for r in results) == 1
    assert db.count("o-3") == 1


# -- crash tests ----------------------------------------------------------------------------------

CRASH_POINTS = ["after_claim", "after_effect", "after_commit"]

# (database, the worker's driver): PostgreSQL is crashed through psycopg and SQLAlchemy.
CRASH_WORKERS = [
    pytest.param("sqlite", "sqlite", marks=pytest.mark.sqlite, id="sqlite"),
    pytest.param("postgres", "postgres", marks=pytest.mark.postgres, id="postgres"),
    pytest.param(
        "postgres", "postgres-sqlalchemy", marks=pytest.mark.postgres, id="postgres-sqlalchemy"
    ),
    pytest.param("mariadb", "mysql", marks=pytest.mark.mysql, id="mariadb"),
]


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
@pytest.mark.parametrize(("database", "worker"), CRASH_WORKERS)
@pytest.mark.parametrize("crash", CRASH_POINTS)
def test_crash_then_retry(tmp_path: Path, database: str, worker: str, crash: str) -> None:
    """Killed at each point, then retried: exactly one effect (a replay after the commit)."""
    with open_database(database, tmp_path) as db:
        key, out = crash_then_retry(worker, db.url, db.options, crash)
        assert out["replayed"] is (crash == "after_commit")
        assert db.count(key) == 1


# -- PostgreSQL drivers ---------------------------------------------------------------------------


@pytest.mark.postgres
def test_sqlalchemy_session_over_postgres(pg: Postgres) -> None:
    """A SQLAlchemy Session is accepted: the record rides in the session's transaction."""
    idem, schema = pg.idem, pg.schema
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
    assert pg.count("sa-1") == 1


@pytest.mark.postgres
async def test_async_psycopg_and_sqlalchemy(pg: Postgres) -> None:
    """Async: a psycopg AsyncConnection and a SQLAlchemy AsyncSession both work."""
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    idem, schema = pg.idem, pg.schema
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
    assert pg.count("a-1") == 1
    assert pg.count("a-2") == 1


@pytest.mark.postgres
def test_postgres_dict_rows_and_autocommit_transaction_blocks(pg: Postgres) -> None:
    """A connection with row_factory=dict_row works, and so does psycopg's autocommit
    connection inside `with conn.transaction():`; a bare autocommit connection is refused."""
    from psycopg.rows import dict_row

    from idempo.errors import StoreError

    idem, schema = pg.idem, pg.schema
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
    assert pg.count("d-1") == pg.count("d-2") == 1
    assert idem.store.get("", "d-3") is None


# -- MariaDB connections --------------------------------------------------------------------------


@pytest.mark.mysql
def test_mariadb_refuses_autocommit_and_repeatable_read(maria: MariaDB) -> None:
    """An autocommit connection (the record would commit apart from the effect) and REPEATABLE
    READ (duplicates would deadlock) are refused with a clear error before anything is written."""
    from idempo.errors import StoreError

    idem = maria.idem
    auto = maria_connect(autocommit=True)
    with pytest.raises(StoreError, match="autocommit"), idem.transaction(auto, key="x1"):
        pass
    auto.close()
    rr = maria_connect(autocommit=False)
    with pytest.raises(StoreError, match="READ COMMITTED"), idem.transaction(rr, key="x2"):
        pass
    rr.rollback()
    rr.close()
    assert idem.store.get("", "x1") is None
    assert idem.store.get("", "x2") is None


# -- SQLite ---------------------------------------------------------------------------------------


@pytest.mark.sqlite
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
    again = SQLite(idem, path).charge("f-1")
    assert again == {"replayed": True, "result": "ok"}
    conn.close()
    idem.close()

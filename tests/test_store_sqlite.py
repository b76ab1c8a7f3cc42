"""What the conformance suite cannot see of the SQLite store: processes, files, schema, URLs."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from idempo import open_async_store, open_store
from idempo.core.records import ClaimStatus
from idempo.errors import StoreError, StoreUnavailableError
from idempo.stores.sqlite import (
    RECORD_FORMAT,
    SCHEMA_VERSION,
    AsyncSQLiteStore,
    SQLiteStore,
    open_sync,
)

pytestmark = pytest.mark.sqlite

PROCESSES = 8


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "idempo.db"


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(db)
    yield s
    s.close()


def _claim(store: SQLiteStore, key: str = "k", **kw: Any) -> Any:
    return store.claim("s", key, kw.pop("fp", "fp"), uuid.uuid4().hex, lease=30, ttl=60, **kw)


def _claim_in_child(path: str, barrier: Any, results: Any) -> None:
    """Runs in a spawned process: open the (maybe new) file, wait for the others, claim."""
    store = SQLiteStore(path)
    try:
        barrier.wait(timeout=60)
        results.put(_claim(store, "shared").status.value)
    except BaseException as exc:
        results.put(f"error: {exc!r}")
    finally:
        store.close()


def test_processes_claiming_one_key_exactly_one_acquires(db: Path) -> None:
    """8 processes open one new file and claim one key at once: one acquires, none errs."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=_claim_in_child, args=(str(db), barrier, results))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    answers = [results.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert sorted(answers) == ["acquired"] + ["in_progress"] * (PROCESSES - 1), answers


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_child_opens_its_own_connection(store: SQLiteStore) -> None:
    """After fork() the child neither uses nor closes the parent's connection; both work on."""
    _claim(store, "parent")
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()

    def child() -> None:
        try:
            inherited = store._local.held.conn
            status = _claim(store, "child").status.value
            store.close()
            inherited.execute("SELECT 1")  # abandoned, not closed (sqlite3 raises if closed)
            results.put(status)
        except BaseException as exc:
            results.put(f"error: {exc!r}")

    proc = ctx.Process(target=child)
    proc.start()
    assert results.get(timeout=60) == "acquired"
    proc.join(timeout=30)
    assert store.get("s", "child") is not None
    assert _claim(store, "parent").status is ClaimStatus.IN_PROGRESS


def test_missing_directory_is_unavailable_naming_the_path(tmp_path: Path) -> None:
    """A file that cannot be opened raises StoreUnavailableError with the path in the message."""
    path = tmp_path / "no-such-dir" / "idempo.db"
    store = SQLiteStore(path)
    with pytest.raises(StoreUnavailableError, match="no-such-dir"):
        store.get("s", "k")
    with pytest.raises(StoreUnavailableError, match="no-such-dir"):
        store.migrate()
    store.close()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_unreadable_file_is_unavailable(db: Path) -> None:
    """A file without permission to read raises StoreUnavailableError naming it."""
    SQLiteStore(db).close()
    db.write_bytes(b"")
    db.chmod(0)
    store = SQLiteStore(db)
    with pytest.raises(StoreUnavailableError, match=r"idempo\.db"):
        store.get("s", "k")
    store.close()


@pytest.mark.parametrize("option", ["timeout", "busy_timeout"])
def test_lock_held_past_the_timeout_is_unavailable(
    db: Path, store: SQLiteStore, option: str
) -> None:
    """A write lock held longer than timeout= (or its old name) gives StoreUnavailableError."""
    _claim(store, "warm-up")
    other = sqlite3.connect(db, isolation_level=None)
    impatient = SQLiteStore(db, **{option: 0.2})
    try:
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"\btimeout=0\.2s"):
            _claim(impatient)
        assert time.monotonic() - started >= 0.15
        assert impatient.get("s", "warm-up") is not None  # readers are not blocked (WAL)
        other.execute("ROLLBACK")
        assert _claim(impatient).status is ClaimStatus.ACQUIRED
    finally:
        other.close()
        impatient.close()


def test_timeout_and_its_old_name_together_are_refused(db: Path) -> None:
    """timeout= and busy_timeout= given together are an error, not a silent choice."""
    with pytest.raises(TypeError, match="not both"):
        SQLiteStore(db, timeout=1, busy_timeout=2)


def test_wal_mode_is_on_and_synchronous_is_configurable(db: Path) -> None:
    """The file is in WAL mode; synchronous is NORMAL by default and FULL on request."""
    normal = SQLiteStore(db)
    full = SQLiteStore(db, synchronous="full")
    try:
        _claim(normal)
        with normal._session() as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1
        with full._session() as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    finally:
        normal.close()
        full.close()
    raw = sqlite3.connect(db)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


def test_memory_url_is_private_and_shared_by_the_stores_threads() -> None:
    """Each sqlite://:memory: store has its own database, seen by all of its threads."""
    one, two = open_sync("sqlite://:memory:"), open_sync("sqlite://:memory:")
    try:
        assert _claim(one).status is ClaimStatus.ACQUIRED
        assert _claim(two).status is ClaimStatus.ACQUIRED  # not the same database
        seen: list[Any] = []
        thread = threading.Thread(target=lambda: seen.append(_claim(one).status))
        thread.start()
        thread.join()
        assert seen == [ClaimStatus.IN_PROGRESS]
    finally:
        one.close()
        two.close()
    with pytest.raises(StoreUnavailableError, match="closed"):
        one.get("s", "k")


async def test_async_store_over_memory_url() -> None:
    """open_async_store('sqlite://:memory:') gives an AsyncSQLiteStore that works."""
    store = open_async_store("sqlite://:memory:")
    assert isinstance(store, AsyncSQLiteStore)
    first = await store.claim("s", "k", "fp", "t1", lease=30, ttl=60)
    await store.complete("s", "k", first.token, b"out", ttl=60)
    record = await store.get("s", "k")
    assert record is not None
    assert record.outcome == b"out"
    await store.close()


def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sqlite:///relative, sqlite:////absolute and :memory: open; other shapes are refused."""
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///rel/../rel.db")
    absolute = open_store(f"sqlite:///{tmp_path / 'abs.db'}")
    assert isinstance(relative, SQLiteStore)
    assert isinstance(absolute, SQLiteStore)
    assert relative.path == "rel/../rel.db"
    assert absolute.path == str(tmp_path / "abs.db")
    assert open_sync("sqlite:///:memory:").path == ":memory:"
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/x.db"):
        with pytest.raises(ValueError, match="SQLite URL"):
            open_sync(bad)
    absolute.close()
    relative.close()


def test_bad_options_are_refused(db: Path) -> None:
    """The table must be a plain identifier and synchronous a safe level."""
    for table in ("x; DROP TABLE y", 'a"b', "", "sqlite_x", "idempo_schema", "1abc"):
        with pytest.raises(ValueError, match="identifier"):
            SQLiteStore(db, table=table)
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteStore(db, synchronous="OFF")


def test_migrate_is_idempotent_and_the_table_name_configurable(db: Path) -> None:
    """migrate() twice is harmless; the named table, its index and its version exist."""
    store = SQLiteStore(db, table="my_records", auto_migrate=False)
    store.migrate()
    store.migrate()
    assert _claim(store).status is ClaimStatus.ACQUIRED
    store.close()
    raw = sqlite3.connect(db)
    names = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
    assert {"my_records", "my_records_expires_at", "idempo_schema"} <= names
    assert "idempo_records" not in names
    version = raw.execute("SELECT version FROM idempo_schema WHERE table_name = 'my_records'")
    assert version.fetchone()[0] == SCHEMA_VERSION
    raw.close()


def test_missing_table_without_auto_migrate_is_a_store_error(db: Path) -> None:
    """Without auto_migrate and without migrate(), operations say to migrate."""
    store = SQLiteStore(db, auto_migrate=False)
    with pytest.raises(StoreError, match="migrate"):
        _claim(store)
    store.close()


def test_newer_schema_is_refused(db: Path) -> None:
    """A table recorded with a newer schema version is refused, by first use and migrate()."""
    SQLiteStore(db).migrate()
    raw = sqlite3.connect(db)
    with raw:
        raw.execute("UPDATE idempo_schema SET version = ?", (SCHEMA_VERSION + 1,))
    raw.close()
    for auto in (True, False):
        store = SQLiteStore(db, auto_migrate=auto)
        with pytest.raises(StoreError, match="newer"):
            store.get("s", "k")
        with pytest.raises(StoreError, match="newer"):
            store.migrate()
        store.close()


def test_newer_record_format_is_refused(db: Path, store: SQLiteStore) -> None:
    """A record written in a newer format is refused rather than misread."""
    _claim(store)
    raw = sqlite3.connect(db)
    with raw:
        raw.execute("UPDATE idempo_records SET format_version = ?", (RECORD_FORMAT + 1,))
    raw.close()
    with pytest.raises(StoreError, match="newer"):
        store.get("s", "k")


def test_expired_record_counts_as_absent_for_delete(store: SQLiteStore) -> None:
    """delete() of an expired record reports False; purge_expired removes it."""
    first = _claim(store)
    store.complete("s", "k", first.token, b"x", ttl=0.05)
    time.sleep(0.1)
    assert store.delete("s", "k") is False
    assert store.purge_expired(limit=10) == 1
    with pytest.raises(ValueError, match="limit"):
        store.purge_expired(limit=-1)


def test_thread_connections_are_closed_when_threads_end_and_by_close(store: SQLiteStore) -> None:
    """Each thread opens one connection; it is closed when the thread ends, the rest by close()."""
    threads = [threading.Thread(target=store.get, args=("s", "k")) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.get("s", "k")
    store.get("s", "k")
    assert len(store._conns) == 1  # this thread's, reused; the ended threads' are closed
    store.close()
    assert not store._conns
    with pytest.raises(StoreUnavailableError, match="closed"):
        store.get("s", "k")

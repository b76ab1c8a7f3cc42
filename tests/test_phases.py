"""Atomic phases: resume after the last recovery point; foreign calls deduped by derived keys;
crash tests with a fake payment provider process that counts its real charges."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from idempo import Idempotency
from idempo.phases import Phase, PhaseContext
from idempo.stores.memory import MemoryStore
from tests.conftest import POSTGRES_URL, cleanup, store_url

ROOT = Path(__file__).resolve().parent.parent


def test_a_failed_phase_resumes_without_redoing_earlier_ones() -> None:
    """Phase 2 fails once: the retry skips phase 1 (its result comes from the recovery point)."""
    idem = Idempotency(MemoryStore(), lease=5)
    calls = {"one": 0, "two": 0}

    def one(ctx: PhaseContext) -> int:
        calls["one"] += 1
        return 41

    def two(ctx: PhaseContext) -> int:
        calls["two"] += 1
        if calls["two"] == 1:
            raise RuntimeError("provider timeout")
        return ctx.results["one"] + 1

    phases = [Phase("one", one), Phase("two", two)]
    with pytest.raises(RuntimeError):
        idem.run_phases(phases, key="op-1")
    assert idem.run_phases(phases, key="op-1") == 42
    assert idem.run_phases(phases, key="op-1") == 42  # completed: replayed
    assert calls == {"one": 1, "two": 2}


def test_foreign_keys_are_stable_and_distinct() -> None:
    """The derived key is the same on every retry, different per phase, key and scope."""
    a = PhaseContext("s", "k", {}, None)
    assert a.foreign_key("charge") == PhaseContext("s", "k", {}, None).foreign_key("charge")
    assert a.foreign_key("charge") != a.foreign_key("refund")
    assert a.foreign_key("charge") != PhaseContext("s", "k2", {}, None).foreign_key("charge")
    assert a.foreign_key("charge") != PhaseContext("t", "k", {}, None).foreign_key("charge")


def test_phases_need_distinct_names_and_a_connection_for_local_ones() -> None:
    """Misdeclared phases are refused before anything runs."""
    idem = Idempotency(MemoryStore())
    with pytest.raises(ValueError, match="distinct"):
        idem.run_phases([Phase("a", lambda c: 1), Phase("a", lambda c: 2)], key="k")
    with pytest.raises(ValueError, match="conn"):
        idem.run_phases([Phase("a", lambda c: 1, local=True)], key="k")


# -- crash tests ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_provider"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)
    proc.stdout.close()


def provider_charges(provider: str, foreign_key: str) -> int:
    with urllib.request.urlopen(f"{provider}/count?key={foreign_key}", timeout=10) as r:
        return int(json.loads(r.read())["charges"])


def foreign_key(key: str) -> str:
    return "idempo-" + hashlib.sha256(f"\x00{key}\x00charge".encode()).hexdigest()[:40]


CRASHES = ["after_foreign_call", "after_charge_point", "mid_local", "after_local"]


def run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.phases_worker", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "db",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
@pytest.mark.parametrize("crash", CRASHES)
def test_crash_at_every_point_charges_once(
    provider: str, tmp_path: Path, db: str, crash: str
) -> None:
    """Killed at each point, then retried: the provider charged once, one order row exists,
    and the retry returns that charge."""
    key = f"order-{uuid.uuid4().hex[:8]}"
    if db == "sqlite":
        path = tmp_path / "app.db"
        with sqlite3.connect(path) as c:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("CREATE TABLE orders (order_id TEXT, charge_id TEXT)")
        store, options, db_url = f"sqlite:///{path}", {}, f"sqlite:///{path}"
    elif db == "mysql":
        from tests.conftest import MYSQL_URL, require_service

        require_service("mysql")
        database = f"idempo_phases_{uuid.uuid4().hex[:8]}"  # a database of its own
        mysql_exec(f"CREATE DATABASE `{database}`")
        store = db_url = MYSQL_URL.rsplit("/", 1)[0] + "/" + database
        options = {}
    else:
        store, options = store_url("postgres", tmp_path)
        db_url = POSTGRES_URL
    try:
        if db == "postgres":
            setup = Idempotency(store, store_options=options)
            try:
                setup.store.migrate()
            finally:
                setup.close()  # an unclosed pool is collected in its own worker thread: an error
            with psycopg.connect(POSTGRES_URL, autocommit=True) as c:
                c.execute(
                    f'CREATE TABLE "{options["schema"]}".orders (order_id text, charge_id text)'
                )
            db_url = f"{POSTGRES_URL}?options=-csearch_path%3D{options['schema']}"
        if db == "mysql":
            mysql_exec(f"CREATE TABLE `{database}`.orders (order_id TEXT, charge_id TEXT)")
        args = [store, json.dumps(options), db, db_url, provider, key]
        killed = run([*args, crash])
        assert killed.returncode == -9, killed.stderr
        retried = run([*args, "none"])
        assert retried.returncode == 0, retried.stderr
        result: dict[str, Any] = json.loads(retried.stdout)
        assert provider_charges(provider, foreign_key(key)) == 1
        rows = order_rows(db, db_url, key)
        assert rows == [(key, result["charge_id"])]
    finally:
        if db == "postgres":
            cleanup(db, options)
        if db == "mysql":
            mysql_exec(f"DROP DATABASE IF EXISTS `{database}`")


def mysql_exec(sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import pymysql

    from idempo.stores.mysql import connect_kwargs
    from tests.conftest import MYSQL_URL

    conn = pymysql.connect(**connect_kwargs(MYSQL_URL), autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute(sql, params or None)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []
    finally:
        conn.close()


def order_rows(db: str, db_url: str, key: str) -> list[tuple[str, str]]:
    if db == "mysql":
        database = db_url.rsplit("/", 1)[1]
        rows = mysql_exec(f"SELECT * FROM `{database}`.orders WHERE order_id = %s", key)
        return rows  # type: ignore[return-value]
    if db == "sqlite":
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as c:
            return [tuple(r) for r in c.execute("SELECT * FROM orders WHERE order_id = ?", (key,))]  # type: ignore[misc]
    with psycopg.connect(db_url) as c:
        return [tuple(r) for r in c.execute("SELECT * FROM orders WHERE order_id = %s", (key,))]  # type: ignore[misc]


def test_recover_command_resumes_interrupted_operations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`idempo recover --call module:fn KEY` resumes after the last recovery point: the phase
    done before the failure is not repeated; recovering again replays."""
    from click.testing import CliRunner

    from idempo.cli import main
    from tests.recover_target import place_order

    path = tmp_path / "app.db"
    with sqlite3.connect(path) as c:
        c.execute("CREATE TABLE log (key TEXT, step TEXT)")
    monkeypatch.setenv("IDEMPO_RECOVER_DB", str(path))
    monkeypatch.setenv("IDEMPO_RECOVER_FAIL", "1")
    with pytest.raises(RuntimeError, match="courier"):
        place_order("o-9")
    monkeypatch.setenv("IDEMPO_RECOVER_FAIL", "0")
    runner = CliRunner()
    first = runner.invoke(main, ["recover", "--call", "tests.recover_target:place_order", "o-9"])
    assert first.exit_code == 0, first.output
    assert "o-9: done: 'shipped'" in first.output
    again = runner.invoke(main, ["recover", "--call", "tests.recover_target:place_order", "o-9"])
    assert again.exit_code == 0
    with sqlite3.connect(path) as c:
        steps = [r[0] for r in c.execute("SELECT step FROM log WHERE key = 'o-9' ORDER BY rowid")]
    assert steps == ["reserve", "ship"]
    bad = runner.invoke(main, ["recover", "--call", "nonexistent.module:fn", "k"])
    assert bad.exit_code != 0
    assert "cannot load" in bad.output

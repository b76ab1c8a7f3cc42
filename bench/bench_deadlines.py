"""The happy-path cost of bounded store operations (DESIGN section 4): ``get`` latency with and
without the deadline, on the local PostgreSQL and MariaDB, rounds interleaved so that machine
noise falls on both alike; and the watchdog's own cost per round trip, alone.

    .venv/bin/python bench/bench_deadlines.py [--calls 3000] [--rounds 5]

Uses private schemas and tables, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import socket
import statistics
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql

from idempo import open_async_store, open_store
from idempo.stores import _watchdog
from idempo.stores._async import postgres as async_postgres
from idempo.stores._sync import postgres as sync_postgres
from idempo.stores.mysql import connect_kwargs

PG = "postgresql://postgres@127.0.0.1:5432/test"
MY = "mysql://root@127.0.0.1:3306/test"


class _NoWatchdog:
    @contextlib.contextmanager
    def guard(self, fd: int, timeout: float, what: str) -> Iterator[Any]:
        yield _watchdog.Watch(_watchdog.WATCHDOG, -1, timeout, what)


def _sync_get(store: Any, calls: int) -> float:
    store.get("s", "warm")
    started = time.perf_counter()
    for i in range(calls):
        store.get("s", f"k{i % 50}")
    return (time.perf_counter() - started) / calls * 1e6


async def _async_get(url: str, calls: int, **options: Any) -> float:
    store = open_async_store(url, **options)
    try:
        await store.get("s", "warm")
        started = time.perf_counter()
        for i in range(calls):
            await store.get("s", f"k{i % 50}")
        return (time.perf_counter() - started) / calls * 1e6
    finally:
        await store.close()


def _postgres(watched: bool, schema: str, calls: int) -> tuple[float, float]:
    for module in (sync_postgres, async_postgres):
        module.WATCHDOG = _watchdog.WATCHDOG if watched else _NoWatchdog()  # type: ignore[assignment]
    store = open_store(PG, schema=schema)
    try:
        sync = _sync_get(store, calls)
    finally:
        store.close()
    return sync, asyncio.run(_async_get(PG, calls, schema=schema))


def _mariadb(bounded: bool, table: str, calls: int) -> float:
    unbounded = {"read_timeout": None, "write_timeout": None}
    store = open_store(MY, table=table, **({} if bounded else unbounded))
    try:
        return _sync_get(store, calls)
    finally:
        store.close()


def _guard_alone(calls: int) -> float:
    a, b = socket.socketpair()
    try:
        started = time.perf_counter()
        for _ in range(calls):
            with _watchdog.WATCHDOG.guard(a.fileno(), 5.0, "bench"):
                pass
        return (time.perf_counter() - started) / calls * 1e6
    finally:
        a.close()
        b.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    schema, table = f"bench_{secrets.token_hex(4)}", f"bench_{secrets.token_hex(4)}"
    rows: dict[str, list[float]] = {}
    try:
        for _ in range(args.rounds):
            for watched in (False, True):
                sync, async_ = _postgres(watched, schema, args.calls)
                rows.setdefault(f"postgres sync,  deadline={watched}", []).append(sync)
                rows.setdefault(f"postgres async, deadline={watched}", []).append(async_)
            for bounded in (False, True):
                mariadb = _mariadb(bounded, table, args.calls)
                rows.setdefault(f"mariadb sync,   deadline={bounded}", []).append(mariadb)
        print(f"get, microseconds per call (median of {args.rounds} rounds of {args.calls})")
        for name, values in sorted(rows.items()):
            print(f"  {name:32} {statistics.median(values):7.1f}")
        print(f"watchdog guard alone: {_guard_alone(200_000):.2f} us per round trip")
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn2 = pymysql.connect(**connect_kwargs(MY), autocommit=True)
        try:
            cursor = conn2.cursor()
            cursor.execute(f"DROP TABLE IF EXISTS `{table}`")
            for suffix in ("claim", "hold", "purge"):
                cursor.execute(f"DROP PROCEDURE IF EXISTS `{table}_{suffix}`")
        finally:
            conn2.close()


if __name__ == "__main__":
    main()

"""Transactional mode's cost: the same transaction with and without idempo, as a ratio.

    .venv/bin/python bench/bench_transactional.py --n 1000 --repeats 5

Each transaction inserts one row (the effect) and commits. With idempo it also claims and
completes the key: two statements more, on the same connection, and no commit of its own.
Rounds alternate bare and idempo so that machine noise falls on both alike. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

from idempo import Idempotency

POSTGRES_URL = os.environ.get("IDEMPO_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def rounds(fns: dict[str, Callable[[int], None]], n: int, repeats: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for i in range(n):
                fn(i)
            samples[name].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in samples.items()}


def bench_sqlite(n: int, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE charges (order_id TEXT, amount INTEGER)")
        idem = Idempotency(f"sqlite:///{path}")
        idem.store.migrate()
        run = uuid.uuid4().hex[:6]
        seq = iter(range(10**9))

        def bare(i: int) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO charges VALUES (?, 10)", (f"b{run}{next(seq)}",))
            conn.execute("COMMIT")

        def with_idempo(i: int) -> None:
            key = f"i{run}{next(seq)}"
            with idem.transaction(conn, key=key) as tx:
                conn.execute("INSERT INTO charges VALUES (?, 10)", (key,))
                tx.result = None
            conn.execute("COMMIT")

        out = rounds({"bare": bare, "idempo": with_idempo}, n, repeats)
        conn.close()
        idem.close()
        return out


def bench_postgres(n: int, repeats: int) -> dict[str, float]:
    schema = f"idempo_bench_{uuid.uuid4().hex[:8]}"
    idem = Idempotency(POSTGRES_URL, store_options={"schema": schema})
    idem.store.migrate()
    conn = psycopg.connect(POSTGRES_URL)
    conn.execute(f'CREATE TABLE "{schema}".charges (order_id text, amount int)')
    conn.commit()
    run = uuid.uuid4().hex[:6]
    seq = iter(range(10**9))
    insert = f'INSERT INTO "{schema}".charges VALUES (%s, 10)'

    def bare(i: int) -> None:
        conn.execute(insert, (f"b{run}{next(seq)}",))
        conn.commit()

    def with_idempo(i: int) -> None:
        key = f"i{run}{next(seq)}"
        with idem.transaction(conn, key=key) as tx:
            conn.execute(insert, (key,))
            tx.result = None
        conn.commit()

    try:
        return rounds({"bare": bare, "idempo": with_idempo}, n, repeats)
    finally:
        conn.close()
        idem.close()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="transactions per round")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (median taken)")
    args = parser.parse_args(argv)
    print(f"Time per transaction ({args.n} x {args.repeats} rounds, median)")
    print(f"{'database':10}{'bare':>12}{'idempo':>12}{'ratio':>8}")
    for name, bench in (("sqlite", bench_sqlite), ("postgres", bench_postgres)):
        t = bench(args.n, args.repeats)
        print(
            f"{name:10}{t['bare'] * 1e6:>10.1f}us{t['idempo'] * 1e6:>10.1f}us"
            f"{t['idempo'] / t['bare']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

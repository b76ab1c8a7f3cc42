"""PostgreSQL: idempo's store and decorator against hand-written psycopg, in one run.

    .venv/bin/python bench/bench_pg.py --calls 300 --repeats 7

The floor (DESIGN section 8) is hand-written psycopg 3 on one kept autocommit connection, on a
minimal table of its own (primary key, state, outcome, expiry):

* new key: ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` then ``UPDATE`` (two statements);
* replay: one ``SELECT`` of the stored outcome.

Against it, in interleaved rounds (every round runs every row once; the median over rounds is
reported): the store's own calls (``claim`` + ``complete`` for a new key, ``claim`` of a
completed record for a replay) and a decorated function on the same store. Wall time and the
client's CPU time per call are both shown; the ratio is of wall time.

Machine note: on a small machine a round trip's wall time depends on where the scheduler puts the
backend (same core as the client: ~30 us; another, idle one: ~100 us), per connection and by
chance; ``--pin CPU`` puts the client and both backends on one core, and the CPU columns (the
client's, and the backends' from /proc/PID/schedstat) do not depend on it.

It also counts, over the replays of one round, the WAL the server wrote
(``pg_current_wal_lsn``): a replay that is a read writes none.

Everything talks to 127.0.0.1, in a schema of its own in the ``test`` database, dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

from idempo import Idempotency, open_store
from idempo.stores.postgres import PostgresStore

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_cpu(pids: list[int]) -> float:
    """Seconds the server backends ``pids`` have run on a CPU (the scheduler's own count)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def per_call(
    fns: dict[str, Callable[[], None]], pids: list[int], n: int, repeats: int
) -> dict[str, tuple[float, float, float]]:
    """Median (wall, client cpu, server cpu) seconds per call of each fn, over interleaved
    rounds of n calls."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    srv: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            s0, c0, t0 = server_cpu(pids), time.process_time(), time.perf_counter()
            for _ in range(n):
                fn()
            wall[name].append((time.perf_counter() - t0) / n)
            cpu[name].append((time.process_time() - c0) / n)
            srv[name].append((server_cpu(pids) - s0) / n)
    med = statistics.median
    return {k: (med(wall[k]), med(cpu[k]), med(srv[k])) for k in fns}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per row per round")
    parser.add_argument("--repeats", type=int, default=7, help="rounds (median taken)")
    parser.add_argument("--url", default=POSTGRES_URL)
    parser.add_argument(
        "--pin",
        type=int,
        default=None,
        metavar="CPU",
        help="pin this process and its two server backends to one CPU: a round trip then never"
        " waits for another core to wake, which otherwise makes a connection 30 or 100 us per"
        " round trip by chance (needs the server on this machine, and the right to)",
    )
    parser.add_argument(
        "--prepare-threshold",
        default="default",
        help="psycopg prepare_threshold for the store's pool: default (5), 0, or none",
    )
    args = parser.parse_args(argv)

    schema = f"idempo_bench_pg_{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:8]
    admin = psycopg.connect(args.url, autocommit=True)
    options: dict[str, Any] = {
        "schema": schema,
        "auto_migrate": False,
        "min_size": 1,
        "max_size": 1,
    }
    if args.prepare_threshold != "default":
        pt = None if args.prepare_threshold == "none" else int(args.prepare_threshold)
        options["prepare_threshold"] = pt
    store = open_store(args.url, **options)
    assert isinstance(store, PostgresStore)
    try:
        store.migrate()
        floor = psycopg.connect(args.url, autocommit=True)
        floor.execute(
            f'CREATE TABLE "{schema}".floor (key text COLLATE "C" PRIMARY KEY, state text NOT NULL,'
            " outcome bytea, expires_at timestamptz NOT NULL)"
        )
        seq = iter(range(10**9))
        floor.execute(
            f"INSERT INTO \"{schema}\".floor VALUES ('done', 'completed', 'x', now() + '1h')"
        )
        ins = (
            f"INSERT INTO \"{schema}\".floor VALUES (%s, 'in_progress', NULL,"
            " clock_timestamp() + '30s') ON CONFLICT DO NOTHING RETURNING true"
        )
        upd = (
            f"UPDATE \"{schema}\".floor SET state = 'completed', outcome = %s,"
            " expires_at = clock_timestamp() + '1h' WHERE key = %s"
        )
        sel = f'SELECT state, outcome, expires_at FROM "{schema}".floor WHERE key = %s'

        def floor_new() -> None:
            k = f"{run}-{next(seq)}"
            if floor.execute(ins, (k,)).fetchone():
                floor.execute(upd, (b'{"v":1}', k))

        def floor_replay() -> None:
            floor.execute(sel, ("done",)).fetchone()

        # The claim function called by hand on the floor's connection: what the store adds
        # around one statement (pool, watchdog, rows to a Record) is the difference.
        claim_args = ("bench", "done", "fp", "tok2", 30.0, 3600.0)

        def raw_claim_replay() -> None:
            floor.execute(store._sql.claim, claim_args, prepare=True).fetchall()

        def store_new() -> None:
            k = f"{run}-{next(seq)}"
            store.claim("bench", k, "fp", "tok", lease=30, ttl=600)
            store.complete("bench", k, "tok", b'{"v":1}', ttl=600)

        store.claim("bench", "done", "fp", "tok", lease=30, ttl=3600)
        store.complete("bench", "done", "tok", b'{"v":1}', ttl=3600)

        def store_replay() -> None:
            store.claim("bench", "done", "fp", "tok2", lease=30, ttl=3600)

        idem = Idempotency(store, ttl=600, lease=30)

        @idem.idempotent(key=lambda order_id: order_id, name="bench")
        def charge(order_id: str) -> dict[str, int]:
            return {"v": 1}

        charge("done-idem")

        def idem_new() -> None:
            charge(f"{run}-{next(seq)}")

        def idem_replay() -> None:
            charge("done-idem")

        fns = {
            "floor new (INSERT+UPDATE)": floor_new,
            "floor replay (SELECT)": floor_replay,
            "psycopg: claim fn (replay)": raw_claim_replay,
            "store claim+complete": store_new,
            "store claim (replay)": store_replay,
            "idempo new key": idem_new,
            "idempo replay": idem_replay,
        }
        for fn in fns.values():  # warm up: connect, and prepare on every connection
            for _ in range(20):
                fn()
        lsn0 = admin.execute("SELECT pg_current_wal_lsn()").fetchone()
        for _ in range(args.calls):
            store_replay()
        lsn1 = admin.execute("SELECT pg_current_wal_lsn()").fetchone()
        assert lsn0 is not None
        assert lsn1 is not None
        wal = admin.execute("SELECT %s::pg_lsn - %s::pg_lsn", (lsn1[0], lsn0[0])).fetchone()
        assert wal is not None

        with store._pool.connection() as conn:
            pids = [floor.info.backend_pid, conn.info.backend_pid]
        if args.pin is not None:
            for pid in (0, *pids):
                os.sched_setaffinity(pid, {args.pin})
        t = per_call(fns, pids, args.calls, args.repeats)
        print(
            f"PostgreSQL, {args.calls} calls x {args.repeats} interleaved rounds, median;"
            f" prepare_threshold={args.prepare_threshold}; pinned to CPU {args.pin}"
        )
        print(
            f"{'':28}{'wall':>10}{'client':>10}{'server':>10}{'ratio':>8}{'cpu ratio':>10}"
            "   (cpu: client + server)"
        )
        fl_new, fl_rep = t["floor new (INSERT+UPDATE)"], t["floor replay (SELECT)"]
        for name, (w, c, sv) in t.items():
            base = fl_rep if "replay" in name else fl_new
            print(
                f"{name:28}{w * 1e6:>8.1f}us{c * 1e6:>8.1f}us{sv * 1e6:>8.1f}us"
                f"{w / base[0]:>8.2f}{(c + sv) / (base[1] + base[2]):>10.2f}"
            )
        print(f"WAL written by {args.calls} store replays: {int(wal[0])} bytes")
        floor.close()
    finally:
        store.close()
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Core benchmark: store round trips per operation, and the decorator's cost against a floor.

    make bench                       # or: .venv/bin/python bench/bench_core.py --calls 2000

For each store it prints:

* round trips per new key, per replay, per rejected duplicate (in flight) and per key reuse
  (mismatch). Counted twice: store operations issued by the engine (client side), and what the
  server saw: Redis ``INFO commandstats`` calls, PostgreSQL ``pg_stat_database.xact_commit``
  of a database used by nothing else (autocommit: one transaction per statement). SQLite and
  memory have no server; their client count is the whole story.
* time per decorated call (new key, and replay) as a ratio to a hand-written minimal Redis
  protocol measured in the same run: ``SET key NX PX lease`` then ``SET key result PX ttl``
  (new key), ``SET NX`` failing then ``GET`` (replay). The target is 1.5x for a new key.

Everything talks to 127.0.0.1 only and runs a bounded number of calls.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import redis

from idempo import Idempotency, open_store
from idempo.errors import InProgressError, KeyReuseError
from idempo.stores.base import Store

REDIS_URL = os.environ.get("IDEMPO_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("IDEMPO_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


class CountingStore:
    """Wraps a store and counts the contract operations the engine issues (client side)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name in {"claim", "complete", "extend", "release", "get", "delete"}:

            def counted(*args: Any, **kwargs: Any) -> Any:
                self.calls += 1
                return attr(*args, **kwargs)

            return counted
        return attr


# -- server-side counters -----------------------------------------------------------------------


class RedisCounter:
    def __init__(self) -> None:
        self.client = redis.Redis.from_url(REDIS_URL)

    def read(self) -> int:
        # commandstats also counts the commands a script runs inside the server (TIME, HMGET,
        # HSET...); what crosses the network is the EVALSHA (or EVAL) itself.
        stats = self.client.info("commandstats")
        return sum(stats.get(k, {}).get("calls", 0) for k in ("cmdstat_evalsha", "cmdstat_eval"))


class PostgresCounter:
    """Committed transactions of one private database, read from another connection."""

    def __init__(self, dbname: str) -> None:
        self.dbname = dbname
        self.conn = psycopg.connect(POSTGRES_URL, autocommit=True)

    def read(self) -> int:
        # Backends flush their statistics within about a second of going idle.
        time.sleep(1.2)
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = self.conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.dbname,)
        ).fetchone()
        assert row is not None
        return int(row[0])


@contextlib.contextmanager
def private_postgres_db() -> Iterator[tuple[str, str]]:
    """A database for the benchmark alone, so its transaction count is ours."""
    name = f"idempo_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    try:
        yield url, name
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- round trips ----------------------------------------------------------------------------------


def round_trips(
    make_store: Callable[[], Store], server: Callable[[], int] | None, n: int
) -> dict[str, Any]:
    """Each phase runs on a fresh store that is closed before the server count is read (a
    PostgreSQL backend flushes its statistics when it exits)."""
    holding = threading.Event()
    release = threading.Event()
    run = uuid.uuid4().hex[:8]
    keys = [f"{run}-{i}" for i in range(n)]

    def measure(phase: Callable[[Callable[..., Any]], None]) -> tuple[float, float | None]:
        counting = CountingStore(make_store())
        idem = Idempotency(counting, ttl=600, lease=600)  # type: ignore[arg-type]

        @idem.idempotent(key=lambda k, v: k, name="bench")
        def op(k: str, v: int) -> dict[str, int]:
            if v == -1:  # the in-flight holder: park until told
                holding.set()
                release.wait(60)
            return {"v": v}

        op(f"{run}-warm", 0)  # connect and prepare outside the count
        before_c = counting.calls
        before_s = server() if server else None
        phase(op)
        after_c = counting.calls
        counting.inner.close()
        after_s = server() if server else None
        client = (after_c - before_c) / n
        srv = None if before_s is None or after_s is None else (after_s - before_s) / n
        return client, srv

    def new(op: Callable[..., Any]) -> None:
        for k in keys:
            op(k, 1)

    def mismatches(op: Callable[..., Any]) -> None:
        for k in keys:
            with contextlib.suppress(KeyReuseError):
                op(k, 2)

    def duplicates(op: Callable[..., Any]) -> None:
        # One holder parks inside the operation (its claim and complete add 2 to the count:
        # negligible over n calls); every other call is a rejected duplicate.
        holder = threading.Thread(target=op, args=(f"{run}-held", -1))
        holder.start()
        holding.wait(10)
        for _ in keys:
            with contextlib.suppress(InProgressError):
                op(f"{run}-held", -1)
        release.set()
        holder.join(10)

    return {
        "new key": measure(new),
        "replay": measure(new),  # the same keys again: every call replays
        "key reuse": measure(mismatches),
        "in flight": measure(duplicates),
    }


# -- timing ---------------------------------------------------------------------------------------


def per_call(fns: dict[str, Callable[[int], None]], n: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each fn over ``repeats`` rounds of ``n`` calls; every round
    runs all of them one after another, so that machine noise falls on all alike."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for i in range(n):
                fn(i)
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(v) for name, v in samples.items()}


def timings(stores: dict[str, Store], n: int, repeats: int) -> dict[str, dict[str, float]]:
    client = redis.Redis.from_url(REDIS_URL)
    run = uuid.uuid4().hex[:8]
    counter = [0]

    def floor_new(i: int) -> None:
        counter[0] += 1
        k = f"idempo-bench-floor:{run}:{counter[0]}"
        if client.set(k, b"in_progress", nx=True, px=30_000):
            client.set(k, b'{"v":1}', px=86_400_000)

    client.set(f"idempo-bench-floor:{run}:done", b'{"v":1}', px=600_000)

    def floor_replay(i: int) -> None:
        k = f"idempo-bench-floor:{run}:done"
        if not client.set(k, b"in_progress", nx=True, px=30_000):
            client.get(k)

    def bare(i: int) -> None:
        _ = {"v": i}

    fns: dict[tuple[str, str], Callable[[int], None]] = {
        ("bare function", "new key"): bare,
        ("bare function", "replay"): bare,
        ("floor: Redis SET NX + SET", "new key"): floor_new,
        ("floor: Redis SET NX + SET", "replay"): floor_replay,
    }
    for name, store in stores.items():
        idem = Idempotency(store, ttl=600, lease=30)

        @idem.idempotent(key=lambda order_id, amount: order_id, name="bench-timing")
        def charge(order_id: str, amount: int) -> dict[str, int]:
            return {"amount": amount}

        keys = iter(range(10**9))

        def new(i: int, charge: Any = charge, keys: Any = keys) -> None:
            charge(f"{run}-{next(keys)}", 1)

        charge(f"{run}-replayed", 1)

        def replay(i: int, charge: Any = charge) -> None:
            charge(f"{run}-replayed", 1)

        fns[f"idempo + {name}", "new key"] = new
        fns[f"idempo + {name}", "replay"] = replay
    timed = per_call(fns, n, repeats)  # type: ignore[arg-type]
    results: dict[str, dict[str, float]] = {}
    for (row, col), seconds in timed.items():  # type: ignore[misc]
        results.setdefault(row, {})[col] = seconds
    leftovers = list(client.scan_iter(match=f"idempo-bench-floor:{run}:*", count=1000))
    if leftovers:
        client.delete(*leftovers)
    client.close()
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per timing run")
    parser.add_argument("--repeats", type=int, default=5, help="timing runs (median taken)")
    parser.add_argument("--rt-calls", type=int, default=300, help="calls per round-trip count")
    args = parser.parse_args(argv)

    prefix = f"idempo-bench-{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory() as tmp, private_postgres_db() as (pg_url, pg_db):
        sqlite_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        memory = open_store("memory://")
        factories: dict[str, Callable[[], Store]] = {
            "memory": lambda: memory,
            "sqlite": lambda: open_store(sqlite_url),
            "redis": lambda: open_store(REDIS_URL, prefix=prefix),
            "postgres": lambda: open_store(pg_url, auto_migrate=False),
        }
        stores = {name: make() for name, make in factories.items()}
        stores["postgres"].migrate()
        stores["sqlite"].migrate()
        servers: dict[str, Callable[[], int] | None] = {
            "memory": None,
            "sqlite": None,
            "redis": RedisCounter().read,
            "postgres": PostgresCounter(pg_db).read,
        }
        print(f"Round trips per call ({args.rt_calls} calls each; client ops / server count)")
        print(f"{'store':10}{'new key':>16}{'replay':>16}{'in flight':>16}{'key reuse':>16}")
        for name, make in factories.items():
            rt = round_trips(make, servers[name], args.rt_calls)
            cells = []
            for col in ("new key", "replay", "in flight", "key reuse"):
                client_n, server_n = rt[col]
                cells.append(
                    f"{client_n:.2f} / {server_n:.2f}"
                    if server_n is not None
                    else f"{client_n:.2f}"
                )
            print(f"{name:10}" + "".join(f"{c:>16}" for c in cells))

        print()
        print(f"Time per call ({args.calls} calls x {args.repeats} runs, median; ratio to floor)")
        t = timings(stores, args.calls, args.repeats)
        floor = t["floor: Redis SET NX + SET"]
        print(f"{'':28}{'new key':>12}{'ratio':>8}{'replay':>12}{'ratio':>8}")
        for name, row in t.items():
            new_ratio = row["new key"] / floor["new key"]
            replay_ratio = row["replay"] / floor["replay"] if row["replay"] else 0.0
            print(
                f"{name:28}{row['new key'] * 1e6:>10.1f}us{new_ratio:>8.2f}"
                f"{row['replay'] * 1e6:>10.1f}us{replay_ratio:>8.2f}"
            )
        for store in stores.values():
            store.close()
        cleanup = redis.Redis.from_url(REDIS_URL)
        keys = list(cleanup.scan_iter(match=prefix + "*", count=1000))
        if keys:
            cleanup.delete(*keys)
        cleanup.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

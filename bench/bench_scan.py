"""Memory and time of listing a big store page by page: scan() and stats() over 100k records.

    .venv/bin/python bench/bench_scan.py [--records 100000] [--page 500] [--stores postgres,redis]

Fills a private PostgreSQL schema and a private Redis prefix with ``--records`` records (one in
ten in progress, the rest completed with a 1 KiB outcome, written straight in the store's
layout so that filling is quick), then, per store:

* walks every page of ``scan()`` under tracemalloc, keeping only a count: the peak is what
  listing costs, and it must not grow with the number of records;
* for contrast, the peak of holding every listed record in one list (what a full load costs);
* the time of a full listing, of ``scan(state="in_progress")`` and of ``stats()``;
* ``idempo keys list --limit 0 --format json`` in a real process, its maximum RSS.

Everything it creates is dropped at the end. Talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from idempo import open_store
from idempo.core.records import State
from idempo.stores.base import Store

REDIS_URL = os.environ.get("IDEMPO_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("IDEMPO_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
OUTCOME = bytes(range(256)) * 4  # 1 KiB: a listing must not carry outcomes


def fill_postgres(schema: str, n: int) -> None:
    store = open_store(POSTGRES_URL, schema=schema)
    store.migrate()
    store.close()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            f"""
            INSERT INTO "{schema}".idempo_records
                (scope, key, fingerprint, state, token, lease_until, outcome,
                 created_at, expires_at, format)
            SELECT 'tenant-' || (i %% 10), 'key-' || i, 'fp',
                CASE WHEN i %% 10 = 0 THEN 'in_progress' ELSE 'completed' END,
                CASE WHEN i %% 10 = 0 THEN 'token' END,
                CASE WHEN i %% 10 = 0 THEN now() + interval '30 s' END,
                CASE WHEN i %% 10 <> 0 THEN %s::bytea END,
                now(), now() + interval '1 day', 1
            FROM generate_series(1, %s) AS i
            """,
            (OUTCOME, n),
        )
        conn.execute(f'ANALYZE "{schema}".idempo_records')


def fill_redis(prefix: str, n: int) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    now = int(time.time() * 1000)
    pipe = client.pipeline(transaction=False)
    for i in range(1, n + 1):
        scope, key = f"tenant-{i % 10}", f"key-{i}"
        name = f"{prefix}{len(scope)}:{scope}:{key}"
        fields: dict[str, Any] = {"v": "1", "fingerprint": "fp", "created_at": now}
        fields["expires_at"] = now + 86_400_000
        if i % 10 == 0:
            fields.update(state="in_progress", token="token", lease_until=now + 30_000)
        else:
            fields.update(state="completed", outcome=OUTCOME)
        pipe.hset(name, mapping=fields)
        pipe.pexpireat(name, fields["expires_at"])
        if i % 5000 == 0:
            pipe.execute()
    pipe.execute()
    client.close()


def walk(store: Store, page: int, keep: bool, **filters: Any) -> tuple[int, int, list[Any]]:
    """(records, pages, the records if ``keep``) of a whole scan."""
    count = pages = 0
    kept: list[Any] = []
    cursor = None
    while True:
        result = store.scan(cursor=cursor, limit=page, **filters)
        pages += 1
        count += len(result.records)
        if keep:
            kept.extend(result.records)
        cursor = result.cursor
        if cursor is None:
            return count, pages, kept


def peak(fn: Callable[[], Any]) -> tuple[Any, float]:
    """fn's result and the peak of memory it allocated (MiB), by tracemalloc."""
    tracemalloc.start()
    try:
        result = fn()
        _, top = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, top / 2**20


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def cli_rss(url: str, options: dict[str, Any]) -> tuple[int, float]:
    """Records printed and max RSS (MiB) of `idempo keys list --limit 0 --format json`.

    Measured from a small parent of its own: a child forked from this process would start with
    this process's pages resident, and ru_maxrss would count them."""
    cli = (
        "import sys, idempo.cli as c; from idempo import open_store as o;"
        f" c.open_store = lambda u: o(u, **{options!r}); sys.exit(c.main())"
    )
    parent = (
        "import resource, subprocess, sys;"
        " done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, check=True);"
        " import json; n = len(json.loads(done.stdout));"
        " print(n, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    args = ("keys", "list", "--store", url, "--limit", "0", "--format", "json")
    done = subprocess.run(
        [sys.executable, "-c", parent, sys.executable, "-c", cli, *args],
        capture_output=True,
        text=True,
        check=True,
    )
    printed, kib = done.stdout.split()
    return int(printed), int(kib) / 1024


def run(name: str, store: Store, url: str, options: dict[str, Any], page: int) -> None:
    (count, pages, _), listing = peak(lambda: walk(store, page, keep=False))
    (_, _, kept), full = peak(lambda: walk(store, page, keep=True))
    _, seconds = timed(lambda: walk(store, page, keep=False))
    (flight, _, _), flight_s = timed(lambda: walk(store, page, False, state=State.IN_PROGRESS))
    stats, stats_s = timed(store.stats)
    printed, rss = cli_rss(url, options)
    print(f"{name}: {count} records in {pages} pages of {page}")
    print(f"  scan, page by page: peak {listing:6.2f} MiB (tracemalloc), {seconds:5.2f} s")
    print(f"  all {len(kept)} records kept in a list: peak {full:6.2f} MiB (for contrast)")
    print(f"  scan(state=in_progress): {flight} records, {flight_s:5.2f} s")
    print(f"  stats(): {stats_s:5.3f} s ({stats.in_progress} in progress,")
    print(f"           {stats.completed} completed, {stats.expired} expired)")
    print(f"  idempo keys list --limit 0 --format json: {printed} records, max RSS {rss:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--page", type=int, default=500)
    parser.add_argument("--stores", default="postgres,redis")
    args = parser.parse_args()
    run_id = uuid.uuid4().hex[:8]
    if "postgres" in args.stores:
        schema = f"idempo_bench_scan_{run_id}"
        try:
            fill_postgres(schema, args.records)
            store = open_store(POSTGRES_URL, schema=schema)
            try:
                run("postgres", store, POSTGRES_URL, {"schema": schema}, args.page)
            finally:
                store.close()
        finally:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    if "redis" in args.stores:
        prefix = f"idempo-bench-scan-{run_id}:"
        try:
            fill_redis(prefix, args.records)
            store = open_store(REDIS_URL, prefix=prefix)
            try:
                run("redis", store, REDIS_URL, {"prefix": prefix}, args.page)
            finally:
                store.close()
        finally:
            client = redis.Redis.from_url(REDIS_URL)
            batch = list(client.scan_iter(match=prefix + "*", count=5000))
            for i in range(0, len(batch), 5000):
                client.delete(*batch[i : i + 5000])
            client.close()


if __name__ == "__main__":
    main()

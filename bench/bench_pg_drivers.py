"""asyncpg against psycopg 3 (async) for one SELECT on a kept connection: time and CPU per call.

    .venv/bin/pip install asyncpg   # not a dependency of idempo: for this measurement only
    .venv/bin/python bench/bench_pg_drivers.py --calls 500 --repeats 7 [--uvloop] [--pin 1]

Both drivers run the same prepared statement (a primary-key SELECT of three columns, one of them
bytea) on one connection each, in interleaved rounds on one event loop; the median over rounds
is printed, wall time and the client's CPU time per call (the server's work is the same
statement). Also psycopg's sync connection, for scale. Decision record 0010 has the result.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import psycopg

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


async def main_async(args: argparse.Namespace) -> None:
    import asyncpg  # type: ignore[import-not-found, unused-ignore]

    schema = f"idempo_bench_drv_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(args.url, autocommit=True)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    admin.execute(
        f'CREATE TABLE "{schema}".t (key text COLLATE "C" PRIMARY KEY, state text, outcome bytea)'
    )
    admin.execute(f"INSERT INTO \"{schema}\".t VALUES ('done', 'completed', '\\x7b7d')")
    query_pg = f'SELECT key, state, outcome FROM "{schema}".t WHERE key = %s'
    query_apg = f'SELECT key, state, outcome FROM "{schema}".t WHERE key = $1'
    try:
        apg = await asyncpg.connect(args.url)
        stmt = await apg.prepare(query_apg)
        pga = await psycopg.AsyncConnection.connect(args.url, autocommit=True)
        pgs = psycopg.connect(args.url, autocommit=True)
        pids = [await apg.fetchval("SELECT pg_backend_pid()"), pga.info.backend_pid]
        pids.append(pgs.info.backend_pid)
        if args.pin is not None:
            for pid in (0, *pids):
                os.sched_setaffinity(pid, {args.pin})

        async def asyncpg_fetch() -> None:
            await apg.fetch(query_apg, "done")  # asyncpg's statement cache: prepared once

        async def asyncpg_prepared() -> None:
            await stmt.fetch("done")

        async def psycopg_async() -> None:
            cur = await pga.execute(query_pg, ("done",), prepare=True)
            await cur.fetchall()

        async def psycopg_async_binary() -> None:
            cur = await pga.execute(query_pg, ("done",), prepare=True, binary=True)
            await cur.fetchall()

        async def psycopg_sync() -> None:  # blocks the loop: for scale only
            pgs.execute(query_pg, ("done",), prepare=True).fetchall()

        fns: dict[str, Callable[[], Awaitable[None]]] = {
            "asyncpg conn.fetch": asyncpg_fetch,
            "asyncpg prepared.fetch": asyncpg_prepared,
            "psycopg async": psycopg_async,
            "psycopg async, binary": psycopg_async_binary,
            "psycopg sync (scale)": psycopg_sync,
        }
        for fn in fns.values():
            for _ in range(50):
                await fn()
        wall: dict[str, list[float]] = {k: [] for k in fns}
        cpu: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.repeats):
            for name, fn in fns.items():
                c0, t0 = time.process_time(), time.perf_counter()
                for _ in range(args.calls):
                    await fn()
                wall[name].append((time.perf_counter() - t0) / args.calls)
                cpu[name].append((time.process_time() - c0) / args.calls)
        loop = "uvloop" if args.uvloop else "asyncio"
        print(
            f"One SELECT on a kept connection, {args.calls} calls x {args.repeats} rounds,"
            f" median; loop={loop}, pinned to CPU {args.pin}"
        )
        print(f"{'':26}{'wall':>10}{'cpu':>10}")
        for name in fns:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            print(f"{name:26}{w * 1e6:>8.1f}us{c * 1e6:>8.1f}us")
        await apg.close()
        await pga.close()
        pgs.close()
    finally:
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--url", default=POSTGRES_URL)
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--pin", type=int, default=None, metavar="CPU")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.run(main_async(args))
    else:
        asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

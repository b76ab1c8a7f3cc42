"""Client instructions per Redis store call, counted by callgrind (immune to a loaded machine).

    .venv/bin/python bench/callgrind_redis.py [--calls 200] [--baseline DIR] [--no-hiredis]

Each row runs one operation ``N`` and ``2N`` times under ``valgrind --tool=callgrind`` in a fresh
process; the difference of the two totals, divided by ``N``, is the cost of one call (start-up,
imports and connecting cancel out). Rows: hand-written redis-py (``GET``, ``SET NX PX`` + ``SET``)
and the store's replay claim and claim+complete, sync and async, for this tree and, with
``--baseline DIR``, for the store modules in DIR (``sync_redis.py``, ``async_redis.py``; see
bench_redis_calls.py). ``--no-hiredis`` hides hiredis from redis-py (pure-Python parser and
packer).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROWS = [
    "sync GET",
    "sync SET NX PX + SET",
    "sync store claim (replay)",
    "sync store claim+complete",
    "async GET",
    "async SET NX PX + SET",
    "async store claim (replay)",
    "async store claim+complete",
]

# The child: one row, n calls, after a warm-up.
CHILD = r"""
import asyncio, importlib.util, os, sys, uuid
if os.environ.get("CG_NO_HIREDIS"):
    sys.modules["hiredis"] = None
import redis, redis.asyncio
row, n, base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
url = os.environ.get("IDEMPO_REDIS_URL", "redis://127.0.0.1:6379/0")
prefix = f"idempo-cg-{uuid.uuid4().hex[:8]}:"
def load(name):
    spec = importlib.util.spec_from_file_location("cg_" + name, os.path.join(base, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
if base:
    RedisStore = load("sync_redis").RedisStore
    AsyncRedisStore = load("async_redis").AsyncRedisStore
else:
    from idempo.stores.redis import AsyncRedisStore, RedisStore
token = uuid.uuid4().hex
counter = iter(range(10**9))
if row.startswith("sync"):
    raw = redis.Redis.from_url(url)
    store = RedisStore.from_url(url, prefix=prefix)
    raw.set(prefix + "g", b"x" * 20, px=60_000)
    store.claim("s", "r", "fp", token, lease=30, ttl=60)
    store.complete("s", "r", token, b"x" * 20, ttl=60)
    def get():
        raw.get(prefix + "g")
    def floor_new():
        k = f"{prefix}f{next(counter)}"
        if raw.set(k, b"in_progress", nx=True, px=30_000):
            raw.set(k, b"x" * 20, px=60_000)
    def replay():
        store.claim("s", "r", "fp", token, lease=30, ttl=60)
    def new():
        k = f"k{next(counter)}"
        store.claim("s", k, "fp", token, lease=30, ttl=60)
        store.complete("s", k, token, b"x" * 20, ttl=60)
    fn = {"GET": get, "SET NX PX + SET": floor_new, "store claim (replay)": replay,
          "store claim+complete": new}[row.partition(" ")[2]]
    for _ in range(20):
        fn()
    for _ in range(n):
        fn()
else:
    async def main():
        raw = redis.asyncio.Redis.from_url(url)
        store = AsyncRedisStore.from_url(url, prefix=prefix)
        await raw.set(prefix + "g", b"x" * 20, px=60_000)
        await store.claim("s", "r", "fp", token, lease=30, ttl=60)
        await store.complete("s", "r", token, b"x" * 20, ttl=60)
        async def get():
            await raw.get(prefix + "g")
        async def floor_new():
            k = f"{prefix}f{next(counter)}"
            if await raw.set(k, b"in_progress", nx=True, px=30_000):
                await raw.set(k, b"x" * 20, px=60_000)
        async def replay():
            await store.claim("s", "r", "fp", token, lease=30, ttl=60)
        async def new():
            k = f"k{next(counter)}"
            await store.claim("s", k, "fp", token, lease=30, ttl=60)
            await store.complete("s", k, token, b"x" * 20, ttl=60)
        fn = {"GET": get, "SET NX PX + SET": floor_new, "store claim (replay)": replay,
              "store claim+complete": new}[row.partition(" ")[2]]
        for _ in range(20):
            await fn()
        for _ in range(n):
            await fn()
        await store.close()
        await raw.aclose()
    asyncio.run(main())
"""


def instructions(row: str, n: int, base: str, env: dict[str, str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                CHILD,
                row,
                str(n),
                base,
            ],
            check=True,
            env=env,
            capture_output=True,
        )
        match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
        assert match is not None
        return int(match.group(1))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--baseline", type=Path, metavar="DIR")
    parser.add_argument("--no-hiredis", action="store_true")
    parser.add_argument("--rows", default="", help="only rows containing this text")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.no_hiredis:
        env["CG_NO_HIREDIS"] = "1"
    n = args.calls
    trees = [("", "")]
    if args.baseline:
        trees.insert(0, ("baseline ", str(args.baseline.resolve())))
    print(
        f"client instructions per call (callgrind, {2 * n} minus {n} calls)"
        + (", hiredis hidden" if args.no_hiredis else "")
    )
    for row in ROWS:
        if args.rows not in row:
            continue
        for label, base in trees:
            if "store" not in row and label:
                continue
            per_call = (instructions(row, 2 * n, base, env) - instructions(row, n, base, env)) / n
            print(f"  {label + row:40}{per_call:12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

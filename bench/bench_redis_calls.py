"""The Redis store per call, sync and async, against hand-written redis-py in the same rounds.

    .venv/bin/python bench/bench_redis_calls.py [--calls 300] [--rounds 9] [--baseline DIR]

Rows (each a ratio to its floor, measured interleaved in every round; medians of the rounds):

* floor new: ``SET key v NX PX lease`` then ``SET key result PX ttl`` (two round trips);
  floor replay: one ``GET``.
* ``store claim+complete`` / ``store claim (replay)``: the store alone.
* ``idempo new key`` / ``idempo replay``: a decorated function over the store.

Each row is timed in wall µs and client CPU µs (``time.process_time``) per call; the async rows
run in one event loop, one call at a time (latency, not throughput).

``--baseline DIR``: a directory holding another version's ``sync_redis.py`` and
``async_redis.py`` (the store modules), timed alongside as extra rows, e.g.::

    mkdir -p /tmp/base && git show main:src/idempo/stores/_sync/redis.py > /tmp/base/sync_redis.py \
      && git show main:src/idempo/stores/_async/redis.py > /tmp/base/async_redis.py

``IDEMPO_BENCH_NO_HIREDIS=1``: redis-py's pure-Python parser and packer even where hiredis is
installed (compare the two in alternate runs).

Talks to 127.0.0.1 only; keys use a unique prefix and are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if os.environ.get("IDEMPO_BENCH_NO_HIREDIS"):
    sys.modules["hiredis"] = None  # type: ignore[assignment]  # redis-py then parses in Python

import redis
import redis.asyncio

from idempo import Idempotency
from idempo.stores.redis import AsyncRedisStore, RedisStore

REDIS_URL = os.environ.get("IDEMPO_REDIS_URL", "redis://127.0.0.1:6379/0")


def _parser() -> str:
    from redis.utils import HIREDIS_AVAILABLE

    return "hiredis" if HIREDIS_AVAILABLE else "pure Python"


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(
    title: str, rows: dict[str, tuple[list[float], list[float]]], floors: dict[str, str]
) -> None:
    print(title)
    med = {name: (statistics.median(w), statistics.median(c)) for name, (w, c) in rows.items()}
    for name, (wall, cpu) in med.items():
        floor = floors.get(name)
        ratio = f"{wall / med[floor][0]:6.2f}x {cpu / med[floor][1]:6.2f}x" if floor else " " * 15
        print(f"  {name:34}{wall * 1e6:8.1f}us {cpu * 1e6:8.1f}us cpu  {ratio}")


def run_sync(args: argparse.Namespace, prefix: str, stores: dict[str, Any]) -> None:
    raw = redis.Redis.from_url(REDIS_URL)
    counter = iter(range(10**9))
    fns: dict[str, Callable[[], Any]] = {}
    floors: dict[str, str] = {}

    def floor_new() -> None:
        k = f"{prefix}floor:{next(counter)}"
        if raw.set(k, b"in_progress", nx=True, px=30_000):
            raw.set(k, b'{"v":1}', px=600_000)

    raw.set(f"{prefix}floor-replay", b'{"v":1}', px=600_000)

    def floor_replay() -> None:
        raw.get(f"{prefix}floor-replay")

    fns["floor new (SET NX PX + SET)"] = floor_new
    fns["floor replay (GET)"] = floor_replay
    token = uuid.uuid4().hex
    for label, store in stores.items():
        idem = Idempotency(store, ttl=600, lease=30)

        @idem.idempotent(key=lambda order_id: order_id, name="bench")
        def charge(order_id: str) -> dict[str, int]:
            return {"amount": 1}

        def claim_complete(store: Any = store) -> None:
            k = f"k{next(counter)}"
            store.claim("s", k, "fp", token, lease=30, ttl=600)
            store.complete("s", k, token, b'{"amount":1}', ttl=600)

        store.claim("s", "replayed", "fp", token, lease=30, ttl=600)
        store.complete("s", "replayed", token, b'{"amount":1}', ttl=600)

        def claim_replay(store: Any = store) -> None:
            store.claim("s", "replayed", "fp", token, lease=30, ttl=600)

        def new(charge: Any = charge) -> None:
            charge(f"new-{next(counter)}")

        charge("replayed")

        def replay(charge: Any = charge) -> None:
            charge("replayed")

        for row, fn, floor in (
            ("store claim+complete", claim_complete, "floor new (SET NX PX + SET)"),
            ("store claim (replay)", claim_replay, "floor replay (GET)"),
            ("idempo new key", new, "floor new (SET NX PX + SET)"),
            ("idempo replay", replay, "floor replay (GET)"),
        ):
            fns[f"{label}{row}"] = fn
            floors[f"{label}{row}"] = floor
    for fn in fns.values():
        fn()
    rows: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
    n = args.calls
    for _ in range(args.rounds):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                fn()
            rows[name][0].append((time.perf_counter() - t0) / n)
            rows[name][1].append((time.process_time() - c0) / n)
    _report(
        f"sync ({n} calls x {args.rounds} rounds; median wall, median CPU, ratios)", rows, floors
    )
    raw.close()


async def run_async(args: argparse.Namespace, prefix: str, stores: dict[str, Any]) -> None:
    raw = redis.asyncio.Redis.from_url(REDIS_URL)
    counter = iter(range(10**9))
    fns: dict[str, Callable[[], Awaitable[Any]]] = {}
    floors: dict[str, str] = {}

    async def floor_new() -> None:
        k = f"{prefix}afloor:{next(counter)}"
        if await raw.set(k, b"in_progress", nx=True, px=30_000):
            await raw.set(k, b'{"v":1}', px=600_000)

    await raw.set(f"{prefix}floor-replay", b'{"v":1}', px=600_000)

    async def floor_replay() -> None:
        await raw.get(f"{prefix}floor-replay")

    fns["floor new (SET NX PX + SET)"] = floor_new
    fns["floor replay (GET)"] = floor_replay
    token = uuid.uuid4().hex
    for label, store in stores.items():
        idem = Idempotency(store, ttl=600, lease=30)

        @idem.idempotent(key=lambda order_id: order_id, name="bench")
        async def charge(order_id: str) -> dict[str, int]:
            return {"amount": 1}

        async def claim_complete(store: Any = store) -> None:
            k = f"ak{next(counter)}"
            await store.claim("s", k, "fp", token, lease=30, ttl=600)
            await store.complete("s", k, token, b'{"amount":1}', ttl=600)

        await store.claim("s", "areplayed", "fp", token, lease=30, ttl=600)
        await store.complete("s", "areplayed", token, b'{"amount":1}', ttl=600)

        async def claim_replay(store: Any = store) -> None:
            await store.claim("s", "areplayed", "fp", token, lease=30, ttl=600)

        async def new(charge: Any = charge) -> None:
            await charge(f"anew-{next(counter)}")

        await charge("areplayed")

        async def replay(charge: Any = charge) -> None:
            await charge("areplayed")

        for row, fn, floor in (
            ("store claim+complete", claim_complete, "floor new (SET NX PX + SET)"),
            ("store claim (replay)", claim_replay, "floor replay (GET)"),
            ("idempo new key", new, "floor new (SET NX PX + SET)"),
            ("idempo replay", replay, "floor replay (GET)"),
        ):
            fns[f"{label}{row}"] = fn
            floors[f"{label}{row}"] = floor
    for fn in fns.values():
        await fn()
    rows: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in fns}
    n = args.calls
    for _ in range(args.rounds):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                await fn()
            rows[name][0].append((time.perf_counter() - t0) / n)
            rows[name][1].append((time.process_time() - c0) / n)
    _report(
        f"async ({n} calls x {args.rounds} rounds; median wall, median CPU, ratios)", rows, floors
    )
    await raw.aclose()
    for store in stores.values():
        await store.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--baseline", type=Path, metavar="DIR")
    parser.add_argument("--only", choices=("sync", "async"))
    args = parser.parse_args(argv)
    prefix = f"idempo-bench-calls-{uuid.uuid4().hex[:8]}:"
    sync_stores: dict[str, Any] = {}
    async_stores: dict[str, Any] = {}
    if args.baseline:
        base_sync = _load(args.baseline / "sync_redis.py", "baseline_sync_redis")
        base_async = _load(args.baseline / "async_redis.py", "baseline_async_redis")
        sync_stores["baseline "] = base_sync.RedisStore.from_url(REDIS_URL, prefix=prefix + "b:")
        async_stores["baseline "] = base_async.AsyncRedisStore.from_url(
            REDIS_URL, prefix=prefix + "b:"
        )
    sync_stores[""] = RedisStore.from_url(REDIS_URL, prefix=prefix)
    async_stores[""] = AsyncRedisStore.from_url(REDIS_URL, prefix=prefix)
    print(f"redis-py {redis.__version__}, parser: {_parser()}")
    try:
        if args.only != "async":
            run_sync(args, prefix, sync_stores)
        if args.only != "sync":
            asyncio.run(run_async(args, prefix, async_stores))
    finally:
        for store in sync_stores.values():
            store.close()
        cleanup = redis.Redis.from_url(REDIS_URL)
        keys = list(cleanup.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 1000):
            cleanup.delete(*keys[i : i + 1000])
        cleanup.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

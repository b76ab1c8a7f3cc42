"""Focused micro-benchmark of the Redis store: where a new-key call's time goes.

    .venv/bin/python bench/profile_redis.py [--calls 500] [--repeats 20] [--no-profile]

Rows, per call, all measured interleaved in each round (the median and the least of the rounds,
and the client process's CPU time), so that machine noise falls on every row alike:

* ``SET`` / ``SET NX + SET``: one and two plain round trips (the floor of bench_core).
* ``EVALSHA return 1``: one script round trip that does nothing (Lua's fixed cost).
* ``store.claim`` (new key) / ``store.complete`` / ``claim+complete``: the store alone.
* ``idempo new key`` / ``idempo replay``: the decorated call over the Redis store.

Then the server's own time per script (``INFO commandstats`` usec_per_call of EVALSHA, measured
as deltas over a burst of one script alone; the server is shared, so other clients may add a
little), and a cProfile of the decorated new-key call.

Talks to 127.0.0.1 only; keys use a unique prefix and are deleted.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import os
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Callable

import redis

from idempo import Idempotency
from idempo.stores.redis import RedisStore

REDIS_URL = os.environ.get("IDEMPO_REDIS_URL", "redis://127.0.0.1:6379/0")


def per_call(
    fns: dict[str, Callable[[], None]], n: int, repeats: int
) -> dict[str, tuple[float, float, float]]:
    """(median wall, least wall, median client CPU) seconds per call of each fn."""
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                fn()
            wall[name].append((time.perf_counter() - t0) / n)
            cpu[name].append((time.process_time() - c0) / n)
    return {
        name: (statistics.median(wall[name]), min(wall[name]), statistics.median(cpu[name]))
        for name in fns
    }


def server_usec(raw: redis.Redis, fn: Callable[[], None], n: int) -> float:
    """Server microseconds per EVALSHA over ``n`` calls of ``fn`` (one EVALSHA each)."""

    def read() -> tuple[int, int]:
        s = raw.info("commandstats").get("cmdstat_evalsha", {})
        return int(s.get("calls", 0)), int(s.get("usec", 0))

    c0, u0 = read()
    for _ in range(n):
        fn()
    c1, u1 = read()
    return (u1 - u0) / max(1, c1 - c0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--baseline",
        metavar="FILE",
        help="another version of the sync Redis store module, timed alongside (A/B), e.g. "
        "git show HEAD:src/idempo/stores/_sync/redis.py > /tmp/base.py",
    )
    args = parser.parse_args(argv)
    n = args.calls

    run = uuid.uuid4().hex[:8]
    prefix = f"idempo-profile-{run}:"
    raw = redis.Redis.from_url(REDIS_URL)
    store = RedisStore.from_url(REDIS_URL, prefix=prefix)
    idem = Idempotency(store, ttl=600, lease=30)

    @idem.idempotent(key=lambda order_id, amount: order_id, name="bench-timing")
    def charge(order_id: str, amount: int) -> dict[str, int]:
        return {"amount": amount}

    counter = iter(range(10**9))
    token = uuid.uuid4().hex  # every key is new: one token serves them all
    noop_sha = raw.script_load("return 1")
    held: list[tuple[str, str]] = []

    def set1() -> None:
        raw.set(f"{prefix}floor:{next(counter)}", b"in_progress", nx=True, px=30_000)

    def floor_new() -> None:
        k = f"{prefix}floor:{next(counter)}"
        if raw.set(k, b"in_progress", nx=True, px=30_000):
            raw.set(k, b'{"v":1}', px=86_400_000)

    def noop() -> None:
        raw.evalsha(noop_sha, 0)

    def claim() -> None:
        k, t = f"k{next(counter)}", token
        store.claim("s", k, "fp", t, lease=30, ttl=600)
        held.append((k, t))

    def complete() -> None:
        k, t = held.pop()
        store.complete("s", k, t, b'{"amount":1}', ttl=600)

    def claim_complete() -> None:
        k, t = f"k{next(counter)}", token
        store.claim("s", k, "fp", t, lease=30, ttl=600)
        store.complete("s", k, t, b'{"amount":1}', ttl=600)

    def new() -> None:
        charge(f"{run}-{next(counter)}", 1)

    charge(f"{run}-replayed", 1)

    def replay() -> None:
        charge(f"{run}-replayed", 1)

    def get() -> None:
        store.get("s", "absent")

    held.clear()
    fns = {}
    if args.baseline:
        spec = importlib.util.spec_from_file_location("baseline_redis_store", args.baseline)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        base_store = module.RedisStore.from_url(REDIS_URL, prefix=prefix)
        base_idem = Idempotency(base_store, ttl=600, lease=30)

        @base_idem.idempotent(key=lambda order_id, amount: order_id, name="bench-timing")
        def base_charge(order_id: str, amount: int) -> dict[str, int]:
            return {"amount": amount}

        def base_new() -> None:
            base_charge(f"{run}-base-{next(counter)}", 1)

        base_charge(f"{run}-base-replayed", 1)

        def base_replay() -> None:
            base_charge(f"{run}-base-replayed", 1)

        fns["baseline new key"] = base_new
        fns["baseline replay"] = base_replay
    fns |= {
        "SET": set1,
        "SET NX + SET (floor)": floor_new,
        "EVALSHA return 1": noop,
        "store.get (absent)": get,
        "store.claim (new key)": claim,
        "store.complete": complete,
        "store claim+complete": claim_complete,
        "idempo new key": new,
        "idempo replay": replay,
    }
    for fn in fns.values():
        fn()  # warm up: connections and scripts
    held.clear()
    t = per_call(fns, n, args.repeats)
    floor, floor_min, _ = t["SET NX + SET (floor)"]
    print(f"Time per call ({n} calls x {args.repeats} rounds; wall median, wall least, client CPU)")
    for name, (median, least, cpu) in t.items():
        print(
            f"  {name:26}{median * 1e6:8.1f}us{median / floor:6.2f}x"
            f"{least * 1e6:9.1f}us{least / floor_min:6.2f}x{cpu * 1e6:9.1f}us cpu"
        )

    print("Server usec per EVALSHA (INFO commandstats deltas)")
    m = 2000
    print(f"  {'return 1':26}{server_usec(raw, noop, m):9.2f}us")
    print(f"  {'get (absent)':26}{server_usec(raw, get, m):9.2f}us")
    print(f"  {'claim (new key)':26}{server_usec(raw, claim, m):9.2f}us")
    print(f"  {'complete':26}{server_usec(raw, complete, m):9.2f}us")
    print(f"  {'claim (replay)':26}{server_usec(raw, replay, m):9.2f}us")

    if not args.no_profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(n):
            new()
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())

    store.close()
    keys = list(raw.scan_iter(match=prefix + "*", count=1000))
    for i in range(0, len(keys), 1000):
        raw.delete(*keys[i : i + 1000])
    raw.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

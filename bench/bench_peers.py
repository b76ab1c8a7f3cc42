"""idempo side by side with eight peer idempotency libraries (DESIGN section 8).

    bash bench/peers/setup.sh                      # builds bench/.peers-venv (pinned peers)
    bench/.peers-venv/bin/python bench/bench_peers.py [--calls 500] [--repeats 3] [--rounds 1]

Three comparisons, each in one interleaved run so that machine noise falls on every row alike:

* **Function level on Redis**: µs per call of a decorated function, new key and replay, as a
  ratio to hand-written redis-py in the same round (``SET k NX PX`` + ``SET k v PX`` for a new
  key, one ``GET`` for a replay). Sync libraries against the sync client, async ones against
  ``redis.asyncio`` on the same loop.
* **Function level on PostgreSQL** (idempo and justonce): a replay against one ``SELECT`` over
  a kept psycopg connection; a new key against ``INSERT … ON CONFLICT DO NOTHING RETURNING`` +
  ``UPDATE``.
* **HTTP**: uvicorn (one worker, pinned to one core) serving ``POST /charges`` behind each
  library's middleware, memory and Redis, new keys and replays under wrk (on the other core);
  server CPU per request as a ratio bare / library in the same round (1.0 = free).

Before timing, every row is checked to really replay: the guarded body counts its executions
and puts the count in its result, so a second call with the same key must return the first
call's result without running the body. A row that fails is reported and not timed.

Round trips are counted at the server: Redis on a private ``redis-server`` started for the run
(``total_reads_processed``: one per request the server read, whatever a script or pipeline runs
inside it), PostgreSQL in a private database (``xact_commit`` and ``sessions``). Everything runs
on 127.0.0.1 and is bounded; the private server and database are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import importlib.metadata
import inspect
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_http  # noqa: E402  (the wrk runner and the CPU accounting are shared)
from peers.registry import ADAPTERS, CACHED, load  # noqa: E402

OURS = ("idempo", CACHED)  # idempo's rows: never compared with each other as peers

RESULTS = BENCH / "results"
HOST = "127.0.0.1"
POSTGRES_URL = os.environ.get("IDEMPO_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
PEER_APP = "peers.http_app:app"
# uvicorn's two setups: its pure-Python defaults, and uvloop + httptools (``--server fast``).
SERVERS = {
    "default": {"loop": "asyncio", "http": "h11"},
    "fast": {"loop": "uvloop", "http": "httptools"},
}
SERVER = dict(SERVERS["default"])


# -- private servers ------------------------------------------------------------------------------


@contextlib.contextmanager
def private_redis() -> Iterator[str]:
    """A redis-server of our own, so that its counters see this benchmark's traffic alone."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not found (apt-get install redis-server)")
    port = bench_http.free_port()
    folder = tempfile.mkdtemp(prefix="idempo-bench-peers-redis-")
    proc = subprocess.Popen(
        [
            exe,
            "--bind",
            HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            folder,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://{HOST}:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        bench_http.stop(proc)  # type: ignore[arg-type]
        shutil.rmtree(folder, ignore_errors=True)


class RedisReads:
    """Requests the private Redis read from its clients (our own INFO excluded)."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def read(self) -> int:
        return int(self.client.info("stats")["total_reads_processed"])

    def delta(self, fn: Callable[[], None]) -> int:
        before = self.read()
        fn()
        return self.read() - before - 1  # the second INFO's own read


@contextlib.contextmanager
def private_postgres() -> Iterator[tuple[str, str]]:
    name = f"idempo_bench_peers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name, name
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PostgresCounts:
    """Committed transactions and sessions of the private database, from another database."""

    def __init__(self, dbname: str) -> None:
        self.dbname = dbname
        self.conn = psycopg.connect(POSTGRES_URL, autocommit=True)

    def delta(self, fn: Callable[[], None], closers: list[Callable[[], None]]) -> tuple[int, int]:
        """(transactions, sessions) that ``fn`` cost. A backend flushes its statistics when it
        exits (when idle, up to 10 s later), so the given connections are closed around it;
        their reconnection is counted, spread over the calls."""
        for close in closers:
            close()
        before = self.read()
        fn()
        for close in closers:
            close()
        after = self.read()
        return after[0] - before[0], after[1] - before[1]

    def read(self) -> tuple[int, int]:
        time.sleep(0.5)  # the closed backends' exit flush
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = self.conn.execute(
            "SELECT xact_commit, sessions FROM pg_stat_database WHERE datname = %s",
            (self.dbname,),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])


# -- the guarded body -----------------------------------------------------------------------------


class Body:
    """``charge(order_id)``: counts its executions and returns the count, so a replay (the
    first result, the body not run) is told apart from a re-execution."""

    def __init__(self) -> None:
        self.runs = 0

    def sync(self) -> Callable[[str], dict[str, Any]]:
        def charge(order_id: str) -> dict[str, Any]:
            self.runs += 1
            return {"order": order_id, "run": self.runs, "amount": 1000}

        return charge

    def async_(self) -> Callable[[str], Any]:
        async def charge(order_id: str) -> dict[str, Any]:
            self.runs += 1
            return {"order": order_id, "run": self.runs, "amount": 1000}

        return charge


@dataclass
class Row:
    name: str  # "idempo", a peer, or "floor"
    new: Callable[[int], Any]  # the call number in; a fresh key each call
    replay: Callable[[], Any]  # the same key every call
    status: str = "ok"  # or why it was not timed
    close: Callable[[], None] | None = None  # closes its connections (they reopen on use)
    trips: dict[str, float] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=lambda: {"new key": [], "replay": []})


def untimed(*_: Any) -> None:
    """Stands in for the calls of a row that is not timed."""


def versions() -> dict[str, str]:
    out = {}
    for name in ADAPTERS:
        if name == CACHED:  # idempo itself, with an option
            continue
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def call(fn: Callable[..., Any], *args: Any, loop: asyncio.AbstractEventLoop | None) -> Any:
    result = fn(*args)
    if inspect.isawaitable(result):
        assert loop is not None
        return loop.run_until_complete(result)
    return result


def build_rows(
    kind: str, store: str, url: str, run: str, loop: asyncio.AbstractEventLoop | None
) -> list[Row]:
    """idempo and every peer that has a function surface of this kind on this store."""
    rows = []
    for name in ADAPTERS:
        adapter = load(name)
        if isinstance(adapter, str):
            rows.append(Row(name, untimed, untimed, status=f"cannot import: {adapter}"))
            continue
        body = Body()
        try:
            fn = adapter.function(
                kind,
                store,
                url,
                f"bench-peers:{run}:{kind}:{name}:",
                body.sync() if kind == "sync" else body.async_(),
            )
        except Exception as exc:
            rows.append(
                Row(name, untimed, untimed, status=f"setup failed: {type(exc).__name__}: {exc}")
            )
            continue
        if fn is None:
            continue
        counter = iter(range(10**9))
        replay_key = f"{run}-{kind}-{name}-replayed"
        row = Row(
            name,
            new=lambda _i, fn=fn, c=counter, n=name: fn(f"{run}-{kind}-{n}-{next(c)}"),
            replay=lambda fn=fn, k=replay_key: fn(k),
            close=getattr(fn, "bench_close", None),
        )
        try:
            first = call(fn, replay_key, loop=loop)
            second = call(fn, replay_key, loop=loop)
            if body.runs != 1 or second != first:
                row.status = f"does not replay (body ran {body.runs}x for one key)"
        except Exception as exc:
            row.status = f"failed: {type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def time_rows(
    rows: list[Row], n: int, repeats: int, loop: asyncio.AbstractEventLoop | None
) -> None:
    """Every round runs every row, new keys then replays, one after another."""
    timed = [r for r in rows if r.status == "ok"]
    for round_no in range(repeats):
        order = timed if round_no % 2 == 0 else list(reversed(timed))
        for row in order:
            for col, fn in (("new key", row.new), ("replay", lambda _i, f=row.replay: f())):
                if loop is None:
                    t0 = time.perf_counter()
                    for i in range(n):
                        fn(i)
                    row.times[col].append((time.perf_counter() - t0) / n)
                else:

                    async def many(fn: Callable[[int], Any] = fn) -> float:
                        t0 = time.perf_counter()
                        for i in range(n):
                            await fn(i)
                        return (time.perf_counter() - t0) / n

                    row.times[col].append(loop.run_until_complete(many()))


def count_redis_trips(rows: list[Row], reads: RedisReads, n: int, loop: Any) -> None:
    for row in rows:
        if row.status != "ok":
            continue
        for col, fn in (
            ("new key", lambda i, f=row.new: f(i)),
            ("replay", lambda i, f=row.replay: f()),
        ):

            def phase(fn: Callable[[int], Any] = fn) -> None:
                for i in range(n):
                    call(fn, i, loop=loop)

            row.trips[col] = reads.delta(phase) / n


# -- function level: the floors ------------------------------------------------------------------


def redis_floor_sync(url: str, run: str) -> Row:
    client = redis.Redis.from_url(url)
    counter = iter(range(10**9))
    done = f"bench-peers:{run}:floor:done"
    client.set(done, b'{"run":1}', px=600_000)

    def new(_i: Any) -> None:
        k = f"bench-peers:{run}:floor:{next(counter)}"
        if client.set(k, b"in_progress", nx=True, px=30_000):
            client.set(k, b'{"run":1}', px=86_400_000)

    return Row("floor", new, lambda: client.get(done))


def redis_floor_async(url: str, run: str, loop: asyncio.AbstractEventLoop) -> Row:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    counter = iter(range(10**9))
    done = f"bench-peers:{run}:afloor:done"
    loop.run_until_complete(client.set(done, b'{"run":1}', px=600_000))

    async def new(_i: Any) -> None:
        k = f"bench-peers:{run}:afloor:{next(counter)}"
        if await client.set(k, b"in_progress", nx=True, px=30_000):
            await client.set(k, b'{"run":1}', px=86_400_000)

    return Row("floor", new, lambda: client.get(done))


def postgres_floor(url: str, run: str) -> Row:
    held = [psycopg.connect(url, autocommit=True)]

    def close() -> None:
        held[0].close()
        held[0] = psycopg.connect(url, autocommit=True)

    held[0].execute(
        "CREATE TABLE IF NOT EXISTS bench_floor (k text PRIMARY KEY, state text, body text)"
    )
    held[0].execute(
        "INSERT INTO bench_floor VALUES (%s, 'completed', '{\"run\":1}') ON CONFLICT DO NOTHING",
        (f"{run}-done",),
    )
    counter = iter(range(10**9))

    def new(_i: Any) -> None:
        k = f"{run}-{next(counter)}"
        conn = held[0]
        row = conn.execute(
            "INSERT INTO bench_floor VALUES (%s, 'in_progress', NULL) ON CONFLICT DO NOTHING"
            " RETURNING k",
            (k,),
        ).fetchone()
        if row is not None:
            conn.execute(
                "UPDATE bench_floor SET state = 'completed', body = %s WHERE k = %s",
                ('{"run":1}', k),
            )

    def replay() -> Any:
        return (
            held[0]
            .execute("SELECT state, body FROM bench_floor WHERE k = %s", (f"{run}-done",))
            .fetchone()
        )

    return Row("floor", new, replay, close=close)


def function_level(
    args: argparse.Namespace, redis_url: str, pg: tuple[str, str]
) -> tuple[dict[str, list[Row]], dict[str, float]]:
    run = uuid.uuid4().hex[:8]
    reads = RedisReads(redis_url)
    out: dict[str, Any] = {}

    rows = [redis_floor_sync(redis_url, run), *build_rows("sync", "redis", redis_url, run, None)]
    time_rows(rows, 20, 1, None)  # warm-up: connections, scripts loaded
    count_redis_trips(rows, reads, args.rt_calls, None)
    in_flight = {}
    in_flight["redis"] = idempo_in_flight(
        redis_url,
        {"prefix": f"bench-peers:{run}:dup:"},
        lambda fn, closers: reads.delta(fn),
        args.rt_calls,
    )
    time_rows(rows, args.calls, args.repeats, None)
    out["redis sync"] = rows

    loop = asyncio.new_event_loop()
    rows = [
        redis_floor_async(redis_url, run, loop),
        *build_rows("async", "redis", redis_url, run, loop),
    ]
    time_rows(rows, 20, 1, loop)
    count_redis_trips(rows, reads, args.rt_calls, loop)
    time_rows(rows, args.calls, args.repeats, loop)
    out["redis async"] = rows

    pg_url, pg_db = pg
    rows = [postgres_floor(pg_url, run), *build_rows("sync", "postgres", pg_url, run, None)]
    time_rows(rows, 20, 1, None)
    counts = PostgresCounts(pg_db)
    for row in rows:
        if row.status != "ok":
            continue
        closers = [row.close] if row.close else []
        # What closing and reopening the row's connections costs (and background work):
        # taken off the phases below.
        idle = counts.delta(lambda: None, closers)
        for col, fn in (("new key", row.new), ("replay", lambda _i, f=row.replay: f())):

            def phase(fn: Callable[[int], Any] = fn) -> None:
                for i in range(args.rt_calls):
                    fn(i)

            xacts, sessions = counts.delta(phase, closers)
            row.trips[col] = (xacts - idle[0]) / args.rt_calls
            row.trips[col + " sessions"] = (sessions - idle[1]) / args.rt_calls
    in_flight["postgres"] = idempo_in_flight(
        pg_url, {}, lambda fn, closers: counts.delta(fn, closers)[0], args.rt_calls
    )
    time_rows(rows, max(50, args.calls // 4), args.repeats, None)
    out["postgres sync"] = rows
    loop.close()
    return out, in_flight


def idempo_in_flight(
    url: str,
    options: dict[str, Any],
    count: Callable[[Callable[[], None], list[Callable[[], None]]], int],
    n: int,
) -> float:
    """idempo's round trips per rejected duplicate: one call parks inside its body while ``n``
    calls with its key are refused (InProgressError). The holder's own claim and complete
    (2) are taken off."""
    from idempo import Idempotency
    from idempo.errors import InProgressError

    idem = Idempotency(url, ttl=600, lease=600, store_options=options)
    holding, release = threading.Event(), threading.Event()
    key = f"held-{uuid.uuid4().hex[:8]}"

    @idem.idempotent(key=lambda k: k, name="bench-peers-dup")
    def op(k: str) -> dict[str, int]:
        holding.set()
        release.wait(60)
        return {"v": 1}

    def phase() -> None:
        holder = threading.Thread(target=op, args=(key,))
        holder.start()
        holding.wait(10)
        for _ in range(n):
            with contextlib.suppress(InProgressError):
                op(key)
        release.set()
        holder.join(10)

    release.set()
    op(f"warm-up-{key}")  # connect and load scripts outside the count
    holding.clear()
    release.clear()
    trips = (count(phase, [idem.close]) - 2) / n
    idem.close()
    return trips


# -- HTTP ------------------------------------------------------------------------------------------


@dataclass
class HttpConfig:
    name: str  # "bare", or "<library> + <store>"
    library: str
    store: str
    status: str = "ok"


@contextlib.contextmanager
def serve_peer(cfg: HttpConfig, redis_url: str, prefix: str, pin: set[int] | None) -> Iterator[Any]:
    port = bench_http.free_port()
    env = dict(os.environ)
    env.update(
        IDEMPO_PEER=cfg.library,
        IDEMPO_PEER_STORE=cfg.store,
        IDEMPO_PEER_REDIS_URL=redis_url,
        IDEMPO_PEER_PREFIX=prefix,
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        PEER_APP,
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        SERVER["loop"],
        "--http",
        SERVER["http"],
        "--no-access-log",
        "--log-level",
        "warning",
        "--timeout-graceful-shutdown",
        "5",
    ]
    log = Path(tempfile.mkstemp(prefix="idempo-bench-peers-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=BENCH, env=env, stdout=out, stderr=subprocess.STDOUT)
    if pin:
        os.sched_setaffinity(proc.pid, pin)
    server = bench_http.Server(proc, f"http://{HOST}:{port}/charges", log)
    try:
        wait_until_up(server)
        yield server
    finally:
        bench_http.stop(proc)
        with contextlib.suppress(OSError):
            log.unlink()


def wait_until_up(server: Any, timeout: float = 20.0) -> None:
    """Any HTTP answer will do: without a key some libraries refuse the request (4xx, 5xx)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited early:\n{server.log.read_text()[-2000:]}")
        try:
            httpx.get(server.url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"uvicorn did not answer within {timeout:g}s:\n{server.log.read_text()}")


def check_replays(server: Any, key: str) -> str:
    """'ok', or how the library fails to replay: the endpoint's body carries its run count."""
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    first = httpx.post(server.url, content=bench_http.BODY, headers=headers, timeout=10.0)
    second = httpx.post(server.url, content=bench_http.BODY, headers=headers, timeout=10.0)
    if first.status_code != 201:
        return f"first request answered {first.status_code}"
    if second.status_code != 201 or second.content != first.content:
        return f"does not replay (second: {second.status_code} {second.content[:60]!r})"
    return "ok"


def http_trips(server: Any, reads: RedisReads, n: int) -> dict[str, float]:
    headers = {"Content-Type": "application/json"}
    run = secrets.token_hex(4)
    with httpx.Client(timeout=10.0) as client:

        def new() -> None:
            for i in range(n):
                client.post(
                    server.url,
                    content=bench_http.BODY,
                    headers={**headers, "Idempotency-Key": f"rt-{run}-{i}"},
                )

        def replay() -> None:
            for _ in range(n):
                client.post(
                    server.url,
                    content=bench_http.BODY,
                    headers={**headers, "Idempotency-Key": f"rt-{run}-0"},
                )

        return {"new key": reads.delta(new) / n, "replay": reads.delta(replay) / n}


def http_level(args: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    server_pin, wrk_pin = bench_http.cpus()
    wargs = bench_http.WrkArgs(
        args.http_duration, args.http_warmup, args.connections, 10.0, wrk_pin
    )
    configs = [HttpConfig("bare", "bare", "")]
    for name in ADAPTERS:
        adapter = load(name)
        for store in ("memory", "redis"):
            if isinstance(adapter, str):
                configs.append(
                    HttpConfig(f"{name} + {store}", name, store, f"cannot import: {adapter}")
                )
                break
            if adapter.HTTP and args.only in f"{name} + {store}":
                configs.append(HttpConfig(f"{name} + {store}", name, store))
    reads = RedisReads(redis_url)
    rounds: list[dict[str, Any]] = []
    trips: dict[str, dict[str, float]] = {}
    for round_no in range(args.rounds):
        results: dict[str, Any] = {}
        order = configs if round_no % 2 == 0 else list(reversed(configs))
        for cfg in order:
            if cfg.status != "ok":
                continue
            prefix = f"bench-peers-http:{uuid.uuid4().hex[:6]}:"
            try:
                with serve_peer(cfg, redis_url, prefix, server_pin) as server:
                    replay_key = f"replay-{secrets.token_hex(8)}"
                    if cfg.library != "bare":
                        status = check_replays(server, replay_key)
                        if status != "ok":
                            cfg.status = status
                            continue
                        if cfg.store == "redis" and cfg.name not in trips:
                            trips[cfg.name] = http_trips(server, reads, args.rt_calls)
                    results[cfg.name] = {
                        w: bench_http.measure(server, w, wargs, replay_key)
                        for w in bench_http.WORKLOADS
                    }
                    print(
                        f"  {cfg.name}: "
                        + ", ".join(
                            f"{w} {r['rps']:.0f} req/s {r['server_cpu_us_per_request']:.0f}us cpu"
                            + (
                                f" ERRORS {r['errors']}"
                                if r["errors"]["status"] or r["errors"]["timeout"]
                                else ""
                            )
                            for w, r in results[cfg.name].items()
                        ),
                        flush=True,
                    )
            except Exception as exc:
                cfg.status = f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        rounds.append(results)
    return {"configs": configs, "rounds": rounds, "trips": trips}


# -- report ----------------------------------------------------------------------------------------

GROUPS = {
    "redis sync": "Redis, sync (floor: redis-py `SET NX PX` + `SET` / one `GET`)",
    "redis async": "Redis, async (floor: redis.asyncio, the same commands, same loop)",
    "postgres sync": "PostgreSQL (floor: psycopg `INSERT … ON CONFLICT DO NOTHING RETURNING` + "
    "`UPDATE` / one `SELECT`)",
}
WORK = {"new key": "new keys", "replay": "replay"}  # function column -> HTTP workload


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize_function(groups: dict[str, list[Row]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group, rows in groups.items():
        floor = rows[0]
        cells: dict[str, Any] = {}
        for row in rows:
            cell: dict[str, Any] = {"status": row.status, "trips": row.trips}
            if row.status == "ok":
                for col in ("new key", "replay"):
                    per_round = [
                        t / f for t, f in zip(row.times[col], floor.times[col], strict=True)
                    ]
                    cell[col] = median(per_round)
                    cell[col + " us"] = median(row.times[col]) * 1e6
            cells[row.name] = cell
        out[group] = cells
    return out


def summarize_http(http: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rounds = http["rounds"]
    for cfg in http["configs"]:
        cell: dict[str, Any] = {"status": cfg.status, "trips": http["trips"].get(cfg.name, {})}
        paired = [r for r in rounds if cfg.name in r and "bare" in r]
        if cfg.status == "ok" and paired:
            for w in bench_http.WORKLOADS:
                cell[w] = median(
                    [
                        r["bare"][w]["server_cpu_us_per_request"]
                        / r[cfg.name][w]["server_cpu_us_per_request"]
                        for r in paired
                    ]
                )
                cell[w + " cpu us"] = median(
                    [r[cfg.name][w]["server_cpu_us_per_request"] for r in paired]
                )
                cell[w + " rps"] = median([r[cfg.name][w]["rps"] for r in paired])
                cell[w + " errors"] = sum(
                    r[cfg.name][w]["errors"]["status"] + r[cfg.name][w]["errors"]["timeout"]
                    for r in paired
                )
        elif cfg.status == "ok":
            cell["status"] = "not measured (no round with bare)"
        out[cfg.name] = cell
    return out


def text_report(summary: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for group, cells in summary.get("function", {}).items():
        lines.append(GROUPS[group])
        lines.append(f"{'library':26}{'new key':>10}{'ratio':>7}{'replay':>10}{'ratio':>7}   trips")
        for name, c in cells.items():
            if c["status"] != "ok":
                lines.append(f"{name:26}  not timed: {c['status']}")
                continue
            t = c["trips"]
            lines.append(
                f"{name:26}{c['new key us']:>8.1f}us{c['new key']:>7.2f}"
                f"{c['replay us']:>8.1f}us{c['replay']:>7.2f}   "
                f"{t.get('new key', 0):.2f} / {t.get('replay', 0):.2f}"
            )
        lines.append("")
    if "in flight" in summary:
        lines.append(f"idempo rejected duplicate, round trips: {summary['in flight']}")
    for name, c in summary.get("http", {}).items():
        if c["status"] != "ok":
            lines.append(f"{name:36}  not measured: {c['status']}")
            continue
        lines.append(
            f"{name:36}"
            + "".join(
                f"  {w}: {c[w + ' cpu us']:.0f}us cpu {c[w]:.2f} ({c[w + ' rps']:.0f} req/s)"
                for w in bench_http.WORKLOADS
            )
            + (
                f"  trips {c['trips']['new key']:.2f} / {c['trips']['replay']:.2f}"
                if c["trips"]
                else ""
            )
        )
    return lines


def cell(values: list[float], fmt: str = "{:.2f}", unit: str = "") -> str:
    """Median of the runs, and their range."""
    if not values:
        return "—"
    med = fmt.format(statistics.median(values)) + unit
    if len(values) == 1:
        return med
    return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def status_of(cells: list[dict[str, Any]]) -> str:
    bad = [c["status"] for c in cells if c["status"] != "ok"]
    return bad[0] if bad else "ok"


def markdown(summaries: list[dict[str, Any]], settings: str) -> list[str]:
    """The README section: medians over the runs (range in brackets), call-outs, targets."""
    md: list[str] = [settings, ""]
    behind: list[str] = []
    fn_libs = list(
        dict.fromkeys(n for s in summaries for g in s.get("function", {}).values() for n in g)
    )
    md += (
        []
        if not fn_libs
        else [
            "**Function level**: µs-per-call ratio to the hand-written floor in the same round "
            "(lower is better; the floor rows give µs per call); round trips per call "
            "counted at the server (Redis: requests read; PostgreSQL: committed transactions).",
            "",
            "| library | store, API | new key | replay | round trips new / replay |",
            "|---|---|---|---|---|",
        ]
    )
    values: dict[tuple[str, str, str], list[float]] = {}
    for g, label in (
        ("redis sync", "Redis, sync"),
        ("redis async", "Redis, async"),
        ("postgres sync", "PostgreSQL, sync"),
    ):
        floors = [s["function"][g]["floor"] for s in summaries if g in s.get("function", {})]
        if floors and all(f["status"] == "ok" for f in floors):
            md.append(
                f"| *floor* | {label} | "
                + " | ".join(cell([f[c + " us"] for f in floors], "{:.0f}", " µs") for c in WORK)
                + f" | {floors[0]['trips']['new key']:.2f} / {floors[0]['trips']['replay']:.2f} |"
            )
        for lib in fn_libs:
            if lib == "floor":
                continue
            cells = [
                s["function"][g][lib] for s in summaries if lib in s.get("function", {}).get(g, {})
            ]
            if not cells:
                continue
            st = status_of(cells)
            if st != "ok":
                md.append(f"| {lib} | {label} | not timed: {st} | | |")
                continue
            cols = []
            for col in WORK:
                vs = [c[col] for c in cells]
                values[(lib, g, col)] = vs
                cols.append(cell(vs, "{:.2f}", "x"))
            t = cells[0]["trips"]
            trips = f"{t.get('new key', 0):.2f} / {t.get('replay', 0):.2f}"
            if "new key sessions" in t:
                trips += f" (sessions {t['new key sessions']:.2f} / {t['replay sessions']:.2f})"
            md.append(
                f"| {f'**{lib}**' if lib in OURS else lib} | {label} | "
                + " | ".join(cols)
                + f" | {trips} |"
            )
    for lib in ADAPTERS if fn_libs else []:
        if lib not in fn_libs:
            mod = load(lib)
            why = mod if isinstance(mod, str) else "no function-level API (HTTP only)"
            md.append(f"| {lib} | — | {why} | | |")
    inflight = [s["in flight"] for s in summaries if "in flight" in s]
    if inflight:
        md += [
            "",
            "idempo's rejected duplicate (a call while the key is in flight), at the server: "
            f"Redis {inflight[0]['redis']:.2f}, PostgreSQL {inflight[0]['postgres']:.2f} "
            "round trips.",
        ]
    # call-outs: idempo against each peer measured in the same group
    cached_behind: list[str] = []
    for (lib, g, col), vs in values.items():
        if lib in OURS:
            continue
        for ours, into in (("idempo", behind), (CACHED, cached_behind)):
            mine = values.get((ours, g, col))
            if mine and statistics.median(vs) < statistics.median(mine):
                into.append(
                    f"function {GROUPS[g].split(' (')[0]}, {col}: {ours} "
                    f"{statistics.median(mine):.2f}x, {lib} {statistics.median(vs):.2f}x"
                )

    md += [
        "",
        "**HTTP**: server CPU per request, bare app / library, same round (higher is better; "
        "1.00 = free); the req/s is the median over runs; Redis round trips per request "
        "counted at the server.",
        "",
        "| library | memory new keys | memory replays | Redis new keys | Redis replays "
        "| Redis trips new / replay |",
        "|---|---|---|---|---|---|",
    ]
    http_libs = list(
        dict.fromkeys(n.rsplit(" + ", 1)[0] for s in summaries for n in s.get("http", {}))
    )
    hvalues: dict[tuple[str, str, str], list[float]] = {}
    for lib in http_libs:
        if lib == "bare":
            continue
        cols = []
        trips = ""
        for store in ("memory", "redis"):
            name = f"{lib} + {store}"
            cells = [s["http"][name] for s in summaries if name in s.get("http", {})]
            if not cells:
                cols += ["—", "—"]
                continue
            st = status_of(cells)
            if st != "ok":
                cols += [f"not measured: {st}", ""]
                continue
            for w in bench_http.WORKLOADS:
                vs = [c[w] for c in cells]
                hvalues[(lib, store, w)] = vs
                rps = statistics.median(c[w + " rps"] for c in cells)
                errs = sum(c[w + " errors"] for c in cells)
                cols.append(cell(vs) + f", {rps:.0f}/s" + (f", {errs} errors" if errs else ""))
            if store == "redis" and cells[0]["trips"]:
                t = cells[0]["trips"]
                trips = f"{t['new key']:.2f} / {t['replay']:.2f}"
        md.append(
            f"| {f'**{lib}**' if lib in OURS else lib} | " + " | ".join(cols) + f" | {trips} |"
        )
    for lib in ADAPTERS if http_libs else []:
        if lib not in http_libs:
            mod = load(lib)
            why = mod if isinstance(mod, str) else "no HTTP middleware"
            md.append(f"| {lib} | {why} | | | | |")
    bare = [s["http"]["bare"] for s in summaries if "bare" in s.get("http", {})]
    if bare:
        md += [
            "",
            "Bare app: "
            + ", ".join(
                f"{w} {statistics.median(c[w + ' cpu us'] for c in bare):.0f} µs CPU per request "
                f"({statistics.median(c[w + ' rps'] for c in bare):.0f}/s)"
                for w in bench_http.WORKLOADS
            )
            + ".",
        ]
    for (lib, store, w), vs in hvalues.items():
        if lib in OURS:
            continue
        for ours, into in (("idempo", behind), (CACHED, cached_behind)):
            mine = hvalues.get((ours, store, w))
            if mine and statistics.median(vs) > statistics.median(mine):
                into.append(
                    f"HTTP {store}, {w}: {ours} {statistics.median(mine):.2f}, "
                    f"{lib} {statistics.median(vs):.2f}"
                )

    md += ["", "**Where idempo (defaults) is behind a peer** (medians over the runs):", ""]
    behind.sort()
    md += [f"- {b}" for b in behind] or ["- nowhere"]
    if any(k[0] == CACHED for k in (*values, *hvalues)):
        md += ["", f"**Where {CACHED} is behind a peer:**", ""]
        cached_behind.sort()
        md += [f"- {b}" for b in cached_behind] or ["- nowhere"]

    def target(label: str, vs: list[float] | None, ok: Callable[[float], bool], fmt: str) -> str:
        if not vs:
            return f"- {label}: not measured"
        m = statistics.median(vs)
        return (
            f"- {label}: **{'met' if ok(m) else 'missed'}**, "
            f"{fmt.format(m)} (runs: {', '.join(fmt.format(v) for v in vs)})"
        )

    md += ["", "**DESIGN §8 targets:**", ""]
    rs = summaries[0].get("function", {})
    trips_ok = (
        rs.get("redis sync", {}).get("idempo", {}).get("trips", {}),
        rs.get("postgres sync", {}).get("idempo", {}).get("trips", {}),
    )
    nan = float("nan")
    if fn_libs:
        md.append(
            "- Round trips 2 / 1 / 1 (new key / replay / rejected duplicate), at the server: "
            + "; ".join(
                f"{store} {t.get('new key', nan):.2f} / {t.get('replay', nan):.2f}"
                f" / {inflight[0][key] if inflight else nan:.2f}"
                for store, key, t in zip(
                    ("Redis", "PostgreSQL"), ("redis", "postgres"), trips_ok, strict=True
                )
            )
        )
    # DESIGN section 8: (label, function or HTTP, group, column, bound, higher is better).
    goals: list[tuple[str, str, str, str, float, bool]] = [
        ("Redis function new key ≤ 1.3x (sync)", "fn", "redis sync", "new key", 1.3, False),
        ("Redis function replay ≤ 1.3x (sync)", "fn", "redis sync", "replay", 1.3, False),
        ("Redis function new key ≤ 1.3x (async)", "fn", "redis async", "new key", 1.3, False),
        ("Redis function replay ≤ 1.3x (async)", "fn", "redis async", "replay", 1.3, False),
        ("PostgreSQL function new key ≤ 1.3x", "fn", "postgres sync", "new key", 1.3, False),
        ("PostgreSQL function replay ≤ 1.5x", "fn", "postgres sync", "replay", 1.5, False),
        ("HTTP memory new keys ≥ 0.90", "http", "memory", "new keys", 0.90, True),
        ("HTTP memory replays ≥ 1.0", "http", "memory", "replay", 1.0, True),
        ("HTTP Redis new keys ≥ 0.50", "http", "redis", "new keys", 0.50, True),
        ("HTTP Redis replays ≥ 0.80", "http", "redis", "replay", 0.80, True),
    ]

    def goal(ours: str, row: tuple[str, str, str, str, float, bool]) -> str:
        label, level, group, col, bound, higher = row
        vs = (values if level == "fn" else hvalues).get((ours, group, col))
        return target(
            label if ours == "idempo" else f"{label}, {ours}",
            vs,
            (lambda m: m >= bound) if higher else (lambda m: m <= bound),
            "{:.2f}x" if level == "fn" else "{:.2f}",
        )

    # idempo's defaults against every target; the cached row against those a cache changes.
    targets = [goal("idempo", row) for row in goals]
    targets += [goal(CACHED, row) for row in goals if row[3] == "replay"]
    md += [t for t in targets if not t.endswith(": not measured")]
    md.append(
        f"- Ahead of every peer in every cell: **{'met' if not behind else 'missed'}** "
        f"({len(behind)} cells behind, listed above)"
    )
    return md


def write_readme(md: list[str], server: str) -> None:
    tag = "bench_peers" if server == "default" else f"bench_peers-{server}"
    begin, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    readme = BENCH / "README.md"
    text = readme.read_text()
    block = "\n".join([begin, *md, end])
    if begin in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    readme.write_text(text)


def settings_line(args: argparse.Namespace, runs: int) -> str:
    function = (
        "--skip-function"
        if args.skip_function
        else f"--calls {args.calls} --repeats {args.repeats}"
    )
    return (
        f"{runs} runs of `bench_peers.py --server {args.server} {function} "
        f"--rt-calls {args.rt_calls} --rounds {args.rounds} --http-duration {args.http_duration:g} "
        f"--http-warmup {args.http_warmup:g}` (wrk -t1 -c{args.connections}; uvicorn one worker, "
        f"--loop {SERVER['loop']} --http {SERVER['http']}; Python {sys.version.split()[0]}); "
        "cells: median of the runs (min-max)."
    )


def one_run(args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {"versions": versions()}
    with private_redis() as redis_url, private_postgres() as pg:
        if not args.skip_function:
            groups, in_flight = function_level(args, redis_url, pg)
            summary["function"] = summarize_function(groups)
            summary["in flight"] = in_flight
        if not args.skip_http:
            summary["http"] = summarize_http(http_level(args, redis_url))
    return summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per row per round")
    parser.add_argument("--repeats", type=int, default=3, help="function-level rounds")
    parser.add_argument("--rt-calls", type=int, default=50, help="calls per round-trip count")
    parser.add_argument("--rounds", type=int, default=1, help="HTTP rounds per run")
    parser.add_argument("--http-duration", type=float, default=3.0, help="seconds per wrk run")
    parser.add_argument("--http-warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--runs", type=int, default=1, help="whole runs (the table: medians)")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-function", action="store_true")
    parser.add_argument("--only", default="", help="HTTP: only configs containing this (and bare)")
    parser.add_argument("--server", choices=SERVERS, default="default", help="uvicorn setup")
    parser.add_argument("--write-readme", action="store_true", help="put the table in README.md")
    parser.add_argument(
        "--from-json", nargs="*", default=None, help="rebuild the table from saved runs"
    )
    args = parser.parse_args(argv)

    RESULTS.mkdir(exist_ok=True)
    SERVER.update(SERVERS[args.server])
    if args.from_json is not None:
        saved = [json.loads(Path(f).read_text()) for f in args.from_json]
        summaries = [s["summary"] for s in saved]
        args.server = saved[0].get("server", "default")
        md = markdown(summaries, saved[0]["settings"].replace("1 runs", f"{len(saved)} runs"))
    else:
        print("versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
        summaries = []
        for n in range(args.runs):
            print(f"run {n + 1} of {args.runs}", flush=True)
            summary = one_run(args)
            summaries.append(summary)
            print("\n".join(text_report(summary)), flush=True)
            stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
            (RESULTS / f"peers-{stamp}.json").write_text(
                json.dumps(
                    {"settings": settings_line(args, 1), "server": args.server, "summary": summary},
                    indent=1,
                )
            )
        md = markdown(summaries, settings_line(args, len(summaries)))
    print("\n".join(md))
    if args.write_readme:
        write_readme(md, args.server)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

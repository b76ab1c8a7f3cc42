"""HTTP benchmark: requests per second and p50/p99 latency of ``POST /charges`` under wrk.

    bash bench/run_http.sh             # installs wrk if missing, then runs this (~3.5 min)
    .venv/bin/python bench/bench_http.py [--duration 5] [--warmup 1] [--rounds 3] [--quick]

Configurations: the bare Starlette endpoint (no middleware), then the same behind
:class:`idempo.asgi.IdempotencyMiddleware` with the memory, SQLite (a temporary file), Redis (a
unique key prefix, deleted after) and PostgreSQL (a private database, dropped after) stores.
Each runs two workloads: ``new keys`` (a unique Idempotency-Key per request) and ``replay``
(one key, sent once before wrk starts, so that every measured request is a replay).

Each configuration gets its own uvicorn process (one worker, no access log) on 127.0.0.1 and
a free port, pinned to one core while wrk (one thread) is pinned to the other. The bare
endpoint runs both workloads too (it ignores the header), so each ratio compares the same wrk
script against itself. Every round runs every row once (odd rounds in reverse order); the
figures are medians over the rounds, and each ratio is the median of the per-round ratios.
The server's CPU time per request (from /proc) is reported too: it is steadier than req/s on a
shared machine. Raw results go to bench/results/http-<timestamp>.json.

``--profile CONFIG`` runs one configuration's server under cProfile instead (default
workload: new keys) and prints where its time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import pstats
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from idempo import open_store

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
WRK_DIR = BENCH / "wrk"
HOST = "127.0.0.1"  # every server and every request stays on the loopback
REDIS_URL = os.environ.get("IDEMPO_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("IDEMPO_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
WORKLOADS = {"new keys": "new_keys.lua", "replay": "replay.lua"}
MARKER = "IDEMPO_BENCH_JSON "
BODY = b'{"amount":1000,"currency":"eur"}'


# -- server ---------------------------------------------------------------------------------------


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


LOOP = "uvloop" if has_module("uvloop") else "asyncio"
HTTP = "httptools" if has_module("httptools") else "h11"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def cpus() -> tuple[set[int] | None, set[int] | None]:
    """(server's cores, wrk's cores): the last allowed core for the server, the rest for wrk;
    no pinning on a single core."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None, None
    return {allowed[-1]}, set(allowed[:-1])


# uvicorn's command line under cProfile. uvicorn re-raises the SIGTERM it caught once it has
# shut down, which would kill the process before the profile is written: a handler of ours,
# installed first, is the one uvicorn restores and re-raises into.
PROFILED_UVICORN = """
import cProfile, signal, sys
from uvicorn.main import main
out = sys.argv.pop(1)
signal.signal(signal.SIGTERM, lambda *_: None)
profiler = cProfile.Profile()
profiler.enable()
try:
    main(prog_name="uvicorn")
except SystemExit:
    pass
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path


@contextlib.contextmanager
def serve(
    store: str, options: dict[str, Any], pin: set[int] | None, profile_to: Path | None = None
) -> Iterator[Server]:
    """uvicorn serving bench/http_app.py in its own process; stopped (by its pid) on exit."""
    port = free_port()
    env = dict(os.environ)
    env["IDEMPO_BENCH_STORE"] = store
    env["IDEMPO_BENCH_STORE_OPTIONS"] = json.dumps(options)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), env.get("PYTHONPATH", "")]))
    cmd = [
        sys.executable,
        *(
            ["-c", PROFILED_UVICORN, str(profile_to)]
            if profile_to is not None
            else ["-m", "uvicorn"]
        ),
        "http_app:app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        LOOP,
        "--http",
        HTTP,
        "--no-access-log",
        "--log-level",
        "warning",
        "--timeout-graceful-shutdown",
        "5",
    ]
    log = Path(tempfile.mkstemp(prefix="idempo-bench-uvicorn-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=BENCH, env=env, stdout=out, stderr=subprocess.STDOUT)
    if pin:
        os.sched_setaffinity(proc.pid, pin)
    server = Server(proc, f"http://{HOST}:{port}/charges", log)
    try:
        wait_until_up(server)
        yield server
    finally:
        stop(proc)
        with contextlib.suppress(OSError):
            log.unlink()


def wait_until_up(server: Server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited early:\n{server.log.read_text()}")
        try:
            # No Idempotency-Key: the middleware passes it through unguarded.
            if httpx.post(server.url, content=BODY, timeout=1.0).status_code == 201:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"uvicorn did not answer within {timeout:g}s:\n{server.log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the one process we started: SIGTERM (graceful: lifespan closes the store)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def check_idempotency(server: Server, key: str) -> None:
    """The first request with ``key`` runs the handler, the second is a replay."""
    headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
    first = httpx.post(server.url, content=BODY, headers=headers, timeout=10.0)
    second = httpx.post(server.url, content=BODY, headers=headers, timeout=10.0)
    if first.status_code != 201 or "idempotent-replayed" in first.headers:
        raise RuntimeError(f"first request: {first.status_code} {first.headers} {first.text}")
    if second.status_code != 201 or second.headers.get("idempotent-replayed") != "true":
        raise RuntimeError(f"second request not replayed: {second.status_code} {second.headers}")
    if second.content != first.content:
        raise RuntimeError("the replayed body differs from the first")


# -- wrk -----------------------------------------------------------------------------------------


@dataclass
class WrkArgs:
    duration: float
    warmup: float
    connections: int
    timeout: float
    pin: set[int] | None


def wrk(url: str, workload: str, arg: str, seconds: float, args: WrkArgs) -> dict[str, Any]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{args.connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={max(1, round(args.timeout))}s",
        "-s",
        str(WRK_DIR / WORKLOADS[workload]),
        url,
        "--",
        arg,
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=(lambda: os.sched_setaffinity(0, args.pin)) if args.pin else None,
    )
    try:
        out, err = proc.communicate(timeout=seconds + args.timeout + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    text = out.decode()
    found = [ln for ln in text.splitlines() if ln.startswith(MARKER)]
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}\n{err.decode()}")
    result: dict[str, Any] = json.loads(found[-1][len(MARKER) :])
    duration = result["duration_us"] / 1e6
    result["rps"] = result["requests"] / duration if duration else 0.0
    result["wrk_output"] = text
    return result


def measure(server: Server, workload: str, args: WrkArgs, replay_key: str) -> dict[str, Any]:
    def arg() -> str:  # new keys: a fresh random seed per wrk run, so no key repeats
        return replay_key if workload == "replay" else secrets.token_hex(6)

    if args.warmup > 0:
        wrk(server.url, workload, arg(), args.warmup, args)
    cpu_before = cpu_seconds(server.proc.pid)
    result = wrk(server.url, workload, arg(), args.duration, args)
    cpu = cpu_seconds(server.proc.pid) - cpu_before
    # The server's CPU time (all its threads, user + system) per request and as a share of the
    # wall time: near 1.0 means the server's one core is the bottleneck, as intended.
    result["server_cpu_us_per_request"] = (
        cpu / result["requests"] * 1e6 if result["requests"] else 0
    )
    result["server_cpu_busy"] = cpu / (result["duration_us"] / 1e6)
    return result


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- stores ----------------------------------------------------------------------------------------


@dataclass
class Config:
    name: str
    # opens the store's private resources; yields (url, options); cleans up on exit
    setup: Callable[[], contextlib.AbstractContextManager[tuple[str, dict[str, Any]]]]


@contextlib.contextmanager
def bare() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "", {}


@contextlib.contextmanager
def memory() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "memory://", {}


@contextlib.contextmanager
def sqlite() -> Iterator[tuple[str, dict[str, Any]]]:
    folder = tempfile.mkdtemp(prefix="idempo-bench-http-")
    try:
        path = Path(folder) / "idempo.db"
        store = open_store(f"sqlite:///{path}")
        store.migrate()
        store.close()
        yield f"sqlite:///{path}", {}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def redis_store() -> Iterator[tuple[str, dict[str, Any]]]:
    prefix = f"idempo-bench-http:{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    try:
        yield REDIS_URL, {"prefix": prefix}
    finally:
        batch: list[bytes] = []
        for k in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(k)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
        client.close()


@contextlib.contextmanager
def postgres() -> Iterator[tuple[str, dict[str, Any]]]:
    name = f"idempo_bench_http_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    try:
        store = open_store(url)
        store.migrate()  # outside the measurement (the server would otherwise on first use)
        store.close()
        yield url, {}
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


CONFIGS = [
    Config("bare", bare),
    Config("memory", memory),
    Config("sqlite", sqlite),
    Config("redis", redis_store),
    Config("postgres", postgres),  # the store's default pool: 1 to 10 connections
]


# -- the run ---------------------------------------------------------------------------------------


def run_config(config: Config, args: WrkArgs, server_pin: set[int] | None) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    with config.setup() as (url, options), serve(url, options, server_pin) as server:
        replay_key = f"replay-{secrets.token_hex(8)}"
        if url:
            check_idempotency(server, replay_key)  # also stores the outcome replays will read
        for workload in WORKLOADS:
            rows[workload] = measure(server, workload, args, replay_key)
            if rows[workload]["errors"]["status"] or rows[workload]["errors"]["timeout"]:
                print(f"  ! {config.name}/{workload}: errors {rows[workload]['errors']}")
    return rows


def fmt_row(cols: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cols, widths, strict=True))
    )


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    table = []
    for config in [c.name for c in CONFIGS if c.name in rounds[0]]:
        for workload in WORKLOADS:
            runs = [r[config][workload] for r in rounds]
            ratios = [r[config][workload]["rps"] / r["bare"][workload]["rps"] for r in rounds]
            # The same comparison by the server's CPU time per request: what the req/s ratio
            # would be with the server's core saturated in both rows (less noisy).
            cpu_ratios = [
                r["bare"][workload]["server_cpu_us_per_request"]
                / r[config][workload]["server_cpu_us_per_request"]
                for r in rounds
            ]
            errors = sum(sum(v for k, v in run["errors"].items() if k != "connect") for run in runs)
            table.append(
                {
                    "config": config,
                    "workload": workload,
                    "rps": statistics.median(run["rps"] for run in runs),
                    "p50_ms": statistics.median(run["latency_us"]["p50"] for run in runs) / 1e3,
                    "p99_ms": statistics.median(run["latency_us"]["p99"] for run in runs) / 1e3,
                    "ratio": statistics.median(ratios),
                    "cpu_us": statistics.median(run["server_cpu_us_per_request"] for run in runs),
                    "cpu_busy": statistics.median(run["server_cpu_busy"] for run in runs),
                    "cpu_ratio": statistics.median(cpu_ratios),
                    "cpu_ratios": cpu_ratios,
                    "ratios": ratios,
                    "errors": errors,
                    "requests": sum(run["requests"] for run in runs),
                }
            )
    return table


def print_table(table: list[dict[str, Any]]) -> None:
    head = ["config", "workload", "req/s", "p50 ms", "p99 ms", "ratio", "cpu us/req", "cpu ratio"]
    head.append("errors")
    widths = [9, 9, 8, 7, 7, 6, 10, 9, 6]
    print(fmt_row(head, widths))
    for row in table:
        cols = [
            row["config"],
            row["workload"],
            f"{row['rps']:.0f}",
            f"{row['p50_ms']:.2f}",
            f"{row['p99_ms']:.2f}",
            f"{row['ratio']:.2f}",
            f"{row['cpu_us']:.0f}",
            f"{row['cpu_ratio']:.2f}",
            str(row["errors"]),
        ]
        print(fmt_row(cols, widths))


def environment(args: argparse.Namespace, server_pin: set[int] | None) -> dict[str, Any]:
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    versions = {}
    for pkg in ("idempo", "starlette", "uvicorn", "redis", "psycopg", "uvloop", "httptools"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[pkg] = importlib.metadata.version(pkg)
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True, text=True
    )
    return {
        "git_commit": git.stdout.strip() or None,
        "src_changes": dirty.stdout.splitlines(),  # uncommitted changes measured too
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "server_cpus": sorted(server_pin) if server_pin else None,
        "wrk_cpus": sorted(args.wrk_pin) if args.wrk_pin else None,
        "wrk": wrk_version.split(" Copyright")[0].strip() if wrk_version else "?",
        "loop": LOOP,
        "http": HTTP,
        "versions": versions,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "connections": args.connections,
        "wrk_threads": 1,
    }


def profile(name: str, workload: str, args: WrkArgs, server_pin: set[int] | None) -> None:
    """Run one configuration's server under cProfile for one workload, print the top."""
    config = next(c for c in CONFIGS if c.name == name)
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"http-profile-{name}-{workload.replace(' ', '_')}-{stamp}.prof"
    with (
        config.setup() as (url, options),
        serve(url, options, server_pin, profile_to=out) as server,
    ):
        replay_key = f"replay-{secrets.token_hex(8)}"
        if url:
            check_idempotency(server, replay_key)
        result = measure(server, workload, args, replay_key)
    print(f"{name} / {workload} under cProfile: {result['rps']:.0f} req/s (inflated costs)")
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(45)
    print(f"profile written to {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per row")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per row")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every row (median)")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c (one thread)")
    parser.add_argument("--timeout", type=float, default=5.0, help="wrk --timeout (seconds)")
    parser.add_argument("--quick", action="store_true", help="one round of 3 s per row")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated configs to run besides bare (memory,sqlite,redis,postgres)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and wrk")
    parser.add_argument("--profile", metavar="CONFIG", help="profile one config under cProfile")
    parser.add_argument("--workload", default="new keys", choices=list(WORKLOADS))
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.rounds = 3.0, 1.0, 1
    if shutil.which("wrk") is None:
        print("wrk is not installed: run bash bench/run_http.sh (apt-get install -y wrk)")
        return 2
    server_pin, args.wrk_pin = (None, None) if args.no_pin else cpus()
    wargs = WrkArgs(args.duration, args.warmup, args.connections, args.timeout, args.wrk_pin)

    if args.profile:
        profile(args.profile, args.workload, wargs, server_pin)
        return 0

    wanted = {"bare", *filter(None, (s.strip() for s in args.only.split(",")))}
    configs = [c for c in CONFIGS if not args.only or c.name in wanted]
    env = environment(args, server_pin)
    print(
        f"uvicorn 1 worker, loop={LOOP}, http={HTTP}, server on cpus {env['server_cpus']}; "
        f"{env['wrk']}, -t1 -c{args.connections} on cpus {env['wrk_cpus']}; "
        f"{args.duration:g}s after {args.warmup:g}s warm-up, {args.rounds} round(s)"
    )
    started = time.monotonic()
    rounds: list[dict[str, dict[str, Any]]] = []
    for i in range(args.rounds):
        current: dict[str, dict[str, Any]] = {}
        # Odd rounds run the rows backwards, so that a drift of the machine over a round does
        # not always fall on the same rows; memory stays next to bare either way.
        for config in configs if i % 2 == 0 else configs[::-1]:
            current[config.name] = run_config(config, wargs, server_pin)
            line = ", ".join(f"{w} {r['rps']:.0f}/s" for w, r in current[config.name].items())
            print(f"  round {i + 1} {config.name}: {line}", flush=True)
        rounds.append(current)
    table = summarize(rounds)
    print()
    print(
        "POST /charges. ratio: req/s over bare req/s (same wrk script, same round); cpu ratio:"
        " bare's server CPU time per request over this row's; medians over rounds"
    )
    print_table(table)
    print(f"\n({time.monotonic() - started:.0f}s)")

    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"http-{stamp}.json"
    raw = {"environment": env, "table": table, "rounds": rounds}
    path.write_text(json.dumps(raw, indent=2))
    print(f"raw results: {path.relative_to(ROOT)}")
    memory_row = next((r for r in table if r["config"] == "memory"), None)
    if memory_row is not None:
        rows = [r for r in table if r["config"] == "memory"]
        worst = min(rows, key=lambda r: r["ratio"])
        print(
            f"memory store, worst workload ({worst['workload']}): {worst['ratio']:.2f} of bare"
            f" by req/s, {worst['cpu_ratio']:.2f} by CPU time (target >= 0.85)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

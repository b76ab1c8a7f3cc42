"""The gateway's cost: wrk through the gateway against the Node upstream called directly.

    .venv/bin/python bench/bench_gateway.py [--duration 5] [--servers uvicorn,granian]

Starts tests/upstream.js and the gateway (memory store, one worker) on loopback ports of their
own, and reports, per server:
- low load (1 connection): p50 and p99 of a POST with a new key, direct and through the
  gateway, and the difference (DESIGN section 8: <= 1 ms added p50);
- throughput (16 connections): requests per second direct and through one gateway worker, new
  keys and replays, and the ratio (target >= 0.5x of the upstream's own).
Then the upstream pool alone: httpx against aiohttp, CPU per request from one process, the
figure behind the choice of client (docs/decisions/0008-gateway-server-and-client.md).
Everything runs on one machine, so wrk, the upstream and the gateway share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.gateway_rig import first_line, stop_process, upstream  # noqa: E402

WRK = ROOT / "bench" / "wrk"


def wrk(url: str, script: str, connections: int, duration: int, arg: str) -> dict[str, object]:
    out = subprocess.run(
        [
            "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
            "-s", str(WRK / script), url, "--", arg,
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = next(x for x in out.splitlines() if x.startswith("IDEMPO_BENCH_JSON "))
    result: dict[str, object] = json.loads(line.split(" ", 1)[1])
    return result


def rps(result: dict[str, object]) -> float:
    return float(result["requests"]) / (float(result["duration_us"]) / 1e6)  # type: ignore[arg-type]


def latency(result: dict[str, object], pct: str) -> float:
    return float(result["latency_us"][pct]) / 1000  # type: ignore[index]


@contextlib.contextmanager
def gateway(server: str, upstream_url: str, tmp: Path) -> Iterator[str]:
    config = tmp / "bench-gateway.toml"
    config.write_text(f'upstream = "{upstream_url}"\nstore = "memory://"\n')
    if server == "uvicorn":
        args = [
            sys.executable, "-c", "from idempo.cli import main; main()", "gateway",
            "--config", str(config), "--listen", "127.0.0.1:0",
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        url = first_line(proc, "idempo gateway: listening on ").split()[4]
    else:
        port = _free_port()
        args = [
            sys.executable, "-m", "granian", "--interface", "asgi", "--factory",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--loop", "uvloop", "--log-level", "warning",
            "idempo.gateway.app:from_environment",
        ]  # fmt: skip
        env = {**os.environ, "IDEMPO_GATEWAY_CONFIG": str(config)}
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True
        )
        url = f"http://127.0.0.1:{port}"
        _wait_for(url)
    try:
        yield url
    finally:
        stop_process(proc)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(url: str) -> None:
    import httpx

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # granian prints nothing once it listens
        try:
            httpx.get(url + "/_stats", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("granian did not start")


def bench_server(server: str, upstream_url: str, duration: int, tmp: Path) -> None:
    seed = uuid.uuid4().hex[:8]
    direct_low = wrk(upstream_url + "/charges", "new_keys.lua", 1, duration, seed + "d")
    direct_high = wrk(upstream_url + "/charges", "new_keys.lua", 16, duration, seed + "D")
    with gateway(server, upstream_url, tmp) as url:
        wrk(url + "/charges", "new_keys.lua", 4, 1, seed + "w")  # warm the pool
        low = wrk(url + "/charges", "new_keys.lua", 1, duration, seed + "l")
        high = wrk(url + "/charges", "new_keys.lua", 16, duration, seed + "h")
        replay_key = "replay-" + seed
        subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-XPOST", "-H", f"Idempotency-Key: {replay_key}",
             "-H", "Content-Type: application/json", "-d", '{"amount":1000,"currency":"eur"}',
             url + "/charges"],
            check=True,
        )  # fmt: skip
        replay = wrk(url + "/charges", "replay.lua", 16, duration, replay_key)
    errors = [r["errors"] for r in (low, high, replay)]
    print(f"\n{server}: one gateway worker, memory store ({duration}s per run)")
    print(f"{'':28}{'p50 ms':>9}{'p99 ms':>9}")
    for name, r in (("direct, 1 connection", direct_low), ("gateway, 1 connection", low)):
        print(f"{name:28}{latency(r, 'p50'):9.3f}{latency(r, 'p99'):9.3f}")
    print(
        f"{'added':28}{latency(low, 'p50') - latency(direct_low, 'p50'):9.3f}"
        f"{latency(low, 'p99') - latency(direct_low, 'p99'):9.3f}"
    )
    print(f"{'':28}{'req/s':>9}{'ratio':>9}")
    base = rps(direct_high)
    for name, r in (
        ("direct, 16 connections", direct_high),
        ("gateway new keys, 16", high),
        ("gateway replays, 16", replay),
    ):
        print(f"{name:28}{rps(r):9.0f}{rps(r) / base:9.2f}")
    print(f"errors: {errors}")


async def client_cost(kind: str, url: str, n: int, concurrency: int) -> tuple[float, float]:
    """(CPU microseconds per request, requests per second) of one pooled client."""
    body = b'{"amount":1000}'
    if kind == "httpx":
        import socket

        import httpx

        nodelay = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
        client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=concurrency),
            transport=httpx.AsyncHTTPTransport(socket_options=nodelay),
        )

        async def one() -> None:
            r = await client.post(url, content=body)
            await r.aread()

        close = client.aclose
    else:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

        async def one() -> None:
            async with session.post(url, data=body) as r:
                await r.read()

        close = session.close
    sem = asyncio.Semaphore(concurrency)

    async def bounded() -> None:
        async with sem:
            await one()

    await asyncio.gather(*(bounded() for _ in range(200)))  # warm the pool
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(bounded() for _ in range(n)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await close()
    return cpu / n * 1e6, n / wall


def bench_clients(upstream_url: str, n: int) -> None:
    print(f"\nupstream pool alone: {n} POSTs, 16 at a time, one process (uvloop)")
    import uvloop

    for kind in ("httpx", "aiohttp"):
        try:
            us, per_s = uvloop.run(client_cost(kind, upstream_url + "/charges", n, 16))
        except ImportError:
            print(f"{kind:10} not installed")
            continue
        print(f"{kind:10}{us:8.0f} us CPU/request{per_s:9.0f} req/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--servers", default="uvicorn,granian")
    parser.add_argument("--client-requests", type=int, default=5000)
    args = parser.parse_args()
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    with upstream() as node:
        for server in args.servers.split(","):
            if server == "granian":
                try:
                    import granian  # noqa: F401
                except ImportError:
                    print("\ngranian: not installed (pip install granian)")
                    continue
            bench_server(server, node.url, args.duration, tmp)
        bench_clients(node.url, args.client_requests)


if __name__ == "__main__":
    main()

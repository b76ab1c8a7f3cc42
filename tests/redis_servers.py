"""redis-server processes of the tests' own, to pause and kill: one standalone server, or a
six-node Redis Cluster (three primaries, one replica each).

The shared Redis is never touched: every process here is started on free ports under a
temporary folder and signalled by its own pid only. Every wait polls a condition against a
deadline and fails with what it last saw.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

__all__ = ["Cluster", "Server", "redis_cluster", "redis_server", "retries", "wait_until"]

POLL = 0.05  # seconds between two looks at a condition


def wait_until(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll ``check()`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (redis.RedisError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(POLL)
    pytest.fail(f"{what}: not within {timeout}s (last seen: {last!r})")


def retries(retry: Any) -> int:
    """How many times a redis-py Retry resends (get_retries() is redis-py 6 and later)."""
    get = getattr(retry, "get_retries", None)
    return int(get() if get is not None else retry._retries)


def _free_port(avoid: set[int]) -> int:
    """A port free now, whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port > 55000 or port in avoid or port + 10000 in avoid:
            continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a redis-server")


@dataclass
class Server:
    """One redis-server of ours."""

    port: int
    folder: Path
    args: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2, **options)

    def start(self) -> None:
        log = open(self.folder / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - the child's
        with log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
            )

        def answers() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"redis-server on {self.port} exited: {self.log_tail()}")
            with self.client() as client:
                return bool(client.ping())

        wait_until(f"redis-server on {self.port} answers", answers, 10)

    def log_tail(self) -> str:
        path = self.folder / f"redis-{self.port}.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        assert self.process.poll() is None
        os.kill(self.process.pid, number)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no last words to the cluster."""
        self.signal(signal.SIGKILL)
        assert self.process is not None
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _base_args() -> list[str]:
    return ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[Server]:
    """A standalone redis-server of our own on a free port."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = Server(_free_port(set()), folder, _base_args())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Cluster:
    """A running Redis Cluster of our own."""

    nodes: list[Server]
    folder: Path
    killed: list[Server] = field(default_factory=list)

    @property
    def seed(self) -> Server:
        """A node that is up."""
        return next(node for node in self.nodes if node.alive)

    def url(self, scheme: str = "redis+cluster") -> str:
        return f"{scheme}://127.0.0.1:{self.seed.port}"

    def shards(self) -> dict[str, list[str]]:
        """Each live primary's address -> its live replicas' addresses, as the seed sees it."""
        with self.seed.client(decode_responses=True) as client:
            nodes = client.execute_command("CLUSTER NODES")
        if isinstance(nodes, dict):  # redis-py parses it into {address: fields}
            rows = [(address.split("@")[0], info) for address, info in nodes.items()]
        else:  # pragma: no cover - older redis-py
            raise AssertionError(f"unexpected CLUSTER NODES reply: {nodes!r}")
        ids = {info["node_id"]: address for address, info in rows}
        shards: dict[str, list[str]] = {}
        for address, info in rows:
            flags = info["flags"]
            if "master" in flags and "fail" not in flags and info["slots"]:
                shards.setdefault(address, [])
        for address, info in rows:
            flags = info["flags"]
            if "slave" in flags and "fail" not in flags:
                primary = ids.get(info["master_id"])
                if primary in shards:
                    shards[primary].append(address)
        return shards

    def node(self, address: str) -> Server:
        return next(node for node in self.nodes if node.name == address)

    def primary_for(self, key: str) -> Server:
        """The node that serves ``key``'s slot now."""
        slot = key_slot(key.encode())
        with self.seed.client() as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.node(f"127.0.0.1:{int(primary[1])}")
        raise AssertionError(f"slot {slot} is served by no node")

    def healthy(self, primaries: int = 3, replicas: int = 1) -> bool:
        """Every live node says cluster_state:ok and maps every slot; each primary has its
        replicas, and every replica's link to its primary is up."""
        for node in self.nodes:
            if not node.alive:
                continue
            with node.client(decode_responses=True) as client:
                info = client.cluster("info")
                if info.get("cluster_state") != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
                role = client.info("replication")
                if role["role"] == "slave" and role["master_link_status"] != "up":
                    return False
        shards = self.shards()
        return len(shards) == primaries and all(len(r) == replicas for r in shards.values())

    def replicated(self, primary: Server) -> bool:
        """Every replica of ``primary`` has acknowledged all it was sent."""
        with primary.client(decode_responses=True) as client:
            info = client.info("replication")
        offset = int(info["master_repl_offset"])
        replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return bool(replicas) and all(int(r["offset"]) >= offset for r in replicas)

    def kill(self, node: Server) -> None:
        node.kill()
        self.killed.append(node)


@contextlib.contextmanager
def redis_cluster(folder: Path, node_timeout_ms: int = 2000) -> Iterator[Cluster]:
    """Six redis-server processes joined by ``redis-cli --cluster create`` (three primaries,
    one replica each), healthy when yielded; every process stopped after."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for a cluster")
    ports: set[int] = set()
    nodes = []
    for _ in range(6):
        port = _free_port(ports)
        ports |= {port, port + 10000}
        args = [
            *_base_args(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(folder / f"nodes-{port}.conf"),
            "--cluster-node-timeout",
            str(node_timeout_ms),
            # A replica however long cut off may take over: failover here is the point.
            "--cluster-replica-validity-factor",
            "0",
            # The shards that are up keep serving while one is down.
            "--cluster-require-full-coverage",
            "no",
        ]
        nodes.append(Server(port, folder, args))
    cluster = Cluster(nodes, folder)
    try:
        for node in nodes:
            node.start()
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *(node.name for node in nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        wait_until("the new cluster is healthy", cluster.healthy, 30)
        yield cluster
    finally:
        for node in nodes:
            node.stop()

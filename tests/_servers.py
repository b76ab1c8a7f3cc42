"""Database servers of a test's own, on free ports, that a test may pause (SIGSTOP) and resume.

The shared services must never be paused: other tests and helpers use them. These servers are
started from the installed binaries into a temporary directory and stopped (and their files
removed) by the fixture that started them. Only pids started here are ever signalled.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Server", "mariadb_server", "postgres_server"]

_START_BOUND = 60.0  # seconds a server may take to accept connections


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + _START_BOUND
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the server exited ({process.returncode}): {log.read_text()[-2000:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)  # polling a port that is not open yet: no event to wait on
    raise RuntimeError(f"the server did not listen on {port} within {_START_BOUND:g} s")


def _children(pid: int) -> list[int]:
    """Every live process whose parent is ``pid`` (the server's backends)."""
    found = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.split("/")[2]))
    return found


@dataclass
class Server:
    """A running server of this test session: its URL, and pause/resume of its processes."""

    url: str
    process: subprocess.Popen[bytes]
    paused: list[int] = field(default_factory=list)

    def pause(self) -> None:
        """SIGSTOP the server and every process it forked: it keeps its sockets, answers nothing."""
        pid = self.process.pid
        os.kill(pid, signal.SIGSTOP)  # first: a stopped parent forks no new backends
        self.paused = [pid, *_children(pid)]
        for child in self.paused[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in reversed(self.paused):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.paused = []

    @contextlib.contextmanager
    def stalled(self) -> Iterator[None]:
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def stop(self) -> None:
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(20)


def _as(user: str) -> dict[str, Any]:
    # Neither server runs as root: drop to its own system user when the tests run as root.
    return {"user": user, "group": user} if os.geteuid() == 0 else {}


@contextlib.contextmanager
def _workdir(user: str) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="idempo-srv-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(root, user, user)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"no PostgreSQL {name} under /usr/lib/postgresql/*/bin")
    return found[-1]


@contextlib.contextmanager
def postgres_server() -> Iterator[Server]:
    """A fresh PostgreSQL cluster (trust auth, user ``postgres``, db ``postgres``)."""
    with _workdir("postgres") as root:
        data, log = root / "data", root / "log"
        subprocess.run(
            [
                _postgres_bin("initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
            **_as("postgres"),
        )
        port = free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    *(_postgres_bin("postgres"), "-D", str(data), "-p", str(port), "-k", str(root)),
                    *("-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                **_as("postgres"),
            )
        server = Server(f"postgresql://postgres@127.0.0.1:{port}/postgres", process)
        try:
            _wait_for_port(port, process, log)
            _wait_for_postgres(server.url)
            yield server
        finally:
            server.stop()


def _wait_for_postgres(url: str) -> None:
    import psycopg

    deadline = time.monotonic() + _START_BOUND
    while True:
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return
        except psycopg.OperationalError:  # "the database system is starting up"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def mariadb_server() -> Iterator[Server]:
    """A fresh MariaDB (user ``root`` without a password over TCP, database ``test``)."""
    with _workdir("mysql") as root:
        data, log = root / "data", root / "log"
        subprocess.run(
            [
                *("mariadb-install-db", f"--datadir={data}", "--skip-test-db"),
                "--auth-root-authentication-method=normal",
                "--user=mysql" if os.geteuid() == 0 else "--no-defaults",
            ],
            check=True,
            capture_output=True,
        )
        port = free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["mariadbd", "--no-defaults", f"--datadir={data}", f"--port={port}"]
                + ["--bind-address=127.0.0.1", f"--socket={root / 'sock'}"]
                + [
                    f"--pid-file={root / 'pid'}",
                    "--skip-log-bin",
                    "--innodb-flush-log-at-trx-commit=0",
                ]
                + (["--user=mysql"] if os.geteuid() == 0 else []),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = Server(f"mysql://root@127.0.0.1:{port}/test", process)
        try:
            _wait_for_port(port, process, log)
            import pymysql

            conn = pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=5)
            try:
                conn.cursor().execute("CREATE DATABASE IF NOT EXISTS test")
            finally:
                conn.close()
            yield server
        finally:
            server.stop()

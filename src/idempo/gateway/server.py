"""Serving the gateway: uvicorn in each worker, a small prefork supervisor for ``workers > 1``.

The listening sockets are bound once, by the supervisor, before it forks: every worker accepts
on the same sockets (the kernel spreads the connections), and a worker that dies is replaced
without a moment when the port is closed. Each worker opens its own store client and upstream
pool after the fork, never sharing a connection across processes.

SIGTERM (or SIGINT) to the supervisor is passed to every worker; uvicorn then stops accepting,
lets the requests in flight finish (up to ``timeouts.shutdown`` seconds), and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from types import FrameType

from idempo.gateway.config import GatewayConfig, parse_address

__all__ = ["bind", "serve"]


def bind(address: str) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT``, inheritable by forked workers."""
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it (Linux): an event loop serving a socket it did not bind
    # may not set it, and Nagle's algorithm against a client's delayed ACK costs 40 ms a
    # response sent in two writes (measured: bench/bench_gateway.py).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _run_worker(config: GatewayConfig, sockets: list[socket.socket], log_level: str) -> None:
    import uvicorn

    from idempo.gateway.app import create_app

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            # The stop signals were blocked until uvicorn handles them: one sent while the
            # worker was still importing is delivered now, not lost.
            with super().capture_signals():
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
                yield

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                # One line per worker, for supervisors and tests to wait on.
                print(f"idempo gateway: worker {os.getpid()} ready", flush=True)

    server = Server(
        uvicorn.Config(
            create_app(
                config, admin_port=sockets[1].getsockname()[1] if len(sockets) > 1 else None
            ),
            lifespan="on",
            log_level=log_level,
            access_log=False,
            # The upstream's Server is relayed; its Date is replaced by the gateway's own, so
            # that a replay carries the date it was sent, as a live answer does.
            server_header=False,
            date_header=True,
            timeout_graceful_shutdown=int(config.timeouts.shutdown) or None,
            h11_max_incomplete_event_size=config.limits.max_header_bytes + 1024,
            timeout_keep_alive=30,
            # The gateway is the edge: X-Forwarded-For from a client is not to be believed
            # (it is appended to, not trusted); behind another proxy, that proxy appends.
            proxy_headers=False,
        )
    )
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully, to the
    # handler that was there before: a no-op one makes a clean stop exit 0, not -SIGTERM.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _ignore)
    asyncio.run(server.serve(sockets=sockets))
    if not server.started:
        sys.exit(3)


def serve(config: GatewayConfig, *, log_level: str = "warning") -> int:
    """Serve until SIGTERM or SIGINT; the exit status of the gateway."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    sockets = [bind(config.listen)]
    if config.admin:
        sockets.append(bind(config.admin))
    # Bound is ready: a connection waits in the backlog until a worker accepts it. The real
    # ports matter when the configuration asked for port 0.
    names = [_url(sock) for sock in sockets]
    admin = f" (admin {names[1]})" if len(names) > 1 else ""
    print(f"idempo gateway: listening on {names[0]}{admin}", flush=True)
    if config.workers == 1:
        _run_worker(config, sockets, log_level)
        return 0
    return _Supervisor(config, sockets, log_level).run()


class _Supervisor:
    """Forks the workers, replaces one that dies, and passes SIGTERM on."""

    def __init__(self, config: GatewayConfig, sockets: list[socket.socket], log_level: str) -> None:
        self.config = config
        self.sockets = sockets
        self.log_level = log_level
        self.children: set[int] = set()
        self.stopping = False

    def _spawn(self) -> None:
        if self.stopping:
            return
        # Forked with the stop signals blocked: the worker unblocks them once uvicorn handles
        # them, so one sent while it starts is neither lost nor run by the supervisor's handler.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _run_worker(self.config, self.sockets, self.log_level)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                code = 1
            os._exit(code)
        self.children.add(pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                self.children.discard(pid)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for _ in range(self.config.workers):
            self._spawn()
        failures: list[float] = []
        status = 0
        while self.children:
            try:
                pid, code = os.wait()
            except ChildProcessError:
                break
            self.children.discard(pid)
            if self.stopping:
                continue
            exit_code = os.waitstatus_to_exitcode(code)
            if exit_code == 3:
                # The worker could not start (a port taken, the lifespan failed): forking
                # another would fail the same way.
                status = 3
                self._stop(signal.SIGTERM, None)
                continue
            # A worker that died (killed, crashed) is replaced, unless they die in a loop.
            now = time.monotonic()
            failures = [t for t in failures if now - t < 10] + [now]
            if len(failures) > 5 * self.config.workers:
                status = 1
                self._stop(signal.SIGTERM, None)
                continue
            self._spawn()
        return status

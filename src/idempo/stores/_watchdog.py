"""A client-side deadline on one round trip, for a driver that has none of its own (psycopg).

A stalled server (paused, partitioned, its host overloaded) leaves a client waiting for a reply
that does not come. Its kernel may still acknowledge TCP, so keepalives and ``tcp_user_timeout``
never fire, and a server-side ``statement_timeout`` needs a server that runs. psycopg offers no
per-statement timeout: a sync wait has none, and an asyncio cancellation first sends a cancel
request and waits for the server again (5 s more in psycopg 3.3, forever before it).

So a watchdog thread shuts the connection's socket down at the deadline. The blocked wait (a
``poll`` in a thread, or the event loop's selector) then sees end-of-file at once, libpq marks
the connection broken, and the driver raises; :meth:`Watchdog.guard` turns that into
:class:`~idempo.errors.StoreUnavailableError`. The connection is never reused mid-protocol: the
caller closes it when ``watch.fired``, and a pool discards a closed connection.

The socket is watched through a duplicate of its descriptor: libpq closes its own descriptor
when it sees the connection break, and the number could then name another socket by the time
the deadline passes. One thread serves every store of the process. It ticks only while a round
trip is being watched and exits after a while with nothing to watch, so that arming a watch
never has to wake it (a wake per operation would cost the caller a thread switch).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

from idempo.errors import StoreUnavailableError

__all__ = ["WATCHDOG", "Watch", "Watchdog"]

# How often the thread looks at the watched round trips: the slack on every deadline.
_TICK = 0.05
# Ticks with nothing watched before the thread exits (it restarts on the next watch).
_IDLE_TICKS = 200


class Watch:
    """One watched round trip, entered with ``with``. ``fired`` is set once its socket has
    been shut down. A class rather than a generator context manager: it wraps every statement.
    """

    __slots__ = ("deadline", "fd", "fired", "timeout", "watchdog", "what")

    def __init__(self, watchdog: Watchdog, fd: int, timeout: float, what: str) -> None:
        self.watchdog = watchdog
        self.fd = fd
        self.timeout = timeout
        self.what = what
        self.deadline = 0.0
        self.fired = False

    def __enter__(self) -> Watch:
        self.fd = os.dup(self.fd)
        self.deadline = time.monotonic() + self.timeout
        try:
            self.watchdog._arm(self)
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self.watchdog._disarm(self)
        os.close(self.fd)  # after the disarm: the thread touches only watched fds
        if self.fired and isinstance(exc, Exception):
            raise StoreUnavailableError(
                f"{self.what}: no reply within timeout={self.timeout:g}s (the server is stalled"
                " or unreachable; the connection was discarded)"
            ) from exc


class Watchdog:
    """Shuts down the socket of a round trip that outlives its deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: set[Watch] = set()
        self._running = False
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        # The thread did not survive the fork, and the parent's round trips are not ours.
        self._lock = threading.Lock()
        self._watches = set()
        self._running = False

    def guard(self, fd: int, timeout: float, what: str) -> Watch:
        """Watch the round trip on socket ``fd`` for ``timeout`` seconds (``with`` it).

        If the deadline passed and the block raised (the driver saw the socket shut down), the
        error becomes StoreUnavailableError naming ``what``. The caller must discard the
        connection whenever ``watch.fired`` is set, even when no error was raised (the reply
        may have arrived just as the socket was shut down).
        """
        return Watch(self, fd, timeout, what)

    def _arm(self, watch: Watch) -> None:
        with self._lock:
            self._watches.add(watch)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="idempo-watchdog", daemon=True).start()

    def _disarm(self, watch: Watch) -> None:
        with self._lock:
            self._watches.discard(watch)

    def _run(self) -> None:
        idle = 0
        while True:
            time.sleep(_TICK)
            with self._lock:
                if not self._watches:
                    idle += 1
                    if idle >= _IDLE_TICKS:
                        self._running = False
                        return
                    continue
                idle = 0
                now = time.monotonic()
                for watch in self._watches:
                    if not watch.fired and watch.deadline <= now:
                        watch.fired = True
                        _shutdown(watch.fd)


def _shutdown(fd: int) -> None:
    # shutdown() acts on the socket itself (every descriptor of it), unlike close().
    sock = socket.socket(fileno=fd)
    try:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.detach()  # the descriptor stays the watch's, closed by guard()


WATCHDOG = Watchdog()

"""Paired sync/async primitives: every real difference between the two I/O worlds.

Async code in ``_async/`` folders uses the ``async_*`` names; ``scripts/unasync.py`` rewrites them
to the ``sync_*`` names in the generated twins. Nothing else may differ between the twins.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

__all__ = [
    "async_gather",
    "async_periodic",
    "async_sleep",
    "sync_gather",
    "sync_periodic",
    "sync_sleep",
]

log = logging.getLogger("idempo")

T = TypeVar("T")

async_sleep = asyncio.sleep
sync_sleep = time.sleep


async def async_gather(fns: list[Callable[[], Awaitable[T]]]) -> list[T | BaseException]:
    """Run every ``fn`` concurrently as tasks; results or exceptions, in order."""
    return await asyncio.gather(*(fn() for fn in fns), return_exceptions=True)


def sync_gather(fns: list[Callable[[], T]]) -> list[T | BaseException]:
    """Run every ``fn`` concurrently in its own thread, started together; results or exceptions."""
    barrier = threading.Barrier(len(fns))

    def run(fn: Callable[[], T]) -> T:
        barrier.wait()
        return fn()

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(fns)) as pool:
        futures = [pool.submit(run, fn) for fn in fns]
        out: list[T | BaseException] = []
        for future in futures:
            try:
                out.append(future.result())
            except BaseException as exc:
                out.append(exc)
        return out


# -- periodic background work (lease heartbeats) ---------------------------------------------


@contextlib.asynccontextmanager
async def async_periodic(
    fn: Callable[[], Awaitable[object]], interval: float
) -> AsyncIterator[None]:
    """Call ``fn`` every ``interval`` seconds in a task while the block runs. The first failure
    stops the calls: a heartbeat that cannot renew its lease stops beating (its holder learns
    of it when it completes, as LeaseLostError)."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except Exception:
                log.debug("idempo: a periodic call failed; stopping it", exc_info=True)
                return

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _Beats:
    """One daemon thread runs every sync periodic call, so that a call costs an append, not a
    thread. Calls of one interval are due in the order they were added, so each interval keeps
    a FIFO queue (no heap), and a cancelled call is only forgotten (skipped when it comes up)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queues: dict[float, collections.deque[tuple[float, int, Callable[[], object]]]] = {}
        self._live: set[int] = set()
        self._seq = 0
        self._thread: threading.Thread | None = None

    def add(self, fn: Callable[[], object], interval: float) -> int:
        with self._cond:
            self._seq += 1
            handle = self._seq
            self._live.add(handle)
            queue = self._queues.get(interval)
            if queue is None:
                queue = self._queues[interval] = collections.deque()
            wake = not queue  # a new head of a queue may be due before what the thread awaits
            queue.append((time.monotonic() + interval, handle, fn))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="idempo-heartbeat", daemon=True
                )
                self._thread.start()
            elif wake:
                self._cond.notify()
            return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            self._live.discard(handle)

    def _next(self) -> tuple[float, int, Callable[[], object]]:
        """Wait for the earliest live call to come due; remove it and return it with its
        interval (called with the condition held)."""
        while True:
            head: tuple[float, float] | None = None  # (due, interval)
            for interval, queue in self._queues.items():
                while queue and queue[0][1] not in self._live:
                    queue.popleft()
                if queue and (head is None or queue[0][0] < head[0]):
                    head = (queue[0][0], interval)
            if head is None:
                self._cond.wait()
                continue
            wait = head[0] - time.monotonic()
            if wait > 0:
                self._cond.wait(wait)
                continue
            _, handle, fn = self._queues[head[1]].popleft()
            return head[1], handle, fn

    def _run(self) -> None:
        while True:
            with self._cond:
                interval, handle, fn = self._next()
            try:
                fn()
            except Exception:
                log.debug("idempo: a periodic call failed; stopping it", exc_info=True)
                self.cancel(handle)
                continue
            with self._cond:
                if handle in self._live:
                    self._queues[interval].append((time.monotonic() + interval, handle, fn))


class _Periodic:
    """The context manager of :func:`sync_periodic` (a class: cheaper than a generator)."""

    __slots__ = ("_fn", "_handle", "_interval")

    def __init__(self, fn: Callable[[], object], interval: float) -> None:
        self._fn = fn
        self._interval = interval
        self._handle = 0

    def __enter__(self) -> None:
        self._handle = _BEATS.add(self._fn, self._interval)

    def __exit__(self, *exc: object) -> None:
        _BEATS.cancel(self._handle)


_BEATS = _Beats()


def sync_periodic(
    fn: Callable[[], object], interval: float
) -> contextlib.AbstractContextManager[None]:
    """Call ``fn`` every ``interval`` seconds (on idempo's one heartbeat thread) while the block
    runs. The first failure stops the calls."""
    return _Periodic(fn, interval)

"""Paired sync/async primitives: every real difference between the two I/O worlds.

Async code in ``_async/`` folders uses the ``async_*`` names; ``scripts/unasync.py`` rewrites them
to the ``sync_*`` names in the generated twins. Nothing else may differ between the twins.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
    """One daemon thread runs every sync periodic call, so that a request costs a heap push,
    not a thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callable[[], object], float]] = []
        self._live: set[int] = set()
        self._seq = 0
        self._thread: threading.Thread | None = None

    def add(self, fn: Callable[[], object], interval: float) -> int:
        with self._cond:
            self._seq += 1
            handle = self._seq
            self._live.add(handle)
            heapq.heappush(self._heap, (time.monotonic() + interval, handle, fn, interval))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="idempo-heartbeat", daemon=True
                )
                self._thread.start()
            self._cond.notify()
            return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            self._live.discard(handle)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][1] not in self._live:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    due = self._heap[0][0] - time.monotonic()
                    if due <= 0:
                        break
                    self._cond.wait(due)
                _, handle, fn, interval = heapq.heappop(self._heap)
            try:
                fn()
            except Exception:
                log.debug("idempo: a periodic call failed; stopping it", exc_info=True)
                self.cancel(handle)
                continue
            with self._cond:
                if handle in self._live:
                    heapq.heappush(self._heap, (time.monotonic() + interval, handle, fn, interval))


_BEATS = _Beats()


@contextlib.contextmanager
def sync_periodic(fn: Callable[[], object], interval: float) -> Iterator[None]:
    """Call ``fn`` every ``interval`` seconds (on idempo's one heartbeat thread) while the block
    runs. The first failure stops the calls (logged)."""
    handle = _BEATS.add(fn, interval)
    try:
        yield
    finally:
        _BEATS.cancel(handle)

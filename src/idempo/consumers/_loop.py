"""What every broker adapter's consuming loop shares: bounded in-flight deliveries, a clean
stop, and cancellation that a client library swallowed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

__all__ = ["Tasks", "finish_loop", "raise_if_cancelled"]

log = logging.getLogger("idempo.consumer")


class Tasks:
    """The in-flight deliveries of an adapter: bounded concurrency, and a clean stop."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"concurrency must be >= 1, not {limit!r}")
        self.limit = limit
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        self._changed = asyncio.Event()

    @property
    def free(self) -> int:
        return max(0, self.limit - len(self.tasks))

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def track(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        self._changed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("idempo: consumer task failed", exc_info=task.exception())

    async def wait_free(self) -> None:
        """Wait until a slot is free (or :meth:`close` is called)."""
        while not self.free and not self.closing:
            self._changed.clear()
            await self._changed.wait()

    def close(self) -> None:
        """Wake the reading loop: it is stopping."""
        self.closing = True
        self._changed.set()

    async def drain(self, grace: float | None) -> None:
        """Wait for in-flight deliveries; cancel those still running after ``grace`` seconds."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(set(self.tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        # Deliveries that arrived while we waited.
        if self.tasks:
            await self.drain(0 if grace is None else grace)


async def finish_loop(task: asyncio.Task[Any] | None, wait: float) -> None:
    """Let an adapter's reading loop end by itself (it checks its stop flag after every read),
    cancelling it after ``wait`` seconds."""
    if task is None or task.done():
        return
    try:
        await asyncio.wait_for(asyncio.shield(task), wait)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def raise_if_cancelled() -> None:
    """Re-raise a cancellation a client library swallowed. A task cancelled during a blocking
    call can see the call return normally instead (redis-py: a blocking XREADGROUP,
    redis/redis-py#2028); an adapter's reading loop would then run on forever."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError

"""Paired sync/async primitives: every real difference between the two I/O worlds.

Async code in ``_async/`` folders uses the ``async_*`` names; ``scripts/unasync.py`` rewrites them
to the ``sync_*`` names in the generated twins. Nothing else may differ between the twins.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = [
    "async_gather",
    "async_sleep",
    "sync_gather",
    "sync_sleep",
]

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

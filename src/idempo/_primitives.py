"""Paired sync/async primitives: every real difference between the two I/O worlds.

Async code in ``_async/`` folders uses the ``async_*`` names; ``scripts/unasync.py`` rewrites them
to the ``sync_*`` names in the generated twins. Nothing else may differ between the twins.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

__all__ = [
    "AsyncLock",
    "AsyncShieldCancellation",
    "Lock",
    "ShieldCancellation",
    "async_gather",
    "async_interrupted",
    "async_periodic",
    "async_sleep",
    "async_spawn",
    "sync_gather",
    "sync_interrupted",
    "sync_periodic",
    "sync_sleep",
    "sync_spawn",
]

log = logging.getLogger("idempo")

T = TypeVar("T")

async_sleep = asyncio.sleep
sync_sleep = time.sleep

# What can cut an operation short between sending a request and reading its reply: a task's
# cancellation. A thread cannot be cancelled, so the sync twin's ``except`` catches nothing.
async_interrupted: tuple[type[BaseException], ...] = (asyncio.CancelledError,)
sync_interrupted: tuple[type[BaseException], ...] = ()


# -- work left to run in the background (best effort: it dies with the process) --------------

_SPAWNED: set[asyncio.Task[object]] = set()  # strong references: the loop keeps only weak ones


def async_spawn(fn: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """Run ``fn()`` as a task of the running loop, without waiting for it."""
    task: asyncio.Task[object] = asyncio.get_running_loop().create_task(fn())
    _SPAWNED.add(task)
    task.add_done_callback(_SPAWNED.discard)


def sync_spawn(fn: Callable[[], object]) -> None:
    """Run ``fn()`` in a daemon thread of its own, without waiting for it."""
    threading.Thread(target=fn, name="idempo-background", daemon=True).start()


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


# -- locks and cancellation shields ----------------------------------------------------------

# A lock that tasks wait for without blocking their event loop, and its thread twin. Neither is
# reentrant. An AsyncLock binds to the event loop of its first contended use.
AsyncLock = asyncio.Lock
Lock = threading.Lock


class AsyncShieldCancellation:
    """Run work to its end even if the calling task is cancelled meanwhile; the cancellation
    is delivered to the caller once the work is done.

    ``await AsyncShieldCancellation.run(fn)``. A call, not a block: plain asyncio can only
    shield a separate task (httpcore's block form rests on anyio's cancel scopes, which idempo
    does not depend on). Use it for short cleanup that must not stop halfway, such as writing
    or releasing a record after the client went away.
    """

    @staticmethod
    async def run(fn: Callable[[], Awaitable[T]]) -> T:
        task = asyncio.ensure_future(fn())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise  # the work itself was cancelled
            while not task.done():
                # Cancelled again while waiting: keep waiting, the first cancellation stands.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(task)
            if not task.cancelled():
                task.exception()  # retrieved: the caller's cancellation takes precedence
            raise


class ShieldCancellation:
    """The thread twin of :class:`AsyncShieldCancellation`: a thread cannot be cancelled, so
    ``ShieldCancellation.run(fn)`` is ``fn()``."""

    @staticmethod
    def run(fn: Callable[[], T]) -> T:
        return fn()


# -- periodic background work (lease heartbeats) ---------------------------------------------


class _AsyncPeriodic:
    """The context manager of :func:`async_periodic`: no timer of its own until its first beat
    is due, since almost every block ends long before that. Blocks that start close together
    share one timer for their first beat (a :class:`_FirstBeats`): entering and leaving such a
    block is a set insert and a discard, not a timer scheduled and cancelled on the event loop
    (on every guarded HTTP request). Its first beat comes at most ``interval`` after the block
    started (at least two thirds of it); later beats every ``interval``, on a timer of its own.
    """

    __slots__ = ("_fatal", "_first", "_fn", "_handle", "_interval", "_loop", "_stopped", "_task")

    def __init__(
        self,
        fn: Callable[[], Awaitable[object]],
        interval: float,
        fatal: tuple[type[BaseException], ...],
    ) -> None:
        self._fn = fn
        self._interval = interval
        self._fatal = fatal
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._first: _FirstBeats | None = None
        self._stopped = False

    async def __aenter__(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._first = _FirstBeats.join(self, loop, self._interval)

    def _due(self) -> None:
        self._handle = None
        if not self._stopped:
            self._task = self._loop.create_task(self._beat())

    async def _beat(self) -> None:
        try:
            await self._fn()
        except self._fatal:
            log.debug("idempo: a periodic call failed for good; stopping it", exc_info=True)
            return
        except Exception:
            log.debug("idempo: a periodic call failed; trying again later", exc_info=True)
        if not self._stopped:
            self._handle = self._loop.call_later(self._interval, self._due)

    async def __aexit__(self, *exc: object) -> None:
        self._stopped = True
        first, self._first = self._first, None
        if first is not None:
            first.members.discard(self)
        if self._handle is not None:
            self._handle.cancel()
        task = self._task
        if task is not None and not task.done():
            # A beat in flight is let finish (one round trip, bounded by the store's timeout),
            # not cancelled: cancelling a driver mid-round-trip costs more than the wait
            # (psycopg sends the server a cancel request and discards the connection; redis-py
            # drops a connection with an unread reply). Its failure was already logged.
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is None or current.cancelling():
                    task.cancel()  # the block's own task is being cancelled: so is the beat
                    raise
                # Only the beat was cancelled (by someone else): nothing left to wait for.


class _FirstBeats:
    """One timer for the first beat of every periodic block that started within a third of
    ``interval`` of each other, on one event loop. The module keeps a weak reference to the
    newest one (the loop's timer holds it while it is armed), so an idle process holds none."""

    __slots__ = ("__weakref__", "interval", "loop", "members", "opened")

    _newest: Callable[[], _FirstBeats | None] = staticmethod(lambda: None)

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float, now: float) -> None:
        self.loop = loop
        self.interval = interval
        self.opened = now
        self.members: set[_AsyncPeriodic] = set()
        loop.call_at(now + interval, self._fire)

    @classmethod
    def join(
        cls, member: _AsyncPeriodic, loop: asyncio.AbstractEventLoop, interval: float
    ) -> _FirstBeats:
        now = loop.time()
        group = cls._newest()
        if (
            group is None
            or group.loop is not loop
            or group.interval != interval
            or now - group.opened > interval / 3
        ):
            group = cls(loop, interval, now)
            cls._newest = weakref.ref(group)
        group.members.add(member)
        return group

    def _fire(self) -> None:
        members, self.members = self.members, set()
        for member in members:
            member._first = None
            member._due()


def async_periodic(
    fn: Callable[[], Awaitable[object]],
    interval: float,
    *,
    fatal: tuple[type[BaseException], ...] = (),
) -> contextlib.AbstractAsyncContextManager[None]:
    """Call ``fn`` every ``interval`` seconds while the block runs. A failure of a ``fatal``
    type stops the calls (a heartbeat whose lease was taken over: its holder learns of it when
    it completes); any other failure (a store blip) is ridden out until the next beat. A call
    in flight when the block ends is awaited, not cancelled: no call outlives the block."""
    return _AsyncPeriodic(fn, interval, fatal)


class _Beats:
    """One daemon thread runs every sync periodic call. Registering a call is a dict insert
    (atomic under the GIL: no lock, and no thread switch), since almost every call ends long
    before its first beat. The thread ticks at a third of the shortest interval in use and runs
    what is due; it is woken only when it sleeps idle, or when a call needs a shorter tick."""

    def __init__(self) -> None:
        self._calls: dict[int, list[Any]] = {}  # handle -> [due, interval, fn, fatal]
        self._ids = itertools.count(1)
        self._wake = threading.Event()
        self._start = threading.Lock()
        self._thread: threading.Thread | None = None
        self._idle = True
        self._tick = 1.0

    def add(
        self, fn: Callable[[], object], interval: float, fatal: tuple[type[BaseException], ...]
    ) -> int:
        handle = next(self._ids)
        self._calls[handle] = [time.monotonic() + interval, interval, fn, fatal]
        if self._thread is None:
            with self._start:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="idempo-heartbeat", daemon=True
                    )
                    self._thread.start()
        if self._idle or interval / 3 < self._tick:
            self._wake.set()
        return handle

    def cancel(self, handle: int) -> None:
        self._calls.pop(handle, None)

    def _run(self) -> None:
        quiet = 0  # ticks in a row with nothing registered
        while True:
            calls = list(self._calls.items())
            if calls:
                quiet = 0
                self._tick = min(entry[1] for _, entry in calls) / 3
            else:
                quiet += 1
                if quiet > 2:  # idle: sleep until a call arrives
                    self._idle = True
                    if self._calls:  # one arrived before add() could see us idle
                        self._idle = False
                        continue
                    self._wake.wait()
                    self._wake.clear()
                    self._idle = False
                    quiet = 0
                    continue
            now = time.monotonic()
            for handle, entry in calls:
                if entry[0] > now or handle not in self._calls:
                    continue
                try:
                    entry[2]()
                except entry[3]:
                    log.debug("idempo: a periodic call failed for good; stopping it", exc_info=True)
                    self._calls.pop(handle, None)
                    continue
                except Exception:
                    log.debug("idempo: a periodic call failed; trying again later", exc_info=True)
                entry[0] = time.monotonic() + entry[1]
            self._wake.wait(self._tick)
            self._wake.clear()


class _Periodic:
    """The context manager of :func:`sync_periodic` (a class: cheaper than a generator)."""

    __slots__ = ("_fatal", "_fn", "_handle", "_interval")

    def __init__(
        self, fn: Callable[[], object], interval: float, fatal: tuple[type[BaseException], ...]
    ) -> None:
        self._fn = fn
        self._interval = interval
        self._fatal = fatal
        self._handle = 0

    def __enter__(self) -> None:
        self._handle = _BEATS.add(self._fn, self._interval, self._fatal)

    def __exit__(self, *exc: object) -> None:
        _BEATS.cancel(self._handle)


_BEATS = _Beats()


def sync_periodic(
    fn: Callable[[], object],
    interval: float,
    *,
    fatal: tuple[type[BaseException], ...] = (),
) -> contextlib.AbstractContextManager[None]:
    """Call ``fn`` every ``interval`` seconds (on idempo's one heartbeat thread) while the block
    runs. A failure of a ``fatal`` type stops the calls; any other is ridden out."""
    return _Periodic(fn, interval, fatal)

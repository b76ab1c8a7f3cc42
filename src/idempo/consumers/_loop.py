"""What the broker adapters share: :class:`BrokerConsumer` (start, stop, the in-flight
deliveries, the message-id options) and the pieces of a reading loop.

An adapter subclasses :class:`BrokerConsumer` and writes only what its broker needs: ``_open``
(subscribe), ``_run`` (the reading loop, a background task until :meth:`~BrokerConsumer.stop`;
a pull consumer hands one read to ``_poll``), ``_close`` (unsubscribe), and its
:class:`~idempo.consumers.Delivery` (ack, retry, dead-letter)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, Self, TypeVar, Unpack

from idempo.consumers._consumer import Consumer, ConsumerOptions, Handler
from idempo.stores.base import AsyncStore

__all__ = [
    "BrokerConsumer",
    "Tasks",
    "finish_loop",
    "header_message_id",
    "pick_message_id",
    "raise_if_cancelled",
]

log = logging.getLogger("idempo.consumer")

M = TypeVar("M")

MessageId = Callable[[M], str | None]

# Seconds stop() grants the reading loop beyond one read's timeout to notice it is stopping.
_STOP_MARGIN = 5.0


class HasHeaders(Protocol):
    """A message with a header mapping (aio-pika, nats-py)."""

    @property
    def headers(self) -> Mapping[str, object] | None: ...


def header_message_id(header: str) -> Callable[[HasHeaders], str | None]:
    """A message id read from the header ``header`` (None when absent: no fallback)."""

    def message_id(message: HasHeaders) -> str | None:
        value = (message.headers or {}).get(header)
        if value is None:
            return None
        if isinstance(value, bytes):  # AMQP long strings may arrive undecoded
            return value.decode("utf-8", "replace")
        return str(value)

    return message_id


def pick_message_id(
    message_id: MessageId[M] | None,
    by_name: str | None,
    *,
    default: MessageId[M],
    read: Callable[[str], MessageId[M]],
    option: str = "id_header",
) -> MessageId[M]:
    """An adapter's message-id callable, from its ``message_id=`` and ``id_header=`` options.

    Args:
        message_id: the caller's own callable, if any.
        by_name: the value of the adapter's ``option`` (the header or field to read), if any.
        default: the broker's own id, used when neither is given.
        read: makes the callable that reads ``by_name`` from a message.
        option: the option's name, for the error.

    Raises:
        TypeError: both ``message_id`` and ``by_name`` are given.
    """
    if message_id is not None and by_name is not None:
        raise TypeError(f"pass message_id= or {option}=, not both")
    if message_id is not None:
        return message_id
    return default if by_name is None else read(by_name)


class Tasks:
    """The in-flight deliveries of an adapter: bounded concurrency, and a clean stop.

    Args:
        limit: the most deliveries handled at once; None when something else bounds them (the
            AMQP prefetch count).
    """

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"concurrency must be >= 1, not {limit!r}")
        self.limit = limit
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        self._changed = asyncio.Event()

    @property
    def free(self) -> int:
        """How many more deliveries may start now (unbounded: ``sys.maxsize``)."""
        if self.limit is None:
            return sys.maxsize
        return max(0, self.limit - len(self.tasks))

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self.track(task)
        return task

    def track(self, task: asyncio.Task[Any]) -> None:
        """Count a task someone else started (aio-pika runs each message in its own task)."""
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

    def open(self) -> None:
        """Accept deliveries again (a restart after :meth:`close`)."""
        self.closing = False

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


class BrokerConsumer(Consumer[M], ABC):
    """A :class:`~idempo.consumers.Consumer` that reads its broker in the background.

    :meth:`start` subscribes (``_open``) and runs ``_run`` as a task; :meth:`stop` sets
    ``_stopping``, lets that loop end, drains the in-flight deliveries, unsubscribes
    (``_close``) and closes the store if this consumer opened it. ``async with consumer:``
    does both.

    Args:
        handler: see :class:`~idempo.consumers.Consumer`.
        store: an async store, or a URL opened on first use.
        name: the scope of the records.
        message_id: the idempotency key of a message (see :func:`pick_message_id`).
        concurrency: the most deliveries handled at once (None: unbounded here, the broker
            bounds them).
        **options: the other :class:`~idempo.consumers.ConsumerOptions`.
    """

    def __init__(
        self,
        handler: Handler[M],
        *,
        store: str | AsyncStore,
        name: str,
        message_id: MessageId[M],
        concurrency: int | None,
        **options: Unpack[ConsumerOptions],
    ) -> None:
        super().__init__(handler, store=store, name=name, message_id=message_id, **options)
        self._tasks = Tasks(concurrency)
        self._stopping = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    @property
    def _read_timeout(self) -> float:
        """Seconds one read of the loop may block (stop() waits that long, plus a margin)."""
        return 0.0

    async def _open(self) -> None:
        """Subscribe, before the loop starts (errors surface from :meth:`start`)."""

    @abstractmethod
    async def _run(self) -> None:
        """The reading loop: hand each message to :meth:`process` through ``self._tasks``,
        until ``self._stopping`` is set."""

    async def _close(self) -> None:
        """Unsubscribe, once the in-flight deliveries have finished."""

    async def _poll(self, read: Callable[[], Awaitable[None]], *, what: str, pause: float) -> None:
        """A pull loop for ``_run``: call ``read`` (one read of the broker, which spawns what it
        got) whenever a slot is free, until :meth:`stop`.

        Args:
            read: reads at most ``self._tasks.free`` messages and starts them.
            what: names a failed read in the warning (``"fetch"``).
            pause: seconds to wait after a failed read before the next one.
        """
        while not self._stopping.is_set():
            await self._tasks.wait_free()
            if self._stopping.is_set():
                return
            raise_if_cancelled()
            try:
                await read()
            except Exception:
                if self._stopping.is_set():  # the connection closing under us: not a failure
                    return
                log.warning("idempo: %s: %s failed; retrying", self.name, what, exc_info=True)
                await asyncio.sleep(pause)

    async def start(self) -> None:
        """Subscribe and start reading in the background (returns at once).

        Raises:
            RuntimeError: the consumer is already started.
        """
        if self._loop is not None:
            raise RuntimeError("this consumer is already started")
        self._stopping.clear()
        self._tasks.open()
        await self._open()
        self._loop = asyncio.create_task(self._run())

    async def stop(self, grace: float | None = 30.0) -> None:
        """Stop reading, let in-flight deliveries finish, unsubscribe, and close the store if
        this consumer opened it.

        Args:
            grace: seconds in-flight deliveries may still run; then they are cancelled,
                unsettled, and the broker redelivers them. None: wait for them.
        """
        self._stopping.set()
        self._tasks.close()
        loop, self._loop = self._loop, None
        await finish_loop(loop, self._read_timeout + _STOP_MARGIN)
        await self._tasks.drain(grace)
        await self._close()
        await self.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


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

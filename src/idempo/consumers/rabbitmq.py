"""RabbitMQ (aio-pika): consume a queue with manual acks, each message processed once.

::

    connection = await aio_pika.connect_robust("amqp://guest:guest@localhost/")
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=20)           # also the number of concurrent handlers
    queue = await channel.declare_queue("billing", durable=True,
                                        arguments={"x-queue-type": "quorum",
                                                   "x-dead-letter-exchange": "billing.dlx"})

    async def handle(message: AbstractIncomingMessage) -> None: ...

    consumer = RabbitMQConsumer(queue, handle, store="sqlite:///idempo.db")
    await consumer.start()          # consumes in the background; stop() cancels and drains

Identity: the AMQP ``message_id`` property, set by the producer (``Message(..., message_id=…)``),
or the header named by ``id_header=``, or your own ``message_id=`` callable. A message without
one is rejected without requeue (to the queue's dead-letter exchange, if it has one; otherwise
RabbitMQ drops it) with an error log: it could never be recognized when redelivered. Note that
aio-pika (aiormq) gives every message published without a ``message_id`` a random one: a
producer that retries a publish with a new ``Message`` makes a new id, which is not recognized as
a duplicate. Producers should set ``message_id`` from a stable business id.

Settling: ack after the record is committed. A message held by another consumer, or whose
handler failed, is nacked with requeue after the delay (RabbitMQ has no delayed requeue: the
delivery task sleeps first, holding its prefetch slot; :meth:`~RabbitMQConsumer.stop` hands such
messages back at once). Dead-lettering is ``reject(requeue=False)``.

Delivery counts: quorum queues carry ``x-delivery-count``, so ``max_deliveries`` holds across
consumers and restarts (a quorum queue's own ``x-delivery-limit`` is a second safety net).
Classic queues do not count: this adapter counts the deliveries it sees itself, per process, and
a message first seen as ``redelivered`` counts as its second delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Unpack

try:
    from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, ConsumerTag
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"idempo.consumers.rabbitmq needs aio-pika ({exc.name} is missing): "
        "pip install 'idempo[rabbitmq]'"
    ) from exc

from idempo.consumers._consumer import ConsumerOptions, Delivery, Handler
from idempo.consumers._loop import BrokerConsumer, header_message_id, pick_message_id
from idempo.stores.base import AsyncStore

__all__ = ["RabbitMQConsumer", "RabbitMQDelivery", "amqp_message_id"]

# How many message ids the per-process delivery counter (classic queues) remembers.
_COUNTER_SIZE = 100_000


def amqp_message_id(message: AbstractIncomingMessage) -> str | None:
    """The default message id: the AMQP ``message_id`` property."""
    return message.message_id


class RabbitMQDelivery(Delivery[AbstractIncomingMessage]):
    """One AMQP delivery: ack, nack with requeue after a delay, reject without requeue.

    Args:
        message: the aio-pika message.
        attempt: its delivery count, if known.
        on_settled: called once it is acked or rejected (the classic-queue counter forgets it).
        stopping: set when the consumer stops: a delayed requeue then happens at once.
    """

    def __init__(
        self,
        message: AbstractIncomingMessage,
        *,
        attempt: int | None,
        on_settled: Callable[[], None] | None = None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        super().__init__(message, attempt=attempt)
        self._on_settled = on_settled
        self._stopping = stopping

    async def ack(self) -> None:
        await self.message.ack()
        if self._on_settled is not None:
            self._on_settled()

    async def retry(self, delay: float) -> None:
        try:
            if delay > 0:
                # RabbitMQ has no delayed requeue: hold the message, unless the consumer stops.
                if self._stopping is None:
                    await asyncio.sleep(delay)
                else:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), delay)
        finally:
            # Also when cancelled or stopping: hand the message back at once.
            if not self.message.channel.is_closed:
                await self.message.nack(requeue=True)

    async def dead_letter(self, reason: str) -> None:
        await self.message.reject(requeue=False)
        if self._on_settled is not None:
            self._on_settled()


class RabbitMQConsumer(BrokerConsumer[AbstractIncomingMessage]):
    """Consume ``queue`` with manual acks; see the module's documentation.

    The channel's prefetch count (``channel.set_qos``) bounds the number of messages handled at
    once. :meth:`stop` cancels the subscription and hands messages waiting for a delayed
    requeue back at once; in-flight messages cancelled after ``grace`` are redelivered.

    Args:
        queue: an aio-pika queue.
        handler: ``async def handler(message)``; see :class:`~idempo.consumers.Consumer`.
        store: an async store, or a URL.
        name: the scope of the records (default: the queue's name).
        message_id: ``callable(message) -> str | None`` (default: the AMQP ``message_id``).
        id_header: read the message id from this header instead.
        **options: the other :class:`~idempo.consumers.ConsumerOptions`.
    """

    def __init__(
        self,
        queue: AbstractQueue,
        handler: Handler[AbstractIncomingMessage],
        *,
        store: str | AsyncStore,
        name: str | None = None,
        message_id: Callable[[AbstractIncomingMessage], str | None] | None = None,
        id_header: str | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> None:
        super().__init__(
            handler,
            store=store,
            name=name or queue.name,
            message_id=pick_message_id(
                message_id, id_header, default=amqp_message_id, read=header_message_id
            ),
            concurrency=None,  # the prefetch count bounds it
            **options,
        )
        self.queue = queue
        self._tag: ConsumerTag | None = None
        self._seen: OrderedDict[str, int] = OrderedDict()

    def wrap(self, message: AbstractIncomingMessage) -> Delivery[AbstractIncomingMessage]:
        """The :class:`Delivery` for ``message`` (override to customize settling)."""
        key = self._counter_key(message)
        return RabbitMQDelivery(
            message,
            attempt=self._attempt(message, key),
            on_settled=None if key is None else lambda: self._forget(key),
            stopping=self._stopping,
        )

    async def _open(self) -> None:
        self._tag = await self.queue.consume(self._on_message, no_ack=False)

    async def _run(self) -> None:
        # aio-pika reads the queue and calls _on_message: this task only holds the
        # subscription, which stop() ends before draining, so nothing new arrives.
        try:
            await self._stopping.wait()
        finally:
            tag, self._tag = self._tag, None
            if tag is not None:
                with contextlib.suppress(Exception):
                    await self.queue.cancel(tag)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.track(task)
        await self.process(self.wrap(message))

    def _forget(self, key: str) -> None:
        self._seen.pop(key, None)

    def _counter_key(self, message: AbstractIncomingMessage) -> str | None:
        try:
            return self.message_id(message) or None
        except Exception:
            return None

    def _attempt(self, message: AbstractIncomingMessage, key: str | None) -> int | None:
        count = (message.headers or {}).get("x-delivery-count")
        if isinstance(count, int) and not isinstance(count, bool):
            return count + 1  # quorum queues: how many times it was delivered before
        if key is None:
            return None if message.redelivered else 1
        seen = self._seen.pop(key, 1 if message.redelivered else 0) + 1
        self._seen[key] = seen
        while len(self._seen) > _COUNTER_SIZE:
            self._seen.popitem(last=False)
        return seen

"""NATS JetStream (nats-py): a durable pull consumer with explicit acks, each message once.

::

    nc = await nats.connect("nats://localhost:4222")
    js = nc.jetstream()

    async def handle(msg: nats.aio.msg.Msg) -> None: ...

    consumer = JetStreamConsumer(js, "orders.>", handle, durable="billing", stream="ORDERS",
                                 store="sqlite:///idempo.db")
    await consumer.start()          # fetches in the background; stop() drains

Identity: the ``Nats-Msg-Id`` header the producer set (also what JetStream itself deduplicates
on within the stream's ``duplicate_window``; idempo extends that to ``ttl`` and to the
consumer's side effects), or the header named by ``id_header=``, or your own ``message_id=``.
Without the header the id is ``<stream>:<stream sequence>``: stable across redeliveries of that
stream message (lost acks, restarts, naks), but a producer that publishes the same message twice
makes two sequences, which are *not* recognized as duplicates. Have producers set
``Nats-Msg-Id`` when that matters.

Settling: ``ack_sync`` (the server confirms the ack) after the record is committed. A message
held by another consumer, or whose handler failed, is ``nak``-ed with a delay (JetStream delays
the redelivery itself). Dead-lettering is ``term`` (JetStream never redelivers it and emits a
``$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED`` advisory); with ``dead_letter_subject=`` the
message is first published there (into a stream that captures that subject).
While a handler runs, ``in_progress`` is sent with every lease renewal, so ``ack_wait`` does not
expire for a live worker. Delivery counts come from JetStream (``num_delivered``), so
``max_deliveries`` holds across consumers and restarts.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from typing import Unpack

try:
    from nats.aio.msg import Msg
    from nats.js.api import ConsumerConfig
    from nats.js.client import JetStreamContext
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"idempo.consumers.nats needs nats-py ({exc.name} is missing): pip install 'idempo[nats]'"
    ) from exc

from idempo.consumers._consumer import ConsumerOptions, Delivery, Handler
from idempo.consumers._loop import BrokerConsumer, header_message_id, pick_message_id
from idempo.stores.base import AsyncStore

__all__ = ["JetStreamConsumer", "JetStreamDelivery", "nats_message_id"]

log = logging.getLogger("idempo.consumer")

MSG_ID_HEADER = "Nats-Msg-Id"


def nats_message_id(msg: Msg) -> str | None:
    """The default message id: the ``Nats-Msg-Id`` header, else ``<stream>:<sequence>``."""
    value = (msg.headers or {}).get(MSG_ID_HEADER)
    if value:
        return value
    meta = msg.metadata
    return f"{meta.stream}:{meta.sequence.stream}"


class JetStreamDelivery(Delivery[Msg]):
    """One JetStream delivery: ack_sync, nak with delay, term (after an optional publish to a
    dead-letter subject), in_progress."""

    def __init__(
        self,
        message: Msg,
        *,
        js: JetStreamContext,
        dead_letter_subject: str | None = None,
        ack_timeout: float = 5.0,
        ack_wait: float | None = None,
    ) -> None:
        super().__init__(message, attempt=message.metadata.num_delivered)
        self.keepalive_within = ack_wait
        self._js = js
        self._dead_letter_subject = dead_letter_subject
        self._ack_timeout = ack_timeout

    async def ack(self) -> None:
        await self.message.ack_sync(timeout=self._ack_timeout)

    async def retry(self, delay: float) -> None:
        await self.message.nak(delay=delay if delay > 0 else None)

    async def dead_letter(self, reason: str) -> None:
        if self._dead_letter_subject is not None:
            meta = self.message.metadata
            headers = dict(self.message.headers or {})
            headers.pop(MSG_ID_HEADER, None)  # let the dead-letter stream keep every copy
            headers.update(
                {
                    "Idempo-Reason": reason[:1000],
                    "Idempo-Subject": self.message.subject,
                    "Idempo-Stream": meta.stream,
                    "Idempo-Sequence": str(meta.sequence.stream),
                }
            )
            await self._js.publish(self._dead_letter_subject, self.message.data, headers=headers)
        await self.message.term()

    async def keepalive(self) -> None:
        await self.message.in_progress()


class JetStreamConsumer(BrokerConsumer[Msg]):
    """A durable JetStream pull consumer on ``subject``; see the module's documentation.

    :meth:`stop` unsubscribes but leaves the durable consumer on the server; in-flight messages
    cancelled after ``grace`` are redelivered after ``ack_wait``.

    Args:
        js: the JetStream context (``nc.jetstream()``).
        subject: the subject to consume.
        handler: ``async def handler(msg)``; see :class:`~idempo.consumers.Consumer`.
        durable: the JetStream consumer's name, created if missing (with ``config``, or explicit
            acks and deliver all); also the default ``name``.
        store: an async store, or a URL.
        stream: the stream (found from the subject when omitted).
        config: the ``ConsumerConfig`` to create the durable consumer with.
        name: the scope of the records (default: ``durable``).
        message_id: ``callable(msg) -> str | None`` (default: :func:`nats_message_id`).
        id_header: read the message id from this header instead (no fallback).
        concurrency: messages handled at once (and the most fetched in one pull).
        fetch_timeout: seconds one pull waits for messages (also how long :meth:`stop` may
            wait for the pull in flight).
        ack_timeout: seconds ``ack_sync`` waits for the server's confirmation.
        dead_letter_subject: publish a dead-lettered message there before ``term``.
        **options: the other :class:`~idempo.consumers.ConsumerOptions`.
    """

    def __init__(
        self,
        js: JetStreamContext,
        subject: str,
        handler: Handler[Msg],
        *,
        durable: str,
        store: str | AsyncStore,
        stream: str | None = None,
        config: ConsumerConfig | None = None,
        name: str | None = None,
        message_id: Callable[[Msg], str | None] | None = None,
        id_header: str | None = None,
        concurrency: int = 16,
        fetch_timeout: float = 1.0,
        ack_timeout: float = 5.0,
        dead_letter_subject: str | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> None:
        super().__init__(
            handler,
            store=store,
            name=name or durable,
            message_id=pick_message_id(
                message_id, id_header, default=nats_message_id, read=header_message_id
            ),
            concurrency=concurrency,
            **options,
        )
        self.js = js
        self.subject = subject
        self.durable = durable
        self.stream = stream
        self.config = config
        self.fetch_timeout = fetch_timeout
        self.ack_timeout = ack_timeout
        self.dead_letter_subject = dead_letter_subject
        self._sub: JetStreamContext.PullSubscription | None = None
        self._ack_wait: float | None = None

    def wrap(self, message: Msg) -> Delivery[Msg]:
        """The :class:`Delivery` for ``message`` (override to customize settling)."""
        return JetStreamDelivery(
            message,
            js=self.js,
            dead_letter_subject=self.dead_letter_subject,
            ack_timeout=self.ack_timeout,
            ack_wait=self._ack_wait,
        )

    @property
    def _read_timeout(self) -> float:
        return self.fetch_timeout

    async def _open(self) -> None:
        """Bind, creating the durable consumer if needed."""
        self._sub = await self.js.pull_subscribe(
            self.subject,
            durable=self.durable,
            stream=self.stream,
            # nats-py fills in the names and the filter: leave the caller's object alone.
            config=None if self.config is None else copy.copy(self.config),
        )
        try:
            info = await self._sub.consumer_info()
            self._ack_wait = info.config.ack_wait
        except Exception:  # only a keepalive hint: JetStream's default is 30 s
            log.debug("idempo: %s: cannot read the consumer's ack_wait", self.name, exc_info=True)
            self._ack_wait = 30.0

    async def _close(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _run(self) -> None:
        sub = self._sub
        assert sub is not None

        async def fetch() -> None:
            try:
                msgs = await sub.fetch(self._tasks.free, timeout=self.fetch_timeout)
            except TimeoutError:  # nothing to fetch within fetch_timeout
                return
            for msg in msgs:
                self._tasks.spawn(self.process(self.wrap(msg)))

        await self._poll(fetch, what="fetch", pause=min(1.0, self.fetch_timeout))

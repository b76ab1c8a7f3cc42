"""Kafka (aiokafka): a consumer-group member, each record processed once, offsets committed
after the record.

::

    kafka = AIOKafkaConsumer(bootstrap_servers="localhost:9092", group_id="billing",
                             enable_auto_commit=False, auto_offset_reset="earliest")
    await kafka.start()                  # you own the client: start it before, stop it after

    async def handle(record: ConsumerRecord) -> None: ...

    consumer = KafkaConsumer(kafka, handle, topics=["orders"], store="sqlite:///idempo.db")
    await consumer.start()               # subscribes (joins the group); stop() drains, commits
                                         # what is settled and unsubscribes (leaves the group)

Identity: ``topic/partition/offset`` by default, the same for every redelivery of the record. A
producer that retries a send appends a *new* record with a new offset: to deduplicate those
too, have producers put their own id in a header and pass ``id_header="message-id"``.

Settling: Kafka has no per-message ack, only a committed offset per partition, and committing
offset N says every record before N is done. So an ack marks the record settled, and the
partition's offset is committed up to its lowest record still in flight, soon after (and on
:meth:`~KafkaConsumer.stop` and on a rebalance's revocation): a record is never committed past
before its own record in the store is. Records of one partition are handled concurrently (up to
``concurrency`` in all), so their handlers may finish out of order.

Retry (a failed handler, or a message another consumer holds): the record stays uncommitted and
is handed to the handler again in this process after the delay (Kafka has no delayed
redelivery; seeking back would refetch every later record of the partition too). If the
partition is revoked or the consumer stops first, the retry is dropped: the next owner reads
the record again from the committed offset, and replays what was already done.

Dead-lettering: with ``dead_letter_topic=`` and ``producer=`` (an ``AIOKafkaProducer`` you
started), the record is copied there (key, value and headers, plus ``idempo-reason`` and
``idempo-source`` = ``topic/partition/offset``) and then committed past; if that send fails, the
record is retried later. Without them, it is logged at ERROR and committed past: Kafka cannot
reject a record, and an uncommitted one would block its partition's commits for good.

Delivery counts: Kafka keeps none. This adapter counts the retries it makes itself: a record's
first delivery in this process is attempt 1, even when it is a redelivery after a rebalance or
restart, so ``max_deliveries`` bounds the failures of one process, and a record that crashes
its workers is not caught by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias, Unpack

try:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
    from aiokafka.abc import ConsumerRebalanceListener
    from aiokafka.structs import OffsetAndMetadata
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"idempo.consumers.kafka needs aiokafka ({exc.name} is missing): "
        "pip install 'idempo[kafka]'"
    ) from exc

from idempo.consumers._consumer import ConsumerOptions, Delivery, Handler
from idempo.consumers._loop import BrokerConsumer, pick_message_id
from idempo.stores.base import AsyncStore

__all__ = ["KafkaConsumer", "KafkaDelivery", "kafka_header_id", "record_id"]

log = logging.getLogger("idempo.consumer")

Record: TypeAlias = ConsumerRecord[Any, Any]


def record_id(record: Record) -> str | None:
    """The default message id: ``topic/partition/offset``."""
    return f"{record.topic}/{record.partition}/{record.offset}"


def kafka_header_id(header: str) -> Callable[[Record], str | None]:
    """A message id read from the record header ``header`` (its first occurrence, as UTF-8;
    None when absent: no fallback)."""

    def message_id(record: Record) -> str | None:
        for name, value in record.headers or ():
            if name == header:
                if isinstance(value, bytes):
                    return value.decode("utf-8", "replace")
                return None if value is None else str(value)
        return None

    return message_id


class _Partition:
    """One assigned partition's offsets: those in flight, and how far it may be committed.

    A fresh object per assignment, so a delivery of an earlier assignment (revoked since) cannot
    move this one's commit position.
    """

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.live = True
        self.inflight: set[int] = set()
        self.fetched: int | None = None  # one past the highest offset fetched
        self.committed: int | None = None

    def add(self, offset: int) -> None:
        self.inflight.add(offset)
        if self.fetched is None or offset >= self.fetched:
            self.fetched = offset + 1

    @property
    def position(self) -> int | None:
        """The offset to commit: the lowest one in flight, else one past the last fetched."""
        return min(self.inflight) if self.inflight else self.fetched

    def uncommitted(self) -> int | None:
        position = self.position
        if position is None or (self.committed is not None and position <= self.committed):
            return None
        return position


class KafkaDelivery(Delivery[Record]):
    """One Kafka record: ack marks it settled (its offset is committed soon after), retry hands
    it to the handler again later in this process, dead-letter copies it to the dead-letter
    topic (if any) and settles it.

    Args:
        record: the aiokafka record.
        consumer: the adapter it came from.
        partition: the assignment it was fetched under.
        attempt: its delivery count in this process.
    """

    def __init__(
        self, record: Record, *, consumer: KafkaConsumer, partition: _Partition, attempt: int
    ) -> None:
        super().__init__(record, attempt=attempt)
        self._consumer = consumer
        self._partition = partition

    async def ack(self) -> None:
        self._consumer._mark_settled(self._partition, self.message.offset)

    async def retry(self, delay: float) -> None:
        self._consumer._redeliver(self, delay)

    async def dead_letter(self, reason: str) -> None:
        consumer, record = self._consumer, self.message
        source = record_id(record) or ""
        if consumer.producer is None or consumer.dead_letter_topic is None:
            log.error(
                "idempo: %s: dead-lettered %s (%s); committed past it",
                consumer.name,
                source,
                reason,
            )
        else:
            headers = [
                *(record.headers or ()),
                ("idempo-reason", reason.encode("utf-8", "replace")),
                ("idempo-source", source.encode()),
            ]
            try:
                await consumer.producer.send_and_wait(
                    consumer.dead_letter_topic,
                    value=record.value,
                    key=record.key,
                    headers=headers,
                )
            except BaseException:
                # Not copied: keep it uncommitted and try again, rather than lose it.
                consumer._redeliver(self, consumer._delay(self.attempt))
                raise
        consumer._mark_settled(self._partition, record.offset)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped here
    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._consumer._revoke(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._consumer._assign(assigned)


class KafkaConsumer(BrokerConsumer[Record]):
    """Consume ``topics`` as a member of the client's consumer group; see the module's
    documentation.

    Args:
        kafka: a started ``AIOKafkaConsumer`` with a ``group_id`` and
            ``enable_auto_commit=False`` (this adapter commits).
        handler: ``async def handler(record)``; see :class:`~idempo.consumers.Consumer`.
        store: an async store, or a URL.
        topics: the topics to subscribe to (default: those the client was created with).
        name: the scope of the records (default: the group id).
        message_id: ``callable(record) -> str | None`` (default: :func:`record_id`).
        id_header: read the message id from this record header instead (no fallback).
        concurrency: records handled at once (and the most fetched in one poll).
        poll_timeout: seconds one poll waits for records (also how long :meth:`stop` may wait
            for the poll in flight).
        dead_letter_topic: copy dead-lettered records there, with ``producer``.
        producer: a started ``AIOKafkaProducer`` for ``dead_letter_topic``.
        **options: the other :class:`~idempo.consumers.ConsumerOptions`.

    Raises:
        ValueError: the client commits by itself, or has no group id.
        TypeError: no topics; or only one of ``dead_letter_topic`` and ``producer``.
    """

    def __init__(
        self,
        kafka: AIOKafkaConsumer,
        handler: Handler[Record],
        *,
        store: str | AsyncStore,
        topics: Sequence[str] | None = None,
        name: str | None = None,
        message_id: Callable[[Record], str | None] | None = None,
        id_header: str | None = None,
        concurrency: int = 16,
        poll_timeout: float = 1.0,
        dead_letter_topic: str | None = None,
        producer: AIOKafkaProducer | None = None,
        **options: Unpack[ConsumerOptions],
    ) -> None:
        # aiokafka exposes neither setting publicly; both decide whether this adapter can work.
        if getattr(kafka, "_enable_auto_commit", False):
            raise ValueError("create the AIOKafkaConsumer with enable_auto_commit=False")
        group = getattr(kafka, "_group_id", None)
        if not group:
            raise ValueError("the AIOKafkaConsumer needs a group_id (offsets are committed)")
        if (dead_letter_topic is None) != (producer is None):
            raise TypeError("pass dead_letter_topic= and producer= together")
        topics = list(topics if topics is not None else kafka.subscription() or ())
        if not topics:
            raise TypeError("pass topics= (or create the AIOKafkaConsumer with topics)")
        super().__init__(
            handler,
            store=store,
            name=name or str(group),
            message_id=pick_message_id(
                message_id, id_header, default=record_id, read=kafka_header_id
            ),
            concurrency=concurrency,
            **options,
        )
        self.kafka = kafka
        self.topics = topics
        self.poll_timeout = poll_timeout
        self.dead_letter_topic = dead_letter_topic
        self.producer = producer
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._retries: set[asyncio.TimerHandle] = set()
        self._dirty = asyncio.Event()
        self._commit_lock = asyncio.Lock()

    def wrap(self, record: Record, *, attempt: int = 1) -> Delivery[Record] | None:
        """The :class:`Delivery` for ``record``, or None when its partition is no longer
        assigned here (override to customize settling)."""
        partition = self._partitions.get(TopicPartition(record.topic, record.partition))
        if partition is None:
            return None
        partition.add(record.offset)
        return KafkaDelivery(record, consumer=self, partition=partition, attempt=attempt)

    @property
    def _read_timeout(self) -> float:
        return self.poll_timeout

    async def _open(self) -> None:
        self._partitions.clear()
        self.kafka.subscribe(topics=self.topics, listener=_Listener(self))

    async def _run(self) -> None:
        committer = asyncio.create_task(self._commit_loop())

        async def poll() -> None:
            batches = await self.kafka.getmany(
                timeout_ms=int(self.poll_timeout * 1000), max_records=self._tasks.free
            )
            for records in batches.values():
                for record in records:
                    self._start(record, 1)

        try:
            await self._poll(poll, what="poll", pause=min(1.0, self.poll_timeout))
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer

    async def _close(self) -> None:
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        await self._commit()
        partitions, self._partitions = self._partitions, {}
        for partition in partitions.values():
            partition.live = False
        with contextlib.suppress(Exception):
            self.kafka.unsubscribe()

    # -- offsets -----------------------------------------------------------------------------

    def _start(self, record: Record, attempt: int) -> None:
        delivery = self.wrap(record, attempt=attempt)
        if delivery is not None:
            self._tasks.spawn(self.process(delivery))

    def _mark_settled(self, partition: _Partition, offset: int) -> None:
        partition.inflight.discard(offset)
        if partition.live:
            self._dirty.set()

    def _redeliver(self, delivery: KafkaDelivery, delay: float) -> None:
        """Hand the record to the handler again after ``delay``, unless its partition is
        revoked or the consumer stops first (then the next reader gets it from the broker)."""
        partition, record = delivery._partition, delivery.message
        if self._stopping.is_set() or not partition.live:
            return
        attempt = (delivery.attempt or 1) + 1

        def fire() -> None:
            self._retries.discard(handle)
            if partition.live and not self._stopping.is_set():
                self._start(record, attempt)

        handle = asyncio.get_running_loop().call_later(max(0.0, delay), fire)
        self._retries.add(handle)

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not await self._commit():
                # Try again later: a rebalance in progress, or the broker unreachable.
                await asyncio.sleep(min(1.0, self.poll_timeout))
                self._dirty.set()

    async def _commit(self, partitions: Iterable[_Partition] | None = None) -> bool:
        """Commit every live partition's settled prefix; False if the commit failed."""
        async with self._commit_lock:
            chosen = list(self._partitions.values() if partitions is None else partitions)
            offsets = {}
            for partition in chosen:
                position = partition.uncommitted()
                if position is not None:
                    offsets[partition.tp] = (partition, position)
            if not offsets:
                return True
            if getattr(self.kafka, "_closed", False):
                # A stopped client has left the group: its commit carries no generation, which
                # a broker accepts once the group is empty (as from any client outside a group),
                # rolling back what the partitions' next owners committed.
                log.warning("idempo: %s: the Kafka client is stopped; not committing", self.name)
                return False
            try:
                await self.kafka.commit(
                    {tp: OffsetAndMetadata(position, "") for tp, (_, position) in offsets.items()}
                )
            except Exception:
                log.warning("idempo: %s: committing offsets failed", self.name, exc_info=True)
                return False
            for partition, position in offsets.values():
                partition.committed = position
            return True

    # -- rebalancing -------------------------------------------------------------------------

    async def _revoke(self, revoked: Iterable[TopicPartition]) -> None:
        gone = [p for tp in revoked if (p := self._partitions.pop(tp, None)) is not None]
        # Commit while still the owner; what is still in flight is read again by the next one.
        await self._commit(gone)
        for partition in gone:
            partition.live = False

    def _assign(self, assigned: Iterable[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self._partitions:
                self._partitions[tp] = _Partition(tp)

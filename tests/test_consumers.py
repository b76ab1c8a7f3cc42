"""Exactly-once consumers against real brokers: RabbitMQ, NATS JetStream, Redis Streams and
Kafka (Tansu, started by tests/kafka_broker.py).

Every broker test publishes M messages, forces redeliveries (lost acks, a consumer crash
mid-batch, duplicate publishes, competing consumers) and checks that every message's effect,
counted per message id, was applied exactly once, and that the broker ends with nothing
unacknowledged. Each test uses its own queue / stream / subject names and deletes them after.

Broker URLs come from IDEMPO_AMQP_URL, IDEMPO_NATS_URL and IDEMPO_REDIS_URL (defaults: the local
servers); Kafka's from IDEMPO_KAFKA_BOOTSTRAP, else a Tansu broker this process starts on a free
loopback port. A broker that cannot be reached skips its tests, unless IDEMPO_REQUIRE_SERVICES=1,
where that is a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from idempo import open_async_store
from idempo.consumer import Claim, Consumer, Delivery, Result, Status, backoff
from idempo.errors import InProgressError, LeaseLostError, StoreUnavailableError
from idempo.stores.base import AsyncStore
from idempo.stores.memory import AsyncMemoryStore

AMQP_URL = os.environ.get("IDEMPO_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NATS_URL = os.environ.get("IDEMPO_NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("IDEMPO_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("IDEMPO_REQUIRE_SERVICES") == "1"

M = 50  # messages per scenario
DEADLINE = 45.0  # seconds any one scenario may take to settle

BROKERS = ["rabbitmq", "nats", "redis", "kafka"]
KAFKA_PARTITIONS = 2  # so that two competing consumers each own one

# -- services ----------------------------------------------------------------------------------

_service_errors: dict[str, str | None] = {}


async def _probe(kind: str) -> str | None:
    """None if the broker answers, else why not."""
    try:
        async with asyncio.timeout(5):
            if kind == "rabbitmq":
                import aio_pika

                connection = await aio_pika.connect(AMQP_URL, timeout=3)
                await connection.close()
            elif kind == "nats":
                import nats

                nc = await nats.connect(
                    NATS_URL, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0
                )
                try:
                    await nc.jetstream().account_info()
                finally:
                    await nc.close()
            elif kind == "redis":
                import redis.asyncio

                client = redis.asyncio.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
                try:
                    await client.ping()
                finally:
                    await client.aclose()
            elif kind == "kafka":
                from aiokafka.admin import AIOKafkaAdminClient

                from tests import kafka_broker

                admin = AIOKafkaAdminClient(bootstrap_servers=await kafka_broker.bootstrap())
                await admin.start()
                try:
                    await admin.list_topics()
                finally:
                    await admin.close()
    except Exception as exc:
        return f"{kind} is not reachable ({type(exc).__name__}: {exc})"
    return None


async def require(kind: str) -> None:
    """Skip (or, under IDEMPO_REQUIRE_SERVICES=1, fail) when ``kind``'s server is missing."""
    if kind not in _service_errors:
        _service_errors[kind] = await _probe(kind)
    reason = _service_errors[kind]
    if reason is not None:
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason}; IDEMPO_REQUIRE_SERVICES=1 makes this a failure")
        pytest.skip(reason)


# -- stores ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_test_store(kind: str, tmp_path: Path) -> AsyncIterator[AsyncStore]:
    """An idempo store isolated to one test: memory, SQLite in tmp_path, or Redis (prefixed)."""
    if kind == "memory":
        yield AsyncMemoryStore()
        return
    if kind == "sqlite":
        store = open_async_store(f"sqlite:///{tmp_path / 'idempo.db'}")
        try:
            yield store
        finally:
            await store.close()
        return
    assert kind == "redis"
    await require("redis")
    import redis.asyncio

    prefix = f"idempo-test-{uuid.uuid4().hex[:12]}:"
    store = open_async_store(REDIS_URL, prefix=prefix)
    try:
        yield store
    finally:
        await store.close()
        client = redis.asyncio.Redis.from_url(REDIS_URL)
        keys = [k async for k in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# -- instrumentation ---------------------------------------------------------------------------


class Intercepted(Delivery[Any]):
    """A delivery whose ack goes through ``on_ack(inner)``: to lose or defer acks on purpose."""

    def __init__(self, inner: Delivery[Any], on_ack: Callable[[Delivery[Any]], Awaitable[None]]):
        super().__init__(inner.message, attempt=inner.attempt)
        self.inner = inner
        self.on_ack = on_ack

    async def ack(self) -> None:
        await self.on_ack(self.inner)

    async def retry(self, delay: float) -> None:
        await self.inner.retry(delay)

    async def dead_letter(self, reason: str) -> None:
        await self.inner.dead_letter(reason)

    async def keepalive(self) -> None:
        await self.inner.keepalive()


def instrument(
    consumer: Any,
    results: list[Result],
    intercept: Callable[[Delivery[Any]], Delivery[Any]] | None = None,
) -> None:
    """Record every delivery's Result; optionally wrap each delivery first."""
    original = consumer.process

    async def process(delivery: Delivery[Any]) -> Result:
        if intercept is not None:
            delivery = intercept(delivery)
        result: Result = await original(delivery)
        results.append(result)
        return result

    consumer.process = process


def statuses(results: Sequence[Result]) -> Counter[Status]:
    return Counter(r.status for r in results)


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until it holds twice in a row, or fail after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    streak = 0
    while True:
        streak = streak + 1 if await check() else 0
        if streak >= 2:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


# -- brokers -----------------------------------------------------------------------------------


class Broker:
    """One broker's test rig: an isolated queue/stream, publishing, consumers, inspection.

    Every message body is the test's message id (``body_id``), so effects are keyed by it
    whatever the broker-level id is.
    """

    kind: str
    live: list[Any]

    async def publish(self, ids: Sequence[str], *, with_id: bool = True) -> None:
        raise NotImplementedError

    async def consumer(self, handler: Any, store: AsyncStore, **options: Any) -> Any:
        raise NotImplementedError

    async def crash(self, consumer: Any) -> None:
        """Stop ``consumer`` abruptly: nothing in flight is settled, handlers are abandoned."""
        raise NotImplementedError

    async def settled(self) -> bool:
        """Nothing waiting for delivery and nothing delivered but unacknowledged."""
        raise NotImplementedError

    async def dead_letters(self) -> list[str]:
        """Bodies of the dead-lettered messages."""
        raise NotImplementedError

    def body_id(self, message: Any) -> str:
        raise NotImplementedError

    def idle(self) -> bool:
        return all(not c._tasks.tasks for c in self.live)

    async def stop_all(self) -> None:
        for consumer in self.live:
            await consumer.stop(grace=10)
        self.live.clear()


class RabbitMQ(Broker):
    """A queue (classic or quorum) with a dead-letter exchange and queue."""

    kind = "rabbitmq"

    def __init__(self, queue_type: str = "classic") -> None:
        run = uuid.uuid4().hex[:12]
        self.queue_name = f"idempo-test-{run}"
        self.dlx = f"idempo-test-{run}.dlx"
        self.dlq = f"idempo-test-{run}.dlq"
        self.queue_type = queue_type
        self.live = []
        self.connections: list[Any] = []

    async def __aenter__(self) -> RabbitMQ:
        import aio_pika

        self.admin = await aio_pika.connect(AMQP_URL)
        self.channel = await self.admin.channel()
        dlx = await self.channel.declare_exchange(self.dlx, aio_pika.ExchangeType.FANOUT)
        dlq = await self.channel.declare_queue(self.dlq)
        await dlq.bind(dlx)
        await self.channel.declare_queue(
            self.queue_name,
            durable=self.queue_type == "quorum",
            arguments={"x-queue-type": self.queue_type, "x-dead-letter-exchange": self.dlx},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.stop_all()
        for connection in self.connections:
            with contextlib.suppress(Exception):
                await connection.close()
        await self.channel.queue_delete(self.queue_name)
        await self.channel.queue_delete(self.dlq)
        await self.channel.exchange_delete(self.dlx)
        await self.admin.close()

    async def publish(self, ids: Sequence[str], *, with_id: bool = True) -> None:
        import aio_pika

        for id_ in ids:
            # aiormq gives a message without message_id a random one, so "no id" is tested
            # with id_header="X-Id".
            await self.channel.default_exchange.publish(
                aio_pika.Message(
                    id_.encode(),
                    message_id=id_ if with_id else None,
                    headers={"X-Id": id_} if with_id else {},
                ),
                routing_key=self.queue_name,
            )

    async def consumer(self, handler: Any, store: AsyncStore, **options: Any) -> Any:
        import aio_pika

        from idempo.consumers.rabbitmq import RabbitMQConsumer

        prefetch = options.pop("prefetch", 20)
        options.pop("ack_wait", None)
        connection = await aio_pika.connect(AMQP_URL)
        self.connections.append(connection)
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.get_queue(self.queue_name, ensure=False)
        options.setdefault("retry_delay", 0.05)
        options.setdefault("in_progress_delay", 0.5)
        consumer = RabbitMQConsumer(queue, handler, store=store, **options)
        consumer._test_connection = connection
        self.live.append(consumer)
        return consumer

    async def crash(self, consumer: Any) -> None:
        self.live.remove(consumer)
        await consumer._test_connection.close()

    async def settled(self) -> bool:
        queue = await self.channel.declare_queue(self.queue_name, passive=True)
        assert queue.declaration_result.message_count is not None
        return queue.declaration_result.message_count == 0 and self.idle()

    async def dead_letters(self) -> list[str]:
        queue = await self.channel.declare_queue(self.dlq, passive=True)
        bodies = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            bodies.append(message.body.decode())
        return bodies

    def body_id(self, message: Any) -> str:
        return str(message.body.decode())


class JetStream(Broker):
    """A stream (with a short duplicate window) and a dead-letter stream."""

    kind = "nats"

    def __init__(self) -> None:
        run = uuid.uuid4().hex[:12]
        self.stream = f"IDEMPO_TEST_{run}"
        self.subject = f"idempo-test.{run}.orders"
        self.dlq_stream = f"IDEMPO_TEST_{run}_DLQ"
        self.dlq_subject = f"idempo-test.{run}.dead"
        self.durable = "workers"
        self.live = []
        self.connections: list[Any] = []

    async def __aenter__(self) -> JetStream:
        import nats
        from nats.js.api import StreamConfig

        self.nc = await nats.connect(NATS_URL)
        self.js = self.nc.jetstream()
        # A 0.1 s duplicate window: JetStream's own dedupe on Nats-Msg-Id only lasts that
        # long, so a republish after it reaches the consumer, which must dedupe it.
        await self.js.add_stream(
            StreamConfig(name=self.stream, subjects=[self.subject], duplicate_window=0.1)
        )
        await self.js.add_stream(StreamConfig(name=self.dlq_stream, subjects=[self.dlq_subject]))
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.stop_all()
        for nc in self.connections:
            with contextlib.suppress(Exception):
                await nc.close()
        await self.js.delete_stream(self.stream)
        await self.js.delete_stream(self.dlq_stream)
        await self.nc.close()

    async def publish(self, ids: Sequence[str], *, with_id: bool = True) -> None:
        for id_ in ids:
            headers = {"Nats-Msg-Id": id_} if with_id else None
            await self.js.publish(self.subject, id_.encode(), headers=headers)

    async def consumer(self, handler: Any, store: AsyncStore, **options: Any) -> Any:
        import nats
        from nats.js.api import ConsumerConfig

        from idempo.consumers.nats import JetStreamConsumer

        ack_wait = options.pop("ack_wait", 2.0)  # the first consumer's config wins
        options.pop("prefetch", None)
        nc = await nats.connect(NATS_URL)
        self.connections.append(nc)
        options.setdefault("retry_delay", 0.05)
        options.setdefault("in_progress_delay", 0.5)
        options.setdefault("concurrency", 20)
        consumer = JetStreamConsumer(
            nc.jetstream(),
            self.subject,
            handler,
            durable=self.durable,
            stream=self.stream,
            config=ConsumerConfig(ack_wait=ack_wait),
            store=store,
            fetch_timeout=0.5,
            dead_letter_subject=self.dlq_subject,
            **options,
        )
        consumer._test_nc = nc
        self.live.append(consumer)
        return consumer

    async def crash(self, consumer: Any) -> None:
        self.live.remove(consumer)
        await consumer._test_nc.close()

    async def settled(self) -> bool:
        info = await self.js.consumer_info(self.stream, self.durable)
        return info.num_pending == 0 and info.num_ack_pending == 0 and self.idle()

    async def dead_letters(self) -> list[str]:
        info = await self.js.stream_info(self.dlq_stream)
        bodies = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            msg = await self.js.get_msg(self.dlq_stream, seq)
            assert msg.data is not None
            bodies.append(msg.data.decode())
        return bodies

    def body_id(self, message: Any) -> str:
        return str(message.data.decode())


class RedisStreams(Broker):
    """A stream with one consumer group; dead letters go to ``<stream>:dead``."""

    kind = "redis"

    def __init__(self) -> None:
        run = uuid.uuid4().hex[:12]
        self.stream = f"idempo-test-{run}"
        self.group = "workers"
        self.live = []
        self.n = 0

    async def __aenter__(self) -> RedisStreams:
        import redis.asyncio

        self.redis = redis.asyncio.Redis.from_url(REDIS_URL)
        await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.stop_all()
        await self.redis.delete(self.stream, f"{self.stream}:dead")
        await self.redis.aclose()

    async def publish(self, ids: Sequence[str], *, with_id: bool = True) -> None:
        for id_ in ids:
            fields = {"body": id_, **({"message_id": id_} if with_id else {})}
            await self.redis.xadd(self.stream, fields)

    async def consumer(self, handler: Any, store: AsyncStore, **options: Any) -> Any:
        from idempo.consumers.redis_streams import RedisStreamConsumer

        self.n += 1
        options.pop("ack_wait", None)
        options.pop("prefetch", None)
        options.setdefault("retry_delay", 0.05)
        options.setdefault("in_progress_delay", 0.5)
        options.setdefault("concurrency", 20)
        options.setdefault("min_idle", 1.5)
        consumer = RedisStreamConsumer(
            self.redis,
            self.stream,
            self.group,
            handler,
            store=store,
            consumer=f"worker-{self.n}",
            block=0.2,
            reclaim_interval=0.2,
            **options,
        )
        self.live.append(consumer)
        return consumer

    async def crash(self, consumer: Any) -> None:
        self.live.remove(consumer)
        loop = consumer._loop
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop

    async def settled(self) -> bool:
        pending = await self.redis.xpending(self.stream, self.group)
        groups = await self.redis.xinfo_groups(self.stream)
        lag = next(g for g in groups if g["name"] in (self.group, self.group.encode()))["lag"]
        return pending["pending"] == 0 and lag == 0 and self.idle()

    async def dead_letters(self) -> list[str]:
        entries = await self.redis.xrange(f"{self.stream}:dead")
        return [fields[b"body"].decode() for _, fields in entries]

    def body_id(self, message: Any) -> str:
        return str(message.fields["body"].decode())


class Kafka(Broker):
    """A topic with KAFKA_PARTITIONS partitions, one consumer group, and a dead-letter topic the
    adapter copies dead-lettered records to."""

    kind = "kafka"

    def __init__(self) -> None:
        run = uuid.uuid4().hex[:12]
        self.topic = f"idempo-test-{run}"
        self.dead_topic = f"idempo-test-{run}.dead"
        self.group = f"workers-{run}"
        self.live = []
        self.clients: list[Any] = []

    async def __aenter__(self) -> Kafka:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        from tests import kafka_broker

        self.bootstrap = await kafka_broker.bootstrap()
        self.admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await self.admin.start()
        await self.admin.create_topics(
            [NewTopic(self.topic, KAFKA_PARTITIONS, 1), NewTopic(self.dead_topic, 1, 1)]
        )
        # Not idempotent (enable_idempotence): Tansu 0.6 refuses aiokafka's idempotent producer.
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
        await self.producer.start()
        self.inspector = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)  # no group
        await self.inspector.start()
        self.offsets = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group, enable_auto_commit=False
        )
        await self.offsets.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.stop_all()
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.stop()
        with contextlib.suppress(Exception):
            await self.admin.delete_topics([self.topic, self.dead_topic])
        await self.offsets.stop()
        await self.inspector.stop()
        await self.producer.stop()
        await self.admin.close()

    async def publish(self, ids: Sequence[str], *, with_id: bool = True) -> None:
        for id_ in ids:
            # Keyed by the id: the records spread over the partitions.
            await self.producer.send_and_wait(
                self.topic,
                id_.encode(),
                key=id_.encode(),
                headers=[("X-Id", id_.encode())] if with_id else None,
            )

    async def consumer(self, handler: Any, store: AsyncStore, **options: Any) -> Any:
        from aiokafka import AIOKafkaConsumer

        from idempo.consumers.kafka import KafkaConsumer

        options.pop("ack_wait", None)
        prefetch = options.pop("prefetch", None)
        options.setdefault("retry_delay", 0.05)
        options.setdefault("in_progress_delay", 0.5)
        options.setdefault("concurrency", prefetch or 20)
        options.setdefault("dead_letter_topic", self.dead_topic)
        options.setdefault("producer", self.producer)
        client = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            heartbeat_interval_ms=200,  # members learn of a rebalance within this
            session_timeout_ms=3000,
            rebalance_timeout_ms=1000,  # Tansu waits this long for members to join
        )
        await client.start()
        self.clients.append(client)
        consumer = KafkaConsumer(
            client,
            handler,
            topics=[self.topic],
            store=store,
            poll_timeout=0.2,
            **options,
        )
        self.live.append(consumer)
        return consumer

    async def crash(self, consumer: Any) -> None:
        self.live.remove(consumer)
        loop = consumer._loop
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await consumer.kafka.stop()  # commits nothing (no auto-commit); leaves the group

    def partitions(self) -> list[Any]:
        from aiokafka import TopicPartition

        return [TopicPartition(self.topic, p) for p in range(KAFKA_PARTITIONS)]

    async def committed(self) -> dict[Any, int]:
        # Not the admin client's list_consumer_group_offsets: aiokafka cannot decode Tansu's
        # answer. A group client that never subscribes reads the offsets without joining.
        return {tp: await self.offsets.committed(tp) or 0 for tp in self.partitions()}

    async def settled(self) -> bool:
        ends = await self.inspector.end_offsets(self.partitions())
        return await self.committed() == ends and self.idle()

    async def dead_letters(self) -> list[str]:
        from aiokafka import TopicPartition

        tp = TopicPartition(self.dead_topic, 0)
        end = (await self.inspector.end_offsets([tp]))[tp]
        self.inspector.assign([tp])
        await self.inspector.seek_to_beginning(tp)
        bodies: list[str] = []
        async with asyncio.timeout(10):
            while len(bodies) < end:
                batch = await self.inspector.getmany(tp, timeout_ms=500)
                bodies.extend(r.value.decode() for r in batch.get(tp, []))
        return bodies

    def body_id(self, message: Any) -> str:
        return str(message.value.decode())


def named_id(kind: str) -> dict[str, Any]:
    """The adapter option that keys messages by the producer's id (the X-Id header, a Redis
    field) rather than the broker's own, where the broker's own differs per publish."""
    if kind == "redis":
        return {"id_field": "message_id"}
    if kind == "kafka":
        return {"id_header": "X-Id"}
    return {}


@contextlib.asynccontextmanager
async def open_broker(kind: str, **options: Any) -> AsyncIterator[Broker]:
    await require(kind)
    broker: Any
    if kind == "rabbitmq":
        broker = RabbitMQ(**options)
    elif kind == "nats":
        broker = JetStream(**options)
    elif kind == "redis":
        broker = RedisStreams(**options)
    else:
        broker = Kafka(**options)
    async with broker:
        try:
            async with asyncio.timeout(DEADLINE + 30):
                yield broker
        finally:
            with contextlib.suppress(Exception):
                await broker.stop_all()


def ids_for(n: int = M) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"msg-{run}-{i:03d}" for i in range(n)]


def assert_exactly_once(effects: Counter[str], ids: Sequence[str]) -> None:
    wrong = {k: v for k, v in effects.items() if v != 1}
    assert not wrong, f"effects applied more than once: {wrong}"
    assert set(effects) == set(ids), f"missing effects: {sorted(set(ids) - set(effects))}"
    assert sum(effects.values()) == len(ids)


# -- the scenarios, on every broker ------------------------------------------------------------


@pytest.mark.parametrize("kind", BROKERS)
async def test_lost_acks_are_replayed_not_rerun(kind: str, tmp_path: Path) -> None:
    """(a) Every third message's ack is lost after its handler ran and its record committed (the
    message is nacked/requeued instead, or left pending on Redis): the redelivery is acked
    from the record without running the handler. NATS uses its stream:sequence fallback id,
    Redis the entry id."""
    async with open_test_store("memory", tmp_path) as store, open_broker(kind) as broker:
        ids = ids_for()
        lose = set(ids[::3])
        lost: set[str] = set()
        effects: Counter[str] = Counter()
        results: list[Result] = []

        async def handle(message: Any) -> str:
            effects[broker.body_id(message)] += 1
            return "done"

        async def lossy_ack(inner: Delivery[Any]) -> None:
            id_ = broker.body_id(inner.message)
            if id_ in lose and id_ not in lost:
                lost.add(id_)
                await inner.retry(0)  # the ack never arrives: the broker redelivers
            else:
                await inner.ack()

        consumer = await broker.consumer(handle, store)
        instrument(consumer, results, lambda d: Intercepted(d, lossy_ack))
        await consumer.start()
        await broker.publish(ids, with_id=kind == "rabbitmq")

        async def done() -> bool:
            return sum(effects.values()) >= M and lost == lose and await broker.settled()

        await wait_until(done, "every message to be handled and acked")
        await broker.stop_all()

        assert_exactly_once(effects, ids)
        counts = statuses(results)
        assert counts[Status.PROCESSED] == M
        assert counts[Status.REPLAYED] >= len(lose)
        assert counts[Status.DEAD_LETTERED] == 0
        assert all(r.value == "done" for r in results if r.status is Status.REPLAYED)
        assert await broker.settled()


@pytest.mark.parametrize("kind", BROKERS)
async def test_consumer_crash_mid_batch(kind: str, tmp_path: Path) -> None:
    """(b) A consumer handles 10 messages but crashes before acking them, with 10 more still in
    its handler (before their effect) and holding their claims; a new consumer takes over:
    the committed ones are replayed, the abandoned ones run once (after their claims expire
    or are released), the rest run once."""
    async with open_test_store("sqlite", tmp_path) as store, open_broker(kind) as broker:
        ids = ids_for()
        effects: Counter[str] = Counter()
        unacked: set[str] = set()
        abandoned: set[str] = set()
        gate = asyncio.Event()  # never set: the crashed worker's handlers hang
        crash_now = asyncio.Event()
        calls = 0

        async def handle_a(message: Any) -> None:
            nonlocal calls
            calls += 1
            id_ = broker.body_id(message)
            if calls <= 10:
                effects[id_] += 1
                unacked.add(id_)
                return
            if calls <= 20:
                abandoned.add(id_)
                if calls == 20:
                    crash_now.set()
                await gate.wait()
            effects[id_] += 1

        async def no_ack(inner: Delivery[Any]) -> None:
            if broker.body_id(inner.message) in unacked:
                return  # crashed before the ack went out
            await inner.ack()

        results_a: list[Result] = []
        results_b: list[Result] = []
        # The crashed worker renews nothing (it is "dead"): its claims expire after 1 s.
        crashed = await broker.consumer(
            handle_a, store, lease=1.0, keepalive=False, ack_wait=2.0, prefetch=20
        )
        instrument(crashed, results_a, lambda d: Intercepted(d, no_ack))
        await crashed.start()
        await broker.publish(ids)
        async with asyncio.timeout(DEADLINE):
            await crash_now.wait()
        await broker.crash(crashed)

        async def handle_b(message: Any) -> None:
            effects[broker.body_id(message)] += 1

        replacement = await broker.consumer(handle_b, store, lease=1.0)
        instrument(replacement, results_b)
        await replacement.start()

        async def done() -> bool:
            return sum(effects.values()) >= M and await broker.settled()

        try:
            await wait_until(done, "the replacement consumer to finish the batch")
            await broker.stop_all()
        finally:
            await crashed.stop(grace=0)  # cancel the hung handlers of the crashed worker

        assert_exactly_once(effects, ids)
        assert len(unacked) == 10
        assert len(abandoned) == 10
        replayed = {r.message_id for r in results_b if r.status is Status.REPLAYED}
        assert len(replayed) >= 10  # the handled-but-unacked ones
        processed_b = {r.message_id for r in results_b if r.status is Status.PROCESSED}
        assert len(processed_b) >= 10  # at least the abandoned ones
        assert statuses(results_b)[Status.DEAD_LETTERED] == 0
        assert await broker.settled()


@pytest.mark.parametrize("kind", BROKERS)
async def test_duplicate_publishes(kind: str, tmp_path: Path) -> None:
    """(c) Every message is published twice with the same message id (AMQP message_id,
    Nats-Msg-Id after JetStream's own duplicate window, a Redis field): each runs once, and its
    twin is acked from the record (after a deferral when both were in flight at once)."""
    async with open_test_store("memory", tmp_path) as store, open_broker(kind) as broker:
        ids = ids_for()
        effects: Counter[str] = Counter()
        results: list[Result] = []

        async def handle(message: Any) -> dict[str, str]:
            await asyncio.sleep(0.01)
            effects[broker.body_id(message)] += 1
            return {"id": broker.body_id(message)}

        options = named_id(kind)
        consumer = await broker.consumer(handle, store, **options)
        instrument(consumer, results)
        await consumer.start()
        await broker.publish(ids)
        await asyncio.sleep(0.2)  # past JetStream's 0.1 s duplicate window
        await broker.publish(ids)

        async def done() -> bool:
            replayed = statuses(results)[Status.REPLAYED]
            return replayed >= M and await broker.settled()

        await wait_until(done, "every duplicate to be replayed")
        await broker.stop_all()

        assert_exactly_once(effects, ids)
        counts = statuses(results)
        assert counts[Status.PROCESSED] == M
        assert counts[Status.REPLAYED] == M
        assert counts[Status.DEAD_LETTERED] == 0
        assert all(r.value == {"id": r.message_id} for r in results if r.value is not None)
        assert await broker.settled()


@pytest.mark.parametrize("kind", BROKERS)
async def test_all_faults_with_redis_store_and_competing_consumers(
    kind: str, tmp_path: Path
) -> None:
    """All at once, on the Redis idempo store: two competing consumers, duplicate publishes,
    lost acks, and one consumer crashing mid-batch and being replaced: still exactly once."""
    async with open_test_store("redis", tmp_path) as store, open_broker(kind) as broker:
        ids = ids_for()
        effects: Counter[str] = Counter()
        lost: set[str] = set()
        results: list[Result] = []
        crash_now = asyncio.Event()
        gate = asyncio.Event()
        calls = 0

        async def handle(message: Any) -> None:
            await asyncio.sleep(0.005)
            effects[broker.body_id(message)] += 1

        async def handle_doomed(message: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == 15:
                crash_now.set()
            if calls >= 15:
                await gate.wait()  # hangs before its effect until the crash
            effects[broker.body_id(message)] += 1

        async def lossy_ack(inner: Delivery[Any]) -> None:
            id_ = broker.body_id(inner.message)
            if hash(id_) % 4 == 0 and id_ not in lost:
                lost.add(id_)
                await inner.retry(0)
            else:
                await inner.ack()

        options = named_id(kind)
        steady = await broker.consumer(handle, store, lease=1.0, prefetch=10, **options)
        doomed = await broker.consumer(
            handle_doomed,
            store,
            lease=1.0,
            keepalive=False,
            ack_wait=2.0,
            prefetch=10,
            **options,
        )
        for consumer in (steady, doomed):
            instrument(consumer, results, lambda d: Intercepted(d, lossy_ack))
            await consumer.start()
        publishing = asyncio.create_task(broker.publish(ids))
        async with asyncio.timeout(DEADLINE):
            await crash_now.wait()
        await broker.crash(doomed)
        await publishing
        replacement = await broker.consumer(handle, store, lease=1.0, prefetch=10, **options)
        instrument(replacement, results)
        await replacement.start()
        await asyncio.sleep(0.2)
        await broker.publish(ids)  # every message again, same ids

        async def done() -> bool:
            return sum(effects.values()) >= M and await broker.settled()

        try:
            await wait_until(done, "every message and duplicate to be settled")
            await broker.stop_all()
        finally:
            await doomed.stop(grace=0)

        assert_exactly_once(effects, ids)
        assert statuses(results)[Status.DEAD_LETTERED] == 0
        assert statuses(results)[Status.REPLAYED] >= M  # at least every duplicate
        assert await broker.settled()


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        pytest.param("rabbitmq", {"queue_type": "classic"}, id="rabbitmq-classic"),
        pytest.param("rabbitmq", {"queue_type": "quorum"}, id="rabbitmq-quorum"),
        pytest.param("nats", {}, id="nats"),
        pytest.param("redis", {}, id="redis"),
        pytest.param("kafka", {}, id="kafka"),
    ],
)
async def test_poison_and_unidentifiable_messages_are_dead_lettered(
    kind: str, options: dict[str, Any], tmp_path: Path
) -> None:
    """A message whose handler always fails runs max_deliveries times, then goes to the
    dead-letter path (RabbitMQ: the queue's DLX; NATS: term + dead-letter subject; Redis: the
    dead-letter stream); a message without an id is dead-lettered without running; the others
    run once."""
    async with open_test_store("memory", tmp_path) as store, open_broker(kind, **options) as b:
        ids = ids_for(10)
        poison = ids[3]
        effects: Counter[str] = Counter()
        attempts: Counter[str] = Counter()
        results: list[Result] = []

        async def handle(message: Any) -> None:
            id_ = b.body_id(message)
            attempts[id_] += 1
            if id_ == poison:
                raise RuntimeError("cannot handle this one")
            effects[id_] += 1

        consumer_options: dict[str, Any] = {"max_deliveries": 3, "retry_delay": 0.05}
        if kind == "nats":
            consumer_options["id_header"] = "Nats-Msg-Id"  # no stream:seq fallback
        if kind == "redis":
            consumer_options["id_field"] = "message_id"
        if kind == "kafka":
            consumer_options["id_header"] = "X-Id"  # no topic/partition/offset fallback
        if kind == "rabbitmq":
            consumer_options["id_header"] = "X-Id"
        consumer = await b.consumer(handle, store, **consumer_options)
        instrument(consumer, results)
        await consumer.start()
        await b.publish(ids)
        await b.publish(["no-id"], with_id=False)

        async def done() -> bool:
            return statuses(results)[Status.DEAD_LETTERED] >= 2 and await b.settled()

        await wait_until(done, "the poison message to be dead-lettered")
        await b.stop_all()

        assert attempts[poison] == 3
        assert "no-id" not in attempts
        del attempts[poison]
        assert_exactly_once(effects, [i for i in ids if i != poison])
        assert sorted(await b.dead_letters()) == sorted([poison, "no-id"])
        dead = [r for r in results if r.status is Status.DEAD_LETTERED]
        assert {r.message_id for r in dead} == {poison, None}
        assert await b.settled()


@pytest.mark.parametrize("kind", BROKERS)
async def test_adapter_lifecycle_async_with_and_restart(kind: str, tmp_path: Path) -> None:
    """Every adapter: ``async with`` starts and stops it; a second start() is refused; a
    stopped consumer starts again, and handles new messages and duplicates once each."""
    async with open_test_store("memory", tmp_path) as store, open_broker(kind) as broker:
        ids = ids_for(6)
        effects: Counter[str] = Counter()

        async def handle(message: Any) -> None:
            effects[broker.body_id(message)] += 1

        options = named_id(kind)
        consumer = await broker.consumer(handle, store, **options)
        async with consumer as started:
            assert started is consumer
            with pytest.raises(RuntimeError, match="already started"):
                await consumer.start()
            await broker.publish(ids[:3])

            async def first_half() -> bool:
                return sum(effects.values()) >= 3 and await broker.settled()

            await wait_until(first_half, "the first messages to be handled")
        assert consumer._loop is None
        assert not consumer._tasks.tasks

        await consumer.start()
        await broker.publish(ids[3:] + ids[:3])  # new messages, and the first ones again

        async def all_done() -> bool:
            return sum(effects.values()) >= len(ids) and await broker.settled()

        await wait_until(all_done, "the restarted consumer to handle the rest")
        await broker.stop_all()
        assert_exactly_once(effects, ids)
        assert await broker.settled()


@pytest.mark.parametrize("kind", BROKERS)
async def test_adapter_refuses_message_id_with_a_named_id(kind: str, tmp_path: Path) -> None:
    """Every adapter refuses message_id= together with id_header= (Redis: id_field=)."""
    option = "id_field" if kind == "redis" else "id_header"
    async with open_test_store("memory", tmp_path) as store, open_broker(kind) as broker:

        async def handle(message: Any) -> None:
            return None

        with pytest.raises(TypeError, match=f"pass message_id= or {option}=, not both"):
            await broker.consumer(handle, store, message_id=lambda m: "x", **{option: "X-Id"})
        assert broker.live == []


async def test_redis_failed_read_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The reading loop survives a failing read: with its consumer group gone, XREADGROUP
    fails, is logged and retried, and once the group is back the consumer reads again."""
    async with open_test_store("memory", tmp_path) as store, open_broker("redis") as broker:
        assert isinstance(broker, RedisStreams)
        ids = ids_for(4)
        effects: Counter[str] = Counter()

        async def handle(message: Any) -> None:
            effects[broker.body_id(message)] += 1

        consumer = await broker.consumer(handle, store)
        await consumer.start()
        await broker.publish(ids[:2])

        async def first() -> bool:
            return sum(effects.values()) >= 2 and await broker.settled()

        await wait_until(first, "the first entries to be handled")

        async def warned() -> bool:
            return any("reading the stream failed" in r.getMessage() for r in caplog.records)

        with caplog.at_level("WARNING", logger="idempo.consumer"):
            await broker.redis.xgroup_destroy(broker.stream, broker.group)
            await wait_until(warned, "the failed read to be logged")
        await broker.redis.xgroup_create(broker.stream, broker.group, id="$")
        await broker.publish(ids[2:])

        async def rest() -> bool:
            return sum(effects.values()) >= len(ids) and await broker.settled()

        await wait_until(rest, "the consumer to read again")
        await broker.stop_all()
        assert_exactly_once(effects, ids)


def test_header_message_id_reads_one_header() -> None:
    """header_message_id: the header's value as text (bytes decoded), None when it or the
    headers are missing."""
    from types import SimpleNamespace

    from idempo.consumers._loop import header_message_id

    read = header_message_id("X-Id")
    assert read(SimpleNamespace(headers={"X-Id": "a-1"})) == "a-1"
    assert read(SimpleNamespace(headers={"X-Id": b"b-2"})) == "b-2"
    assert read(SimpleNamespace(headers={"X-Id": 7})) == "7"
    assert read(SimpleNamespace(headers={"Other": "c"})) is None
    assert read(SimpleNamespace(headers=None)) is None


async def test_tasks_bounded_or_explicitly_unbounded() -> None:
    """Tasks(None) never makes the reading loop wait; Tasks(1) waits for its one slot; a limit
    below 1 is refused."""
    from idempo.consumers._loop import Tasks

    release = asyncio.Event()
    unbounded = Tasks(None)
    for _ in range(3):
        unbounded.spawn(release.wait())
    await unbounded.wait_free()  # returns at once: nothing bounds it
    assert unbounded.free > 3
    bounded = Tasks(1)
    bounded.spawn(release.wait())
    assert bounded.free == 0
    waiter = asyncio.create_task(bounded.wait_free())
    await asyncio.sleep(0)  # let the waiter block on the full slot
    assert not waiter.done()
    release.set()
    await waiter
    await unbounded.drain(None)
    await bounded.drain(None)
    assert bounded.free == 1
    assert not unbounded.tasks
    with pytest.raises(ValueError, match="concurrency"):
        Tasks(0)


async def test_rabbitmq_message_id_from_header(tmp_path: Path) -> None:
    """id_header= keys RabbitMQ messages by a header instead of the message_id property."""
    async with open_test_store("memory", tmp_path) as store, open_broker("rabbitmq") as broker:
        import aio_pika

        effects: Counter[str] = Counter()
        results: list[Result] = []

        async def handle(message: Any) -> None:
            effects[message.headers["X-Request-Id"]] += 1

        consumer = await broker.consumer(handle, store, id_header="X-Request-Id")
        instrument(consumer, results)
        await consumer.start()
        for id_ in ["a", "b", "a", "c", "b"]:
            await broker.channel.default_exchange.publish(
                aio_pika.Message(b"x", headers={"X-Request-Id": id_}),
                routing_key=broker.queue_name,
            )

        async def done() -> bool:
            return len(results) >= 5 and await broker.settled()

        await wait_until(done, "five deliveries")
        await broker.stop_all()
        assert effects == {"a": 1, "b": 1, "c": 1}
        assert {r.message_id for r in results} == {"a", "b", "c"}


async def test_redis_restart_with_the_same_consumer_name_resumes_its_pending(
    tmp_path: Path,
) -> None:
    """A Redis consumer restarted under the same name first re-reads the entries it had been
    delivered (its own pending list) instead of waiting for min_idle."""
    async with open_test_store("memory", tmp_path) as store, open_broker("redis") as broker:
        assert isinstance(broker, RedisStreams)
        from idempo.consumers.redis_streams import RedisStreamConsumer

        ids = ids_for(5)
        await broker.publish(ids)
        # Delivered to worker-x, never acked (the worker died right after reading).
        await broker.redis.xreadgroup(broker.group, "worker-x", {broker.stream: ">"}, count=5)
        effects: Counter[str] = Counter()
        results: list[Result] = []

        async def handle(entry: Any) -> None:
            effects[entry.fields["body"].decode()] += 1

        consumer = RedisStreamConsumer(
            broker.redis,
            broker.stream,
            broker.group,
            handle,
            store=store,
            consumer="worker-x",
            min_idle=60.0,
            block=0.2,
        )
        broker.live.append(consumer)
        instrument(consumer, results)
        await consumer.start()
        await wait_until(broker.settled, "the pending entries to be handled")
        await broker.stop_all()
        assert_exactly_once(effects, ids)
        assert {r.attempt for r in results} == {2}  # their second delivery


# -- the broker-independent core ---------------------------------------------------------------


class FakeDelivery(Delivery[dict[str, Any]]):
    """A delivery that records how it was settled."""

    def __init__(self, message: dict[str, Any], attempt: int | None = 1) -> None:
        super().__init__(message, attempt=attempt)
        self.settled: list[tuple[str, Any]] = []

    async def ack(self) -> None:
        self.settled.append(("ack", None))

    async def retry(self, delay: float) -> None:
        self.settled.append(("retry", delay))

    async def dead_letter(self, reason: str) -> None:
        self.settled.append(("dead_letter", reason))


def fake_consumer(handler: Any, store: AsyncStore | None = None, **options: Any) -> Consumer[Any]:
    return Consumer(
        handler,
        store=store if store is not None else AsyncMemoryStore(),
        name="orders",
        message_id=lambda m: m.get("id"),
        **options,
    )


async def test_core_runs_once_then_replays_and_acks_after_complete() -> None:
    """The handler runs on the first delivery; the record is complete before the ack; a
    redelivery is acked with the stored value and the handler does not run again."""
    store = AsyncMemoryStore()
    calls: list[str] = []

    async def handle(message: dict[str, Any]) -> dict[str, int]:
        calls.append(message["id"])
        return {"total": message["n"] * 2}

    consumer = fake_consumer(handle, store)
    first = FakeDelivery({"id": "m1", "n": 21})

    async def ack_checks_record() -> None:
        record = await store.get("orders", "m1")
        assert record is not None
        assert record.state == "completed"
        first.settled.append(("ack", None))

    first.ack = ack_checks_record  # type: ignore[method-assign]
    result = await consumer.process(first)
    assert result.status is Status.PROCESSED
    assert result.value == {"total": 42}
    again = FakeDelivery({"id": "m1", "n": 21}, attempt=2)
    replay = await consumer.process(again)
    assert replay.status is Status.REPLAYED
    assert replay.value == {"total": 42}
    assert again.settled == [("ack", None)]
    assert calls == ["m1"]


async def test_core_dead_letters_messages_without_a_usable_id() -> None:
    """No id, an empty id, a non-ASCII id or an id callable that raises: dead-lettered with a
    reason, never run."""
    ran: list[Any] = []

    async def handle(message: Any) -> None:
        ran.append(message)

    consumer = fake_consumer(handle)
    for message in [{}, {"id": ""}, {"id": "é"}, {"id": "x" * 300}]:
        delivery = FakeDelivery(message)
        result = await consumer.process(delivery)
        assert result.status is Status.DEAD_LETTERED
        assert delivery.settled[0][0] == "dead_letter"
    broken = Consumer(handle, store=AsyncMemoryStore(), name="q", message_id=lambda m: m["nope"])
    assert (await broken.process(FakeDelivery({}))).status is Status.DEAD_LETTERED
    assert ran == []


async def test_core_failure_releases_and_retries_then_dead_letters() -> None:
    """A failing handler's claim is released and the message redelivered after the backoff;
    on delivery max_deliveries it is dead-lettered; a delivery past the limit (it crashed its
    workers) is dead-lettered without running."""
    store = AsyncMemoryStore()
    runs = 0

    async def handle(message: Any) -> None:
        nonlocal runs
        runs += 1
        raise ValueError("boom")

    consumer = fake_consumer(handle, store, max_deliveries=3)
    for attempt in (1, 2):
        delivery = FakeDelivery({"id": "m"}, attempt=attempt)
        result = await consumer.process(delivery)
        assert result.status is Status.RETRYING
        assert isinstance(result.error, ValueError)
        assert delivery.settled == [("retry", backoff(attempt))]
        assert await store.get("orders", "m") is None  # released: the next delivery runs
    last = FakeDelivery({"id": "m"}, attempt=3)
    assert (await consumer.process(last)).status is Status.DEAD_LETTERED
    assert runs == 3
    crashed = FakeDelivery({"id": "m2"}, attempt=4)
    assert (await consumer.process(crashed)).status is Status.DEAD_LETTERED
    assert runs == 3
    assert await store.get("orders", "m2") is None


async def test_core_defers_a_message_held_by_another_delivery() -> None:
    """While one delivery runs the handler, a second one of the same message is not acked:
    it is redelivered after at most in_progress_delay, and then replayed."""
    started, release = asyncio.Event(), asyncio.Event()

    async def handle(message: Any) -> str:
        started.set()
        await release.wait()
        return "ok"

    consumer = fake_consumer(handle, in_progress_delay=0.25)
    first = FakeDelivery({"id": "m"})
    task = asyncio.create_task(consumer.process(first))
    await started.wait()
    second = FakeDelivery({"id": "m"})
    result = await consumer.process(second)
    assert result.status is Status.DEFERRED
    assert isinstance(result.error, InProgressError)
    assert second.settled == [("retry", 0.25)]
    release.set()
    assert (await task).status is Status.PROCESSED
    third = FakeDelivery({"id": "m"}, attempt=2)
    assert (await consumer.process(third)).status is Status.REPLAYED


async def test_core_wait_replays_an_in_flight_duplicate() -> None:
    """With wait=, a duplicate waits for the first delivery and is then acked from its record."""

    async def handle(message: Any) -> str:
        await asyncio.sleep(0.1)
        return "ok"

    consumer = fake_consumer(handle, wait=2.0)
    a, b = FakeDelivery({"id": "m"}), FakeDelivery({"id": "m"})
    first = asyncio.create_task(consumer.process(a))
    await asyncio.sleep(0.02)
    second = await consumer.process(b)
    assert (await first).status is Status.PROCESSED
    assert second.status is Status.REPLAYED
    assert second.value == "ok"


async def test_core_keepalive_renews_the_lease_of_a_long_handler() -> None:
    """A handler running longer than its lease keeps its claim (renewed every lease/3), so a
    concurrent delivery is deferred instead of taking over and running it twice."""
    runs = 0
    keepalives = 0

    async def handle(message: Any) -> None:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.8)

    class Alive(FakeDelivery):
        async def keepalive(self) -> None:
            nonlocal keepalives
            keepalives += 1

    consumer = fake_consumer(handle, lease=0.3)
    first = asyncio.create_task(consumer.process(Alive({"id": "m"})))
    await asyncio.sleep(0.6)  # twice the lease
    second = await consumer.process(FakeDelivery({"id": "m"}))
    assert second.status is Status.DEFERRED
    assert (await first).status is Status.PROCESSED
    assert runs == 1
    assert keepalives >= 2


async def test_core_fingerprint_mismatch_is_dead_lettered() -> None:
    """With fingerprint=, a message reusing an id with other content is dead-lettered."""

    async def handle(message: Any) -> None:
        return None

    consumer = fake_consumer(handle, fingerprint=lambda m: m["body"])
    assert (await consumer.process(FakeDelivery({"id": "m", "body": 1}))).status is (
        Status.PROCESSED
    )
    assert (await consumer.process(FakeDelivery({"id": "m", "body": 1}))).status is (
        Status.REPLAYED
    )
    assert (await consumer.process(FakeDelivery({"id": "m", "body": 2}))).status is (
        Status.DEAD_LETTERED
    )


async def test_core_passes_the_claim_and_reserves_transactions() -> None:
    """pass_claim=True hands the handler its Claim (scope, key, token, attempt); it does not
    combine with transaction=; a handler that cannot take the claim is refused at
    construction."""
    seen: list[Claim] = []

    async def handle(message: Any, claim: Claim) -> None:
        seen.append(claim)
        await claim.extend()

    consumer = fake_consumer(handle, pass_claim=True)
    await consumer.process(FakeDelivery({"id": "m"}, attempt=3))
    assert seen[0].scope == "orders"
    assert seen[0].key == "m"
    assert seen[0].attempt == 3
    assert seen[0].token
    assert not seen[0].takeover

    async def one_arg(message: Any) -> None:
        return None

    with pytest.raises(TypeError, match="pass_claim"):
        fake_consumer(one_arg, pass_claim=True)
    with pytest.raises(ValueError, match="pass_claim"):
        fake_consumer(handle, pass_claim=True, transaction=contextlib.nullcontext)


async def test_core_cancellation_releases_the_claim() -> None:
    """A delivery cancelled mid-handler (shutdown) releases its claim and is not settled: the
    broker redelivers it and it runs again at once."""
    store = AsyncMemoryStore()
    started = asyncio.Event()

    async def handle(message: Any) -> None:
        started.set()
        await asyncio.sleep(10)

    consumer = fake_consumer(handle, store)
    delivery = FakeDelivery({"id": "m"})
    task = asyncio.create_task(consumer.process(delivery))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert delivery.settled == []
    assert await store.get("orders", "m") is None


async def test_core_opens_and_closes_a_store_from_a_url(tmp_path: Path) -> None:
    """A store given as a URL is opened on first use and closed by aclose()."""

    async def handle(message: Any) -> int:
        return 1

    consumer = Consumer(
        handle,
        store=f"sqlite:///{tmp_path / 'c.db'}",
        name="q",
        message_id=lambda m: m["id"],
    )
    assert (await consumer.process(FakeDelivery({"id": "a"}))).status is Status.PROCESSED
    assert (await consumer.process(FakeDelivery({"id": "a"}))).status is Status.REPLAYED
    await consumer.aclose()


def test_broker_clients_are_optional_extras() -> None:
    """`import idempo` imports no broker client; a missing client's ImportError names the
    extra to install."""
    check = (
        "import sys, idempo, idempo.consumer, idempo.consumers\n"
        "assert not {'aio_pika', 'nats', 'redis', 'aiokafka'} & set(sys.modules), sys.modules\n"
        "for mod, name, extra in [('aio_pika', 'rabbitmq', 'rabbitmq'),"
        " ('nats', 'nats', 'nats'), ('redis', 'redis_streams', 'redis'),"
        " ('aiokafka', 'kafka', 'kafka')]:\n"
        "    sys.modules[mod] = None\n"
        "    try:\n"
        "        __import__('idempo.consumers.' + name)\n"
        "    except ImportError as exc:\n"
        '        assert f"idempo[{extra}]" in str(exc), exc\n'
        "    else:\n"
        "        raise AssertionError(name)\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", check], check=True, timeout=60)


class FlakyStore(AsyncMemoryStore):
    """A memory store whose claim or complete can be made to fail as if the server were down."""

    fail_claim = False
    fail_complete = False

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail_claim:
            raise StoreUnavailableError("store down")
        return await super().claim(*args, **kwargs)

    async def complete(self, *args: Any, **kwargs: Any) -> None:
        if self.fail_complete:
            raise StoreUnavailableError("store down")
        await super().complete(*args, **kwargs)


async def test_core_store_outage_is_never_acked() -> None:
    """Store down at claim: the handler does not run and the message is redelivered. Store down
    at complete: the handler ran but nothing is acked; the redelivery waits for the claim's
    lease to expire, then runs again (the documented at-least-once window)."""
    store = FlakyStore()
    runs = 0

    async def handle(message: Any) -> None:
        nonlocal runs
        runs += 1

    consumer = fake_consumer(handle, store, retry_delay=0.0, lease=0.2)
    store.fail_claim = True
    down = FakeDelivery({"id": "m"})
    result = await consumer.process(down)
    assert result.status is Status.RETRYING
    assert isinstance(result.error, StoreUnavailableError)
    assert down.settled == [("retry", 0.0)]
    assert runs == 0
    store.fail_claim, store.fail_complete = False, True
    unrecorded = FakeDelivery({"id": "m"}, attempt=2)
    result = await consumer.process(unrecorded)
    assert result.status is Status.RETRYING
    assert isinstance(result.error, StoreUnavailableError)
    assert result.error.executed
    assert unrecorded.settled == [("retry", 0.0)]
    store.fail_complete = False
    assert (await consumer.process(FakeDelivery({"id": "m"}, attempt=3))).status is (
        Status.DEFERRED
    )
    await asyncio.sleep(0.3)  # the unrecorded claim's lease runs out
    assert (await consumer.process(FakeDelivery({"id": "m"}, attempt=4))).status is (
        Status.PROCESSED
    )
    assert runs == 2


async def test_core_a_handler_outliving_its_lease_is_fenced() -> None:
    """With keepalive=False, a handler running past its lease is taken over by a redelivery;
    its own complete is refused (fencing) and its delivery is not acked but redelivered, to be
    replayed from the record the taker wrote."""
    slow = asyncio.Event()

    async def handle(message: Any) -> str:
        if not slow.is_set():
            slow.set()
            await asyncio.sleep(0.4)
            return "slow"
        return "fast"

    consumer = fake_consumer(handle, lease=0.15, keepalive=False)
    first_delivery = FakeDelivery({"id": "m"})
    first = asyncio.create_task(consumer.process(first_delivery))
    await asyncio.sleep(0.25)
    taker = await consumer.process(FakeDelivery({"id": "m"}, attempt=2))
    assert taker.status is Status.PROCESSED
    assert taker.value == "fast"
    fenced = await first
    assert fenced.status is Status.RETRYING
    assert isinstance(fenced.error, LeaseLostError)
    assert first_delivery.settled[0][0] == "retry"
    replay = await consumer.process(FakeDelivery({"id": "m"}, attempt=3))
    assert replay.status is Status.REPLAYED
    assert replay.value == "fast"

"""What only Kafka has: committed offsets instead of acks. The shared scenarios (lost acks, a
crash mid-batch, duplicates, competing consumers with every fault, poison messages, the inbox)
run on Kafka in tests/test_consumers.py and tests/test_consumer_inbox.py."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from idempo.consumer import Delivery, Result, Status
from tests.test_consumers import (
    Intercepted,
    Kafka,
    M,
    assert_exactly_once,
    ids_for,
    instrument,
    open_broker,
    open_test_store,
    statuses,
    wait_until,
)


async def test_kafka_lost_commits_are_replayed_after_a_restart(tmp_path: Path) -> None:
    """Every fourth record's ack never lands, so its partition's offset is never committed past
    it; the consumer stops, and the next member of the group is handed everything from the
    committed offsets again: it replays all of it and runs nothing."""
    async with open_test_store("sqlite", tmp_path) as store, open_broker("kafka") as broker:
        assert isinstance(broker, Kafka)
        ids = ids_for()
        lose = set(ids[::4])
        effects: Counter[str] = Counter()
        first: list[Result] = []

        async def handle(message: Any) -> str:
            effects[broker.body_id(message)] += 1
            return "done"

        async def lossy_ack(inner: Delivery[Any]) -> None:
            if broker.body_id(inner.message) not in lose:
                await inner.ack()

        consumer = await broker.consumer(handle, store)
        instrument(consumer, first, lambda d: Intercepted(d, lossy_ack))
        await consumer.start()
        await broker.publish(ids)

        async def handled() -> bool:
            return sum(effects.values()) >= M and broker.idle()

        await wait_until(handled, "every record to be handled")
        await broker.stop_all()
        ends = await broker.inspector.end_offsets(broker.partitions())
        committed = await broker.committed()
        assert all(committed[tp] < ends[tp] for tp in ends)  # stuck at a lost ack
        redelivered = sum(ends[tp] - committed[tp] for tp in ends)

        again: list[Result] = []
        restarted = await broker.consumer(handle, store)
        instrument(restarted, again)
        await restarted.start()
        await wait_until(broker.settled, "the restarted consumer to commit everything")
        await broker.stop_all()

        assert_exactly_once(effects, ids)
        assert statuses(first) == {Status.PROCESSED: M}
        assert redelivered >= len(lose)
        assert len(again) >= redelivered  # more if a rebalance came mid-way
        assert set(statuses(again)) == {Status.REPLAYED}
        assert all(r.value == "done" for r in again)
        assert await broker.settled()


async def test_kafka_commit_never_passes_a_record_in_flight(tmp_path: Path) -> None:
    """While one record's handler runs, its partition is committed up to that record and no
    further, however many later records are done; the other partition is committed to its end.
    Once it finishes, the whole partition is committed."""
    async with open_test_store("memory", tmp_path) as store, open_broker("kafka") as broker:
        assert isinstance(broker, Kafka)
        ids = ids_for()
        slow = ids[0]
        release = asyncio.Event()
        effects: Counter[str] = Counter()
        held: list[Any] = []

        async def handle(message: Any) -> None:
            if broker.body_id(message) == slow:
                held.append(message)
                await release.wait()
            effects[broker.body_id(message)] += 1

        consumer = await broker.consumer(handle, store)
        await consumer.start()
        await broker.publish(ids)

        async def stuck_at_the_slow_one() -> bool:
            if sum(effects.values()) < M - 1 or not held:
                return False
            ends = await broker.inspector.end_offsets(broker.partitions())
            committed = await broker.committed()
            blocked = next(tp for tp in ends if tp.partition == held[0].partition)
            others_done = all(committed[tp] == ends[tp] for tp in ends if tp != blocked)
            return others_done and committed[blocked] == held[0].offset < ends[blocked]

        await wait_until(stuck_at_the_slow_one, "the commit to stop at the record in flight")
        release.set()
        await wait_until(broker.settled, "the partition to be committed to its end")
        await broker.stop_all()
        assert_exactly_once(effects, ids)


async def test_kafka_competing_consumers_split_the_partitions(tmp_path: Path) -> None:
    """Two members of one group each own a partition: both run records, and every record runs
    once."""
    async with open_test_store("memory", tmp_path) as store, open_broker("kafka") as broker:
        ids = ids_for()
        effects: Counter[str] = Counter()
        by_consumer: list[list[Result]] = [[], []]

        async def handle(message: Any) -> None:
            effects[broker.body_id(message)] += 1

        for results in by_consumer:
            consumer = await broker.consumer(handle, store, id_header="X-Id")
            instrument(consumer, results)
            await consumer.start()

        async def both_assigned() -> bool:
            return all(len(c.kafka.assignment()) == 1 for c in broker.live)

        await wait_until(both_assigned, "the group to give each member one partition")
        await broker.publish(ids)

        async def done() -> bool:
            return sum(effects.values()) >= M and await broker.settled()

        await wait_until(done, "every record to be handled and committed")
        await broker.stop_all()
        assert_exactly_once(effects, ids)
        assert all(statuses(results)[Status.PROCESSED] > 0 for results in by_consumer)


async def test_kafka_dead_letter_without_a_topic_logs_and_commits_past(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With no dead-letter topic, a record given up on is logged at ERROR and committed past,
    so its partition's later records are committed too."""
    async with open_test_store("memory", tmp_path) as store, open_broker("kafka") as broker:
        ids = ids_for(6)
        poison = ids[2]
        attempts: Counter[str] = Counter()

        async def handle(message: Any) -> None:
            attempts[broker.body_id(message)] += 1
            if broker.body_id(message) == poison:
                raise RuntimeError("cannot handle this one")

        consumer = await broker.consumer(
            handle, store, max_deliveries=2, dead_letter_topic=None, producer=None
        )
        with caplog.at_level(logging.ERROR, logger="idempo.consumer"):
            await consumer.start()
            await broker.publish(ids)
            await wait_until(broker.settled, "every record, the poison one too, to be committed")
        await broker.stop_all()
        assert attempts[poison] == 2
        assert_exactly_once(
            Counter({k: v for k, v in attempts.items() if k != poison}), ids[:2] + ids[3:]
        )
        assert any("dead-lettered" in r.getMessage() for r in caplog.records)
        assert await broker.dead_letters() == []


async def test_kafka_consumer_refuses_what_cannot_work() -> None:
    """Auto-commit, a client without a group, no topics, or a dead-letter topic without a
    producer (or the reverse) are refused at construction."""
    from aiokafka import AIOKafkaConsumer

    from idempo.consumers.kafka import KafkaConsumer

    async def handle(message: Any) -> None:
        return None

    made: list[Any] = []

    def client(*topics: str, **options: Any) -> Any:
        made.append(AIOKafkaConsumer(*topics, bootstrap_servers="127.0.0.1:1", **options))
        return made[-1]

    try:
        with pytest.raises(ValueError, match="enable_auto_commit=False"):
            KafkaConsumer(client(group_id="g"), handle, topics=["t"], store="memory://")
        with pytest.raises(ValueError, match="group_id"):
            KafkaConsumer(client(enable_auto_commit=False), handle, topics=["t"], store="memory://")
        grouped = client(group_id="g", enable_auto_commit=False)
        with pytest.raises(TypeError, match="topics="):
            KafkaConsumer(grouped, handle, store="memory://")
        with pytest.raises(TypeError, match="together"):
            KafkaConsumer(grouped, handle, topics=["t"], store="memory://", dead_letter_topic="d")
        consumer = KafkaConsumer(grouped, handle, topics=["t"], store="memory://")
        assert consumer.name == "g"  # the group is the scope of the records
        named = client("t", group_id="g2", enable_auto_commit=False)
        assert KafkaConsumer(named, handle, store="memory://").topics == ["t"]
    finally:
        for made_client in made:  # never started: this only releases them
            await made_client.stop()


def test_kafka_message_ids() -> None:
    """The default id is topic/partition/offset; id_header= reads the header's first value as
    text, None when absent."""
    from idempo.consumers.kafka import kafka_header_id, record_id

    record = SimpleNamespace(
        topic="orders", partition=3, offset=41, headers=(("X-Id", b"a-1"), ("X-Id", b"b"))
    )
    assert record_id(record) == "orders/3/41"  # type: ignore[arg-type]
    read = kafka_header_id("X-Id")
    assert read(record) == "a-1"  # type: ignore[arg-type]
    assert kafka_header_id("Other")(record) is None  # type: ignore[arg-type]
    assert read(SimpleNamespace(headers=None)) is None  # type: ignore[arg-type]

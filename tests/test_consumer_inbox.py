"""The transactional inbox: a consumer whose handler's writes and the message's record commit
in one PostgreSQL transaction, on the real brokers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from idempo.consumer import Consumer, Result, Status
from idempo.stores.postgres import AsyncPostgresStore
from tests.conftest import POSTGRES_URL, cleanup, store_url
from tests.test_consumers import (
    BROKERS,
    FakeDelivery,
    M,
    assert_exactly_once,
    ids_for,
    instrument,
    named_id,
    open_broker,
    statuses,
    wait_until,
)


@pytest.fixture
async def inbox(
    tmp_path: Path,
) -> AsyncIterator[tuple[AsyncPostgresStore, AsyncConnectionPool, str]]:
    url, options = store_url("postgres", tmp_path)
    schema = options["schema"]
    store = AsyncPostgresStore.from_url(url, schema=schema)
    await store.migrate()
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{schema}".effects (message_id text)')
    pool: AsyncConnectionPool = AsyncConnectionPool(POSTGRES_URL, open=False, max_size=8)
    await pool.open()
    yield store, pool, schema
    await pool.close()
    await store.close()
    cleanup("postgres", options)


def effects_in_db(schema: str) -> Counter[str]:
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(f'SELECT message_id FROM "{schema}".effects').fetchall()
    return Counter(r[0] for r in rows)


@pytest.mark.postgres
async def test_inbox_rolls_back_a_failed_handler_and_replays_lost_acks(
    inbox: tuple[AsyncPostgresStore, AsyncConnectionPool, str],
) -> None:
    """A handler that fails after its write leaves nothing (rolled back with the claim); the
    redelivery runs once; a redelivery after the commit (a lost ack) replays; concurrent
    deliveries of one message wait on the record's key and replay."""
    store, pool, schema = inbox
    failures = {"left": 1}

    async def handle(message: dict[str, Any], conn: Any) -> str:
        await conn.execute(f'INSERT INTO "{schema}".effects VALUES (%s)', (message["id"],))
        if message["id"] == "m1" and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("crashed after the write, before the commit")
        return f"done {message['id']}"

    consumer: Consumer[Any] = Consumer(
        handle, store=store, name="inbox", message_id=lambda m: m["id"], transaction=pool.connection
    )
    first = await consumer.process(FakeDelivery({"id": "m1"}))
    assert first.status is Status.RETRYING
    assert effects_in_db(schema)["m1"] == 0
    second = await consumer.process(FakeDelivery({"id": "m1"}, attempt=2))
    assert second.status is Status.PROCESSED
    lost_ack = await consumer.process(FakeDelivery({"id": "m1"}, attempt=3))
    assert lost_ack.status is Status.REPLAYED
    assert lost_ack.value == "done m1"
    together = await asyncio.gather(
        *(consumer.process(FakeDelivery({"id": "m2"})) for _ in range(8))
    )
    assert Counter(r.status for r in together) == {Status.PROCESSED: 1, Status.REPLAYED: 7}
    assert effects_in_db(schema) == {"m1": 1, "m2": 1}


@pytest.mark.postgres
@pytest.mark.parametrize("kind", BROKERS)
async def test_inbox_on_real_brokers_with_duplicates(
    inbox: tuple[AsyncPostgresStore, AsyncConnectionPool, str], kind: str
) -> None:
    """Every message published twice, a tenth of the handlers failing once after writing:
    each message's effect is in the database exactly once."""
    store, pool, schema = inbox
    async with open_broker(kind) as broker:
        ids = ids_for()
        failed: set[str] = set()
        results: list[Result] = []

        async def handle(message: Any, conn: Any) -> dict[str, str]:
            mid = broker.body_id(message)
            await conn.execute(f'INSERT INTO "{schema}".effects VALUES (%s)', (mid,))
            if mid.endswith("0") and mid not in failed:
                failed.add(mid)
                raise RuntimeError("rolled back with the record")
            return {"id": mid}

        options = named_id(kind)
        consumer = await broker.consumer(
            handle, store, transaction=pool.connection, retry_delay=0.05, **options
        )
        instrument(consumer, results)
        await consumer.start()
        await broker.publish(ids)
        await asyncio.sleep(0.2)
        await broker.publish(ids)

        async def done() -> bool:
            counts = statuses(results)
            return (
                counts[Status.PROCESSED] >= M
                and counts[Status.REPLAYED] >= M
                and (await broker.settled())
            )

        await wait_until(done, "every message to be processed and every duplicate replayed")
        await broker.stop_all()
        assert_exactly_once(effects_in_db(schema), ids)
        assert statuses(results)[Status.DEAD_LETTERED] == 0
        assert failed  # the rollback path really ran


async def test_idempotency_consumer_shortcut() -> None:
    """idem.consumer(...) builds a Consumer on the object's async store and policy."""
    from idempo import Idempotency

    idem = Idempotency("memory://", ttl=120, lease=7)
    runs: list[str] = []

    async def handle(message: dict[str, str]) -> str:
        runs.append(message["id"])
        return "ok"

    consumer = idem.consumer(handle, name="q", message_id=lambda m: m["id"])
    assert consumer.policy.lease == 7
    assert (await consumer.process(FakeDelivery({"id": "a"}))).status is Status.PROCESSED
    assert (await consumer.process(FakeDelivery({"id": "a"}))).status is Status.REPLAYED
    assert runs == ["a"]
    await idem.aclose()

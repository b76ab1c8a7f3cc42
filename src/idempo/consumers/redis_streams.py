"""Redis Streams (redis-py asyncio): a consumer-group member, each entry processed once.

::

    redis = Redis.from_url("redis://localhost:6379/0")

    async def handle(entry: StreamEntry) -> None:
        amount = int(entry.fields["amount"])

    consumer = RedisStreamConsumer(redis, "orders", "billing", handle, store="sqlite:///idempo.db")
    await consumer.start()          # reads in the background; stop() drains

Reading: ``XREADGROUP`` (``>``) for new entries; at start, the entries this consumer name had
been delivered before a restart (``0``); and every ``reclaim_interval`` seconds ``XAUTOCLAIM``
takes over entries idle for ``min_idle`` seconds in any member's pending list: those of a dead
consumer, and those this adapter left pending on purpose (below). Give each process a stable
``consumer=`` name to pick up its own pending entries at once after a restart; with the default
(a random name per start) they are picked up by ``XAUTOCLAIM`` after ``min_idle``.

Identity: the entry id (``1700000000000-0``) by default, unique within the stream and the same
for every redelivery of the entry. A producer that retries ``XADD`` creates a *new* entry with a
new id: to deduplicate those too, have producers put their own id in a field and pass
``id_field="message_id"``.

Settling: ``XACK`` after the record is committed. Redis Streams have no negative ack: an entry
held by another consumer, or whose handler failed, stays pending; its idle time is set so that
``XAUTOCLAIM`` delivers it again after the requested delay (at most ``min_idle`` seconds; the
next reclaim pass may add up to ``reclaim_interval``). Dead-lettering appends the entry, with
``idempo-reason``, ``idempo-stream`` and ``idempo-id`` fields, to ``dead_letter_stream``
(``<stream>:dead`` by default; None drops it) and acks it, in one ``MULTI``. Delivery counts
come from the pending-entries list, so ``max_deliveries`` holds across consumers and restarts.
While a handler runs, its entry's idle time is reset with every lease renewal, so a live worker
keeps it; make ``min_idle`` longer than ``lease``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Unpack

try:
    from redis.asyncio import Redis
    from redis.exceptions import ResponseError
    from redis.typing import EncodableT, FieldT
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"idempo.consumers.redis_streams needs redis-py ({exc.name} is missing): "
        "pip install 'idempo[redis]'"
    ) from exc

from idempo.consumers._consumer import ConsumerOptions, Delivery, Handler
from idempo.consumers._loop import BrokerConsumer, pick_message_id
from idempo.stores.base import AsyncStore

__all__ = ["RedisStreamConsumer", "RedisStreamDelivery", "StreamEntry"]

log = logging.getLogger("idempo.consumer")


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One stream entry: its stream, id, and fields (names decoded as UTF-8, values as bytes,
    whatever the client's ``decode_responses``)."""

    stream: str
    id: str
    fields: dict[str, bytes] = field(default_factory=dict)


def entry_id(entry: StreamEntry) -> str | None:
    """The default message id: the entry id."""
    return entry.id


def field_message_id(name: str) -> Callable[[StreamEntry], str | None]:
    """A message id read from the field ``name`` (None when absent)."""

    def message_id(entry: StreamEntry) -> str | None:
        value = entry.fields.get(name)
        return None if value is None else value.decode("utf-8", "replace")

    return message_id


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bytes(value: bytes | str | int | float) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


class RedisStreamDelivery(Delivery[StreamEntry]):
    """One stream entry delivered to this group member: XACK, leave pending, dead-letter
    stream + XACK, reset idle time."""

    def __init__(self, entry: StreamEntry, *, attempt: int | None, owner: RedisStreamConsumer):
        super().__init__(entry, attempt=attempt)
        self._owner = owner
        self.keepalive_within = owner.min_idle

    async def ack(self) -> None:
        o = self._owner
        await o.redis.xack(o.stream, o.group, self.message.id)

    async def retry(self, delay: float) -> None:
        # No nack in Redis Streams: the entry stays pending, and its idle time is set so that
        # XAUTOCLAIM (min_idle) delivers it again in about ``delay`` seconds.
        o = self._owner
        idle_ms = max(0, int((o.min_idle - delay) * 1000))
        await o.redis.xclaim(
            o.stream, o.group, o.consumer, 0, [self.message.id], idle=idle_ms, justid=True
        )

    async def dead_letter(self, reason: str) -> None:
        o = self._owner
        if o.dead_letter_stream is None:
            await o.redis.xack(o.stream, o.group, self.message.id)
            return
        fields: dict[FieldT, EncodableT] = {}
        fields.update(self.message.fields)
        fields.update(
            {
                "idempo-reason": reason[:1000],
                "idempo-stream": o.stream,
                "idempo-group": o.group,
                "idempo-id": self.message.id,
            }
        )
        async with o.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(o.dead_letter_stream, fields)
            pipe.xack(o.stream, o.group, self.message.id)
            await pipe.execute()

    async def keepalive(self) -> None:
        # Reset the idle time (JUSTID: without counting a delivery), so no one reclaims it.
        o = self._owner
        await o.redis.xclaim(o.stream, o.group, o.consumer, 0, [self.message.id], justid=True)


class RedisStreamConsumer(BrokerConsumer[StreamEntry]):
    """A member ``consumer`` of consumer group ``group`` on ``stream``; see the module's
    documentation.

    :meth:`stop` does not delete the group member (its pending entries would be lost with it);
    in-flight entries cancelled after ``grace`` stay pending and are reclaimed.

    Args:
        redis: a redis-py asyncio client.
        stream: the stream's key.
        group: the consumer group.
        handler: ``async def handler(entry)``; see :class:`~idempo.consumers.Consumer`.
        store: an async store, or a URL.
        consumer: this member's name (default: host, pid and a random suffix); a
            stable one picks up its own pending entries at once after a restart.
        name: the scope of the records (default: ``<stream>/<group>``).
        message_id: ``callable(entry) -> str | None`` (default: the entry id).
        id_field: read the message id from this field instead.
        concurrency: entries handled at once.
        block: seconds one read waits for entries (also how long :meth:`stop` may wait for it).
        min_idle: seconds an entry sits unacknowledged before it is reclaimed from its member;
            make it longer than ``lease``.
        reclaim_interval: seconds between reclaim passes (default: ``min_idle / 2``).
        dead_letter_stream: where dead letters go (default: ``<stream>:dead``; None: only ack).
        create_group: create the group (and the stream) at start if missing.
        group_start: where a created group starts reading: ``0`` every entry already in the
            stream, ``$`` only new ones.
        **options: the other :class:`~idempo.consumers.ConsumerOptions`.
    """

    def __init__(
        self,
        redis: Redis,
        stream: str,
        group: str,
        handler: Handler[StreamEntry],
        *,
        store: str | AsyncStore,
        consumer: str | None = None,
        name: str | None = None,
        message_id: Callable[[StreamEntry], str | None] | None = None,
        id_field: str | None = None,
        concurrency: int = 16,
        block: float = 1.0,
        min_idle: float = 60.0,
        reclaim_interval: float | None = None,
        dead_letter_stream: str | None = "",
        create_group: bool = True,
        group_start: str = "0",
        **options: Unpack[ConsumerOptions],
    ) -> None:
        super().__init__(
            handler,
            store=store,
            name=name or f"{stream}/{group}",
            message_id=pick_message_id(
                message_id, id_field, default=entry_id, read=field_message_id, option="id_field"
            ),
            concurrency=concurrency,
            **options,
        )
        if not min_idle > 0:
            raise ValueError(f"min_idle must be > 0 seconds, not {min_idle!r}")
        if min_idle <= self.policy.lease:
            log.warning(
                "idempo: %s: min_idle (%ss) should be longer than lease (%ss): entries of a "
                "crashed worker are reclaimed before its claim expires, and deferred again",
                self.name,
                min_idle,
                self.policy.lease,
            )
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer or (f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
        self.block = block
        self.min_idle = min_idle
        self.reclaim_interval = min_idle / 2 if reclaim_interval is None else reclaim_interval
        self.dead_letter_stream = (
            f"{stream}:dead" if dead_letter_stream == "" else dead_letter_stream
        )
        self.create_group = create_group
        self.group_start = group_start
        self._inflight: set[str] = set()

    def wrap(self, entry: StreamEntry, attempt: int | None) -> Delivery[StreamEntry]:
        """The :class:`Delivery` for ``entry`` (override to customize settling)."""
        return RedisStreamDelivery(entry, attempt=attempt, owner=self)

    @property
    def _read_timeout(self) -> float:
        return self.block

    async def _open(self) -> None:
        if self.create_group:
            try:
                await self.redis.xgroup_create(
                    self.stream, self.group, id=self.group_start, mkstream=True
                )
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        next_reclaim = 0.0
        # First, what this member name had been delivered before a restart (its own pending
        # entries: a read from an id instead of ">"), page by page.
        own_cursor: str | None = "0"

        async def read() -> None:
            nonlocal next_reclaim, own_cursor
            if own_cursor is not None:
                batch = await self._read(own_cursor)
                own_cursor = batch[-1].id if batch else None
                await self._spawn([e for e in batch if e.id not in self._inflight])
                return
            if time.monotonic() >= next_reclaim:
                next_reclaim = time.monotonic() + self.reclaim_interval
                await self._reclaim()
                await self._tasks.wait_free()
            for entry in await self._read(">", block=self.block):
                self._start(entry, 1)

        await self._poll(read, what="reading the stream", pause=min(1.0, self.block))

    async def _read(self, start: str, block: float | None = None) -> list[StreamEntry]:
        if not self._tasks.free:
            return []
        response = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: start},
            count=self._tasks.free,
            block=None if block is None else max(1, int(block * 1000)),
        )
        return _entries(self.stream, response)

    async def _spawn(self, batch: list[StreamEntry]) -> None:
        """Start entries read again (own pending, reclaimed): their delivery count is in the
        pending-entries list (the read that handed them over counted it)."""
        counts = await self._counts([e.id for e in batch])
        for entry in batch:
            self._start(entry, counts.get(entry.id))

    def _start(self, entry: StreamEntry, attempt: int | None) -> None:
        self._inflight.add(entry.id)
        self._tasks.spawn(self._process(entry, attempt))

    async def _process(self, entry: StreamEntry, attempt: int | None) -> None:
        try:
            await self.process(self.wrap(entry, attempt))
        finally:
            self._inflight.discard(entry.id)

    async def _reclaim(self) -> None:
        """Take over entries idle for ``min_idle`` in any member's pending list."""
        cursor: str = "0-0"
        claimed: list[StreamEntry] = []
        while self._tasks.free - len(claimed) > 0:
            response = await self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                int(self.min_idle * 1000),
                start_id=cursor,
                count=self._tasks.free - len(claimed),
            )
            cursor = _text(response[0])
            for raw_id, raw_fields in response[1]:
                if raw_id is None or raw_fields is None:
                    continue  # deleted from the stream (Redis 6.2 reports them so)
                entry_ = _entry(self.stream, raw_id, raw_fields)
                if entry_.id not in self._inflight:
                    claimed.append(entry_)
            if cursor == "0-0":
                break
        if claimed:
            log.info(
                "idempo: %s: %s reclaimed %d idle pending entries",
                self.name,
                self.consumer,
                len(claimed),
            )
            await self._spawn(claimed)

    async def _counts(self, ids: list[str]) -> dict[str, int]:
        """Each entry's delivery count, from the group's pending-entries list."""
        if not ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for id_ in ids:
                pipe.xpending_range(self.stream, self.group, min=id_, max=id_, count=1)
            replies: list[Any] = await pipe.execute()
        counts: dict[str, int] = {}
        for id_, reply in zip(ids, replies, strict=True):
            if reply:
                counts[id_] = int(reply[0]["times_delivered"])
        return counts


def _entry(stream: str, raw_id: bytes | str, raw_fields: Any) -> StreamEntry:
    fields = {_text(k): _bytes(v) for k, v in (raw_fields or {}).items()}
    return StreamEntry(stream, _text(raw_id), fields)


def _entries(stream: str, response: Any) -> list[StreamEntry]:
    """Entries of an XREADGROUP reply, whatever shape the client parses it into (RESP2 list,
    RESP3 dict, legacy or unified)."""
    if not response:
        return []
    if isinstance(response, dict):
        groups: list[Any] = list(response.values())
    else:
        groups = [item[1] for item in response]
    out: list[StreamEntry] = []
    for group in groups:
        items = group
        if items and isinstance(items[0], list):  # RESP3 legacy: [[entries]]
            items = [e for sub in items for e in sub]
        for item in items or []:
            raw_id, raw_fields = item[0], item[1]
            if raw_id is None or raw_fields is None:
                continue
            out.append(_entry(stream, raw_id, raw_fields))
    return out

"""Exactly-once message consumers: skip redelivered messages, ack only after the record commits.

Brokers deliver at least once: a lost ack, a consumer restart or a producer's retry hands the
same message to a consumer again. :class:`Consumer` wraps a message handler so that each message
(identified by its message id, within a consumer's ``name``) runs once; a redelivery is
acknowledged without running the handler again, and its stored outcome is returned::

    consumer = Consumer(handle, store="sqlite:///idempo.db", name="billing",
                        message_id=lambda msg: msg.message_id)
    result = await consumer.process(delivery)      # one delivery, from any broker

The broker adapters in :mod:`idempo.consumers` (RabbitMQ, NATS JetStream, Redis Streams) turn
their broker's messages into :class:`Delivery` objects and run the consuming loop; this module
knows no broker. It is async only: there is no sync twin (every supported broker client is
asyncio); run a sync handler with ``asyncio.to_thread`` inside an async one.

One delivery goes through::

    message_id(msg) ── missing/invalid ──▶ dead-letter (it can never be deduplicated)
    claim(scope=name, key=message id)
      ├─ completed ─────▶ ack; return the stored outcome                  (Status.REPLAYED)
      ├─ in progress ───▶ no ack: redeliver after a delay                 (Status.DEFERRED)
      ├─ key reused with another fingerprint ──▶ dead-letter              (Status.DEAD_LETTERED)
      └─ acquired ──▶ handler(msg)
            ├─ returned ─▶ complete (record committed) ─▶ THEN ack         (Status.PROCESSED)
            └─ raised ───▶ release the claim ─▶ redeliver after a backoff  (Status.RETRYING),
                           or dead-letter once ``max_deliveries`` is used up

Guarantees (standalone store): one execution at a time per message id; a completed message is
never run again while its record lives (``ttl``); the ack is sent only after the record is
committed, so a lost ack, a crash after ``complete`` or a duplicate publish all end in a replay.
A crash *between* the handler's effect and ``complete`` leaves the claim to expire after
``lease`` seconds, and the redelivered message runs again: at-least-once for that window. The
transactional inbox (``transaction=``: the record written in the handler's own PostgreSQL
transaction, so both commit or neither does, and the ack after the commit) closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypedDict, TypeVar, cast

from idempo._async.engine import AsyncEngine, AsyncHeld
from idempo._async.transaction import AsyncTransaction
from idempo.core.decide import Reject, Replay
from idempo.core.fingerprint import fingerprint as make_fingerprint
from idempo.core.keys import validate_key, validate_scope
from idempo.core.outcome import JSONSerializer, Serializer
from idempo.core.policy import DEFAULT_LEASE, DEFAULT_MAX_OUTCOME_BYTES, DEFAULT_TTL, Policy
from idempo.errors import (
    IdempoError,
    InProgressError,
    KeyReuseError,
    LeaseLostError,
    OutcomeNotStoredError,
)
from idempo.observe import Hooks, Observer, store_kind
from idempo.stores import open_async_store
from idempo.stores.base import AsyncStore
from idempo.stores.binding import bind_async

__all__ = [
    "Claim",
    "Consumer",
    "ConsumerOptions",
    "Delivery",
    "Handler",
    "Result",
    "Status",
    "Transaction",
    "backoff",
]

log = logging.getLogger("idempo.consumer")

M = TypeVar("M")

# Every message of one consumer is its own operation: without a fingerprint= callable the
# message id alone identifies it, and a re-published message with the same id is a duplicate.
_NO_FINGERPRINT = "message-id"

# Deferring a message that another consumer holds: until just after the holder's lease ends
# (by this margin), and no sooner than this.
_MIN_DELAY = 0.05


def backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """The default redelivery delay after the handler failed on delivery ``attempt`` (1-based):
    0.5 s, 1 s, 2 s, … up to 30 s."""
    return float(min(cap, base * 2 ** max(0, attempt - 1)))


class Status(enum.StrEnum):
    """What :meth:`Consumer.process` did with one delivery."""

    PROCESSED = "processed"  # the handler ran, its record was committed, the message acked
    REPLAYED = "replayed"  # already done: acked without running, stored outcome returned
    DEFERRED = "deferred"  # another consumer holds the message: not acked, redelivered later
    RETRYING = "retrying"  # the handler (or the store) failed: redelivered after a backoff
    DEAD_LETTERED = "dead_lettered"  # given up: rejected to the broker's dead-letter path


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one delivery.

    ``value`` is the handler's result (PROCESSED) or the stored one (REPLAYED; None when it was
    not kept). ``error`` is what went wrong, if anything. ``settled`` is False when the ack, nack
    or reject could not be sent (the connection was lost): the broker then redelivers, and the
    redelivery is deduplicated.
    """

    status: Status
    message_id: str | None
    value: Any = None
    error: BaseException | None = None
    attempt: int | None = None
    settled: bool = True


class Delivery(ABC, Generic[M]):
    """One delivery of a message, as a broker adapter hands it to :meth:`Consumer.process`.

    ``attempt`` is the 1-based delivery count when the broker tells it (NATS ``num_delivered``,
    the Redis pending-entries counter, RabbitMQ quorum queues' ``x-delivery-count``), else a
    best guess or None (then ``max_deliveries`` cannot apply).
    """

    #: The longest the broker tolerates silence about a message being worked on (NATS
    #: ``ack_wait``, a Redis reclaim's ``min_idle``): :meth:`keepalive` is called at least a few
    #: times within it. None: only the lease matters.
    keepalive_within: float | None = None

    def __init__(self, message: M, *, attempt: int | None = None) -> None:
        self.message = message
        self.attempt = attempt

    @abstractmethod
    async def ack(self) -> None:
        """Acknowledge: the broker must not deliver this message again."""

    @abstractmethod
    async def retry(self, delay: float) -> None:
        """Do not acknowledge: have the broker deliver the message again, about ``delay``
        seconds from now (as closely as the broker allows)."""

    @abstractmethod
    async def dead_letter(self, reason: str) -> None:
        """Give up on the message: reject it to the broker's dead-letter path (or terminate it),
        so that it is not delivered to this consumer again."""

    async def keepalive(self) -> None:
        """Tell the broker the message is still being worked on (called periodically while the
        handler runs; by default nothing)."""


class Claim(AsyncHeld):
    """The claim a handler runs under (``pass_claim=True`` hands it to the handler): the
    engine's lease handle, plus the delivery count.

    ``scope`` is the consumer's name, ``key`` the message id, ``token`` the fencing token of
    this execution, ``takeover`` whether it took over an expired claim (an earlier delivery's
    worker crashed mid-handler: its effects may be partly there), ``recovery_point`` that
    worker's last recorded phase, ``attempt`` the delivery count. :meth:`extend` renews the lease
    (the consumer does it by itself every ``lease / 3`` seconds unless ``keepalive=False``);
    :meth:`set_recovery_point` records the phase reached.

    With ``transaction=`` (the inbox) the handler gets its database connection instead.
    """

    __slots__ = ("attempt",)

    def __init__(self, held: AsyncHeld, attempt: int | None) -> None:
        super().__init__(
            held.store,
            held.scope,
            held.key,
            held.token,
            held.policy,
            takeover=held.takeover,
            recovery_point=held.recovery_point,
            observer=held.observer,
        )
        self.attempt = attempt


class Transaction(Protocol):
    """Opens one database transaction for the transactional inbox: called with no argument,
    returns an async context manager that yields a connection in a transaction and commits it
    on a clean exit (rolls it back on an exception). A psycopg_pool ``AsyncConnectionPool``'s
    ``pool.connection`` is exactly that; so is SQLAlchemy's ``async_sessionmaker.begin``.

    With it, the message's record is written in that transaction with the handler's writes
    (the inbox pattern): both commit or neither does, and the message is acked after the
    commit. Exactly-once effects inside that database, even when the worker crashes anywhere.
    """

    def __call__(self) -> contextlib.AbstractAsyncContextManager[Any]: ...


class ConsumerOptions(TypedDict, total=False):
    """The options every consumer takes (see :class:`Consumer`); the broker adapters accept
    them as keyword arguments."""

    fingerprint: Callable[[Any], Any] | None
    ttl: float
    lease: float
    wait: float
    serializer: Serializer | None
    max_outcome_bytes: int
    max_deliveries: int | None
    retry_delay: float | Callable[[int], float]
    in_progress_delay: float | None
    keepalive: bool
    pass_claim: bool
    transaction: Transaction | None
    hooks: Hooks | None


Handler = Callable[[M], Awaitable[Any]] | Callable[[M, Claim], Awaitable[Any]]


class Consumer(Generic[M]):
    """Wraps ``handler`` so that each message runs once per ``name``, however often delivered.

    ``handler``: ``async def handler(message)`` (or ``(message, claim)`` with
    ``pass_claim=True``); its return value is kept (JSON by default) and returned for
    redeliveries. Raise to have the message redelivered.

    ``store``: an :class:`~idempo.stores.base.AsyncStore` or a URL (opened on first use, closed
    by :meth:`aclose`; note that every ``memory://`` URL opens a new, empty store, so consumers
    meant to share records must share a store object).

    ``name``: the scope of the records: the queue or consumer-group name. Two consumers with the
    same name share deduplication (competing consumers); with different names each processes
    every message once.

    ``message_id(message) -> str | None``: the idempotency key. None or "" (no id) and ids that
    are not 1-255 printable ASCII characters are dead-lettered with an error log: a message
    without a stable id cannot be deduplicated.

    ``fingerprint(message)``: what must be equal for two messages with one id to be the same
    message (e.g. ``lambda m: m.body``); a different one is dead-lettered (KeyReuseError). By
    default the id alone decides.

    ``ttl``: seconds a completed message's record is kept: redeliveries and duplicates within it
    are skipped (make it longer than the broker may redeliver or producers retry). ``lease``:
    seconds one delivery may hold the message before another delivery may take it over (renewed
    while the handler runs, unless ``keepalive=False``). ``wait``: seconds a delivery waits for
    another consumer that holds the same message before deferring (0: defer at once).

    ``max_deliveries``: after the handler failed on delivery number ``max_deliveries``, the
    message is dead-lettered instead of redelivered, and a message delivered more often than
    that (it crashed its workers) is dead-lettered without running. None: retry forever. Only
    applies where the broker counts deliveries (see :class:`Delivery`); the broker counts every
    redelivery, deferrals included.

    ``retry_delay``: seconds before a failed message is redelivered, or a callable of the
    delivery attempt (default :func:`backoff`). ``in_progress_delay``: a message held by another
    delivery is redelivered just after the holder's lease ends (when a crashed holder's claim can
    be taken over, and by when a live one has usually finished), once per lease; a number caps
    that delay (sooner replays of duplicates, but more redeliveries counted against
    ``max_deliveries``).

    ``transaction``: the transactional inbox (see :class:`Transaction`): the handler is called
    with ``(message, connection)`` and its writes commit with the message's record; the store
    must be the same PostgreSQL database (``postgresql://`` URL or store).

    ``hooks``: callbacks for replays, conflicts, takeovers (:class:`idempo.observe.Hooks`);
    outcomes are reported to OpenTelemetry as ``idempo.kind=message``.
    """

    def __init__(
        self,
        handler: Handler[M],
        *,
        store: str | AsyncStore,
        name: str,
        message_id: Callable[[M], str | None],
        fingerprint: Callable[[M], Any] | None = None,
        ttl: float = DEFAULT_TTL,
        lease: float = DEFAULT_LEASE,
        wait: float = 0.0,
        serializer: Serializer | None = None,
        max_outcome_bytes: int = DEFAULT_MAX_OUTCOME_BYTES,
        max_deliveries: int | None = 5,
        retry_delay: float | Callable[[int], float] = backoff,
        in_progress_delay: float | None = None,
        keepalive: bool = True,
        pass_claim: bool = False,
        transaction: Transaction | None = None,
        hooks: Hooks | None = None,
    ) -> None:
        if transaction is not None and pass_claim:
            raise ValueError(
                "with transaction=, the handler is called with (message, connection): "
                "pass_claim does not apply"
            )
        if not callable(handler):
            raise TypeError("handler must be an async callable")
        if not name:
            raise ValueError("a consumer needs a name (the queue or consumer-group name)")
        self.name = validate_scope(name)
        self.handler = handler
        self.message_id = message_id
        self.fingerprint = fingerprint
        self.policy = Policy(
            ttl=ttl,
            lease=lease,
            wait=wait,
            max_outcome_bytes=max_outcome_bytes,
            serializer=serializer if serializer is not None else JSONSerializer(),
        )
        if max_deliveries is not None and max_deliveries < 1:
            raise ValueError(f"max_deliveries must be >= 1 or None, not {max_deliveries!r}")
        if in_progress_delay is not None and not in_progress_delay >= 0:
            raise ValueError(f"in_progress_delay must be >= 0, not {in_progress_delay!r}")
        self.max_deliveries = max_deliveries
        self.retry_delay = retry_delay
        self.in_progress_delay = in_progress_delay
        self.keepalive = keepalive
        self.pass_claim = pass_claim
        self.transaction = transaction
        self.hooks = hooks
        self._engine: AsyncEngine | None = None
        if pass_claim or transaction is not None:
            _check_arity(handler, 2)
        self._url: str | None = None
        self._store: AsyncStore | None = None
        if isinstance(store, str):
            self._url = store
        elif isinstance(store, AsyncStore) and inspect.iscoroutinefunction(store.claim):
            self._store = store
        else:
            raise TypeError(
                f"store must be a URL or an async store (open_async_store()), not "
                f"{type(store).__name__}"
            )

    # -- the store ---------------------------------------------------------------------------

    @property
    def store(self) -> AsyncStore:
        """The store (opened from the URL on first use)."""
        if self._store is None:
            assert self._url is not None
            self._store = open_async_store(self._url)
        return self._store

    @property
    def engine(self) -> AsyncEngine:
        """The engine over the store, reporting as ``message`` (built once)."""
        if self._engine is None:
            self._engine = AsyncEngine(
                self.store, Observer("message", store_kind(self.store), self.hooks)
            )
        return self._engine

    async def aclose(self) -> None:
        """Close the store, if this consumer opened it from a URL."""
        if self._url is not None and self._store is not None:
            store, self._store = self._store, None
            self._engine = None
            await store.close()

    # -- one delivery ------------------------------------------------------------------------

    async def process(self, delivery: Delivery[M]) -> Result:
        """Handle one delivery: run the handler once per message id, settle with the broker.

        Never raises for a failing handler or broker call (the result says what happened);
        cancellation releases the claim and propagates, leaving the message unacknowledged.
        """
        attempt = delivery.attempt
        key, why = self._identify(delivery.message)
        if key is None:
            log.error("idempo: %s: dead-lettering a message: %s", self.name, why)
            settled = await self._settle(delivery.dead_letter(why), "dead-letter", None)
            return Result(Status.DEAD_LETTERED, None, attempt=attempt, settled=settled)
        try:
            fp = (
                _NO_FINGERPRINT
                if self.fingerprint is None
                else make_fingerprint(self.fingerprint(delivery.message))
            )
        except Exception as exc:
            return await self._dead_letter(delivery, key, f"cannot fingerprint it: {exc}", exc)

        if self.transaction is not None:
            return await self._process_in_transaction(delivery, key, fp)

        try:
            decision = await self.engine.acquire(self.name, key, fp, self.policy)
        except Exception as exc:  # StoreUnavailableError, StoreError, an unreadable record
            log.error(
                "idempo: %s: cannot claim message %r (%s: %s); not processed, redelivering it",
                self.name,
                key,
                type(exc).__name__,
                exc,
            )
            return await self._retry(delivery, key, exc)

        match decision:
            case Reject(error=InProgressError() as busy):
                return await self._defer(delivery, key, busy)
            case Reject(error=reused):  # KeyReuseError: another message under this id
                return await self._dead_letter(
                    delivery, key, "its id was already used by a message with other content", reused
                )
            case Replay():
                value = self._replayed_value(decision.outcome, key)
                log.debug("idempo: %s: message %r already processed; acking", self.name, key)
                settled = await self._settle(delivery.ack(), "ack", key)
                return Result(Status.REPLAYED, key, value=value, attempt=attempt, settled=settled)
        claim = Claim(decision, attempt)
        if claim.takeover:
            log.warning(
                "idempo: %s: took over the expired claim of message %r (its worker stopped "
                "mid-handler; its effects may be partly applied)",
                self.name,
                key,
            )
        if self._exhausted(attempt, after_failure=False):
            await claim.release_quietly()
            return await self._dead_letter(
                delivery, key, f"delivered {attempt} times, max_deliveries={self.max_deliveries}"
            )

        try:
            async with self._heartbeat(claim, delivery):
                value = await self._call(delivery.message, claim)
        except Exception as exc:
            await claim.release_quietly()
            log.warning(
                "idempo: %s: handler failed on message %r (delivery %s)",
                self.name,
                key,
                attempt if attempt is not None else "?",
                exc_info=True,
            )
            if self._exhausted(attempt, after_failure=True):
                return await self._dead_letter(
                    delivery,
                    key,
                    f"handler failed on delivery {attempt}, max_deliveries="
                    f"{self.max_deliveries}: {type(exc).__name__}: {exc}",
                    exc,
                )
            return await self._retry(delivery, key, exc)
        except BaseException:
            # Cancelled (shutdown): free the message for the next delivery; the broker
            # redelivers it since it was never acked.
            await asyncio.shield(claim.release_quietly())
            raise

        try:
            await claim.finish(value, unstorable="log")
        except LeaseLostError as exc:
            # We outlived our lease and another delivery took over: it owns the record now. Do
            # not ack: the redelivery is replayed once it completes, or runs if it failed.
            log.error(
                "idempo: %s: message %r took longer than its lease (%ss) and was taken over; "
                "its effect may have been applied twice. Raise lease=",
                self.name,
                key,
                self.policy.lease,
            )
            return await self._retry(delivery, key, exc, delay=_MIN_DELAY)
        except Exception as exc:  # StoreUnavailableError, StoreError
            # The effect happened but is not recorded: the claim expires after the lease and
            # the redelivery runs again (at-least-once, the standalone store's known window).
            log.error(
                "idempo: %s: handled message %r but could not record it (%s: %s); it will run "
                "again after its lease expires",
                self.name,
                key,
                type(exc).__name__,
                exc,
            )
            return await self._retry(delivery, key, exc)
        settled = await self._settle(delivery.ack(), "ack", key)
        return Result(Status.PROCESSED, key, value=value, attempt=attempt, settled=settled)

    async def _process_in_transaction(self, delivery: Delivery[M], key: str, fp: str) -> Result:
        """The inbox: claim, handler and record in one database transaction; ack after commit.

        A concurrent delivery of the same message waits on the record's unique key inside the
        database until this transaction ends, then replays. A crash before the commit rolls back
        the handler's writes and the claim together, so the redelivery runs from scratch.
        """
        assert self.transaction is not None
        attempt = delivery.attempt
        handler = cast(Callable[[M, Any], Awaitable[Any]], self.handler)
        try:
            async with self.transaction() as conn:
                tx = AsyncTransaction(
                    lambda: bind_async(self.store, conn),
                    scope=self.name,
                    key=key,
                    fingerprint=fp,
                    policy=self.policy,
                    observer=self.engine.observer,
                )
                async with tx:
                    if not tx.replayed:
                        tx.result = await handler(delivery.message, conn)
        except KeyReuseError as exc:
            return await self._dead_letter(
                delivery, key, "its id was already used by a message with other content", exc
            )
        except InProgressError as exc:
            # A record committed in progress (a standalone-mode claim on the same table).
            return await self._defer(delivery, key, exc, cap=False)
        except Exception as exc:
            # Rolled back: neither the handler's writes nor the record exist.
            log.warning(
                "idempo: %s: transaction for message %r rolled back", self.name, key, exc_info=True
            )
            if self._exhausted(attempt, after_failure=True):
                return await self._dead_letter(
                    delivery, key, f"handler failed on delivery {attempt}: {exc}", exc
                )
            return await self._retry(delivery, key, exc)
        settled = await self._settle(delivery.ack(), "ack", key)
        status = Status.REPLAYED if tx.replayed else Status.PROCESSED
        return Result(status, key, value=tx.result, attempt=attempt, settled=settled)

    # -- helpers -----------------------------------------------------------------------------

    def _identify(self, message: M) -> tuple[str, str] | tuple[None, str]:
        try:
            raw = self.message_id(message)
        except Exception as exc:
            return None, f"its message id cannot be read ({type(exc).__name__}: {exc})"
        if raw is None or raw == "":
            return None, "it has no message id, so redeliveries could not be recognized"
        try:
            return validate_key(raw), ""
        except IdempoError as exc:
            return None, f"its message id is not a valid idempotency key: {exc}"

    async def _call(self, message: M, claim: Claim) -> Any:
        if self.pass_claim:
            handler2 = cast(Callable[[M, Claim], Awaitable[Any]], self.handler)
            return await handler2(message, claim)
        handler1 = cast(Callable[[M], Awaitable[Any]], self.handler)
        return await handler1(message)

    def _exhausted(self, attempt: int | None, *, after_failure: bool) -> bool:
        if self.max_deliveries is None or attempt is None:
            return False
        if after_failure:
            return attempt >= self.max_deliveries
        return attempt > self.max_deliveries

    def _delay(self, attempt: int | None) -> float:
        if callable(self.retry_delay):
            return max(0.0, float(self.retry_delay(attempt or 1)))
        return max(0.0, float(self.retry_delay))

    def _replayed_value(self, data: bytes, key: str) -> Any:
        """The stored outcome of a redelivered message; None when it was not kept (there is
        nothing to raise to: the message is acked all the same)."""
        try:
            return self.engine.replay(data, scope=self.name, key=key, policy=self.policy)
        except OutcomeNotStoredError:
            return None
        except IdempoError as exc:
            log.warning(
                "idempo: %s: stored outcome of message %r cannot be read: %s", self.name, key, exc
            )
            return None

    async def _defer(
        self, delivery: Delivery[M], key: str, exc: InProgressError, *, cap: bool = True
    ) -> Result:
        """Another delivery holds the message: redeliver just after its lease ends."""
        delay = exc.retry_after + _MIN_DELAY
        if cap and self.in_progress_delay is not None:
            delay = min(self.in_progress_delay, delay)
        log.info(
            "idempo: %s: message %r is being processed by another delivery; redelivering in %.2fs",
            self.name,
            key,
            delay,
        )
        settled = await self._settle(delivery.retry(delay), "retry", key)
        return Result(Status.DEFERRED, key, error=exc, attempt=delivery.attempt, settled=settled)

    async def _retry(
        self,
        delivery: Delivery[M],
        key: str,
        exc: BaseException,
        *,
        delay: float | None = None,
    ) -> Result:
        wait = self._delay(delivery.attempt) if delay is None else delay
        settled = await self._settle(delivery.retry(wait), "retry", key)
        return Result(Status.RETRYING, key, error=exc, attempt=delivery.attempt, settled=settled)

    async def _dead_letter(
        self,
        delivery: Delivery[M],
        key: str,
        reason: str,
        exc: BaseException | None = None,
    ) -> Result:
        log.error("idempo: %s: dead-lettering message %r: %s", self.name, key, reason)
        settled = await self._settle(delivery.dead_letter(reason), "dead-letter", key)
        return Result(
            Status.DEAD_LETTERED, key, error=exc, attempt=delivery.attempt, settled=settled
        )

    async def _settle(self, call: Awaitable[None], what: str, key: str | None) -> bool:
        try:
            await call
        except Exception:
            # The broker redelivers what was not settled; the redelivery is deduplicated.
            log.warning(
                "idempo: %s: could not %s message %r; the broker will redeliver it",
                self.name,
                what,
                key,
                exc_info=True,
            )
            return False
        return True

    def _heartbeat(
        self, claim: Claim, delivery: Delivery[M]
    ) -> contextlib.AbstractAsyncContextManager[None]:
        """The claim's heartbeat, telling the broker too, every lease / 3 seconds (or more often
        if the broker needs it), while the handler runs: a live worker keeps its message; a dead
        one's claim expires. A lost lease stops it; a store blip does not."""
        if not self.keepalive:
            return contextlib.nullcontext()
        interval = self.policy.lease / 3
        if delivery.keepalive_within is not None:
            interval = min(interval, delivery.keepalive_within / 3)
        return claim.heartbeat(also=delivery.keepalive, interval=max(_MIN_DELAY, interval))


def _check_arity(handler: Callable[..., Any], n: int) -> None:
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # builtins and the like: trust the caller
        return
    try:
        signature.bind(*([None] * n))
    except TypeError:
        raise TypeError(
            f"pass_claim=True calls the handler with (message, claim); "
            f"{getattr(handler, '__qualname__', handler)!r} does not accept that"
        ) from None

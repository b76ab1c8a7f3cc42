"""Transactional mode: the idempotency record is written in the caller's own transaction.

    async with conn.transaction():                                  # the caller's transaction
        async with idem.atransaction(conn, key=order_id, fingerprint=payload) as tx:
            if tx.replayed:
                return tx.result                                    # done before: nothing runs
            await conn.execute("INSERT INTO charges ...")           # the effect
            tx.result = {"charge_id": ...}                          # kept with it

The claim and the completion are statements on the caller's connection, so the effect and the
record commit together or not at all: exactly-once effects inside that database, whatever
crashes. idempo adds no commit of its own. A concurrent duplicate's claim waits on the record's
unique key until this transaction ends, then replays its result (or, after a rollback, runs).

``_sync/transaction.py`` is generated from ``_async/transaction.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from idempo._async.engine import AsyncEngine, AsyncHeld
from idempo.core.decide import Reject, Replay
from idempo.core.policy import Policy
from idempo.errors import IdempoError
from idempo.observe import Observer
from idempo.stores.base import AsyncStore

__all__ = ["AsyncTransaction"]

_UNSET: Any = object()


class AsyncTransaction:
    """One idempotent unit of work inside a database transaction (see the module docstring).

    After entering: ``replayed`` is True if the key was completed before (``result`` holds the
    kept result; do nothing else), False if this transaction holds the claim (do the work and
    set ``result``). Leaving without an exception writes the record, completed, in the same
    transaction; leaving with one writes nothing more (the caller's rollback removes the claim).
    """

    def __init__(
        self,
        bind: Callable[[], Awaitable[AsyncStore]],
        *,
        scope: str,
        key: str,
        fingerprint: str,
        policy: Policy,
        observer: Observer | None = None,
    ) -> None:
        self._bind = bind  # the store bound to the caller's connection, made on entry
        self.store: AsyncStore | None = None
        self.scope = scope
        self.key = key
        self.fingerprint = fingerprint
        self.policy = policy
        self.replayed = False
        self.result: Any = _UNSET
        self._held: AsyncHeld | None = None
        self._policy = dataclasses.replace(policy, wait=0.0, heartbeat=False)
        self._observer = observer

    async def __aenter__(self) -> AsyncTransaction:
        self.store = await self._bind()
        # No waiting here: a duplicate already waited on the row lock inside the claim.
        engine = AsyncEngine(self.store, self._observer)
        decision = await engine.acquire(self.scope, self.key, self.fingerprint, self._policy)
        if isinstance(decision, Reject):
            raise decision.error
        if isinstance(decision, Replay):
            self.result = engine.replay(
                decision.outcome, scope=self.scope, key=self.key, policy=self.policy
            )
            self.replayed = True
            return self
        self._held = decision
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held is None:
            return  # a replay wrote nothing
        if exc_type is not None:
            self._held.report("failed")  # the caller's rollback undoes the claim
            return
        if self.result is _UNSET:
            self._held.report("failed")
            raise IdempoError(
                f"transaction for idempotency key {self.key!r} ended without a result: set "
                "tx.result (None is a result) before leaving the block"
            )
        # An unkeepable result raises before anything is written: the caller's transaction
        # rolls back whole, the effect with it, so nothing has happened and a fixed retry may run.
        await self._held.finish(self.result, unstorable="raise_before_write")

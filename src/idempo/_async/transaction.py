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

import secrets
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from idempo.core import outcome as outcomes
from idempo.core.decide import Execute, Reject, Replay, decide
from idempo.core.policy import Policy
from idempo.errors import IdempoError, OutcomeNotStoredError
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
    ) -> None:
        self._bind = bind  # the store bound to the caller's connection, made on entry
        self.store: AsyncStore | None = None
        self.scope = scope
        self.key = key
        self.fingerprint = fingerprint
        self.policy = policy
        self.replayed = False
        self.result: Any = _UNSET
        self._token: str | None = None

    async def __aenter__(self) -> AsyncTransaction:
        self.store = await self._bind()
        token = secrets.token_hex(16)
        claim = await self.store.claim(
            self.scope,
            self.key,
            self.fingerprint,
            token,
            lease=self.policy.lease,
            ttl=self.policy.ttl,
        )
        # No waiting here: a duplicate already waited on the row lock inside the claim.
        decision = decide(claim)
        if isinstance(decision, Reject):
            raise decision.error
        if isinstance(decision, Execute):
            self._token = decision.token
            return self
        assert isinstance(decision, Replay)  # wait=0: decide() never says Wait
        value = outcomes.decode(self.policy.serializer, decision.outcome)
        if isinstance(value, outcomes.NotStored):
            raise OutcomeNotStoredError(
                f"idempotency key {self.key!r} already ran, but its result was not kept "
                f"({value.reason})",
                reason=value.reason,
                key=self.key,
                scope=self.scope,
            )
        self.replayed = True
        self.result = value
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or self._token is None:
            return  # the caller's rollback undoes the claim; a replay wrote nothing
        if self.result is _UNSET:
            raise IdempoError(
                f"transaction for idempotency key {self.key!r} ended without a result: set "
                "tx.result (None is a result) before leaving the block"
            )
        encoded = outcomes.encode_result(
            self.policy.serializer, self.result, self.policy.max_outcome_bytes
        )
        if encoded.error is not None:
            # Raised before anything is written: the caller's transaction rolls back whole, the
            # effect with it, so nothing has happened and a fixed retry may run.
            raise encoded.error
        assert self.store is not None
        await self.store.complete(
            self.scope, self.key, self._token, encoded.data, ttl=self.policy.ttl
        )

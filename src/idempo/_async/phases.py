"""Atomic phases: operations with foreign side effects, resumable from recovery points.

An operation that calls a payment provider and then writes its own rows cannot sit in one
database transaction. Brandur Leach's answer, kept here: split it into ordered phases; after
each phase, store a *recovery point* on the idempotency record (committed with the phase's own
writes when the phase is local to the database); a retry, or a takeover after a crash, resumes
after the last recovery point. A foreign call gets an idempotency key derived from ours
(:meth:`AsyncPhaseContext.foreign_key`), so the foreign side dedupes a repeated call too.

Improved on the original: every recovery point is fenced (only the current lease token may
write one, by the store's clock), so a stalled worker that wakes up after a takeover cannot
record progress over its successor's.

``_sync/phases.py`` is generated from ``_async/phases.py``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from idempo._async.engine import AsyncEngine, AsyncHeld
from idempo.core.decide import Reject, Replay
from idempo.core.policy import Policy
from idempo.errors import IdempoError, LeaseLostError, StoreUnavailableError
from idempo.observe import Observer
from idempo.stores.base import AsyncStore

__all__ = ["AsyncPhase", "AsyncPhaseContext", "AsyncPhasedOperation"]

log = logging.getLogger("idempo")


@dataclass(frozen=True, slots=True)
class AsyncPhase:
    """One step. ``run(ctx)`` returns a JSON-serializable value, kept in the recovery point.

    ``local=True``: the phase writes to the operation's database connection (``ctx.conn``),
    and its writes commit in one transaction with its recovery point. Otherwise (a foreign
    call) the recovery point is stored once the phase returns.
    """

    name: str
    run: Callable[[AsyncPhaseContext], Awaitable[Any]]
    local: bool = False


class AsyncPhaseContext:
    """What a phase sees: the key, earlier phases' results, and the database connection."""

    def __init__(self, scope: str, key: str, results: dict[str, Any], conn: Any) -> None:
        self.scope = scope
        self.key = key
        self.results = results  # name -> value of every phase done so far (this run or before)
        self.conn = conn

    def foreign_key(self, phase: str) -> str:
        """A stable idempotency key for the foreign call made in ``phase``: the same on every
        retry of this operation, different for every other operation and phase."""
        digest = hashlib.sha256(f"{self.scope}\x00{self.key}\x00{phase}".encode()).hexdigest()
        return f"idempo-{digest[:40]}"


def _load_point(data: bytes | None) -> dict[str, Any]:
    if not data:
        return {}
    point = json.loads(data)
    if point.get("v") != 1:
        raise IdempoError(f"unknown recovery point format: {point.get('v')!r}")
    results: dict[str, Any] = point["results"]
    return results


def _dump_point(results: dict[str, Any]) -> bytes:
    return json.dumps({"v": 1, "results": results}, separators=(",", ":")).encode()


class AsyncPhasedOperation:
    """Runs ``phases`` in order under one idempotency key, resuming after the last recovery
    point; the last phase's value is the operation's result, kept and replayed like any."""

    def __init__(
        self,
        store: AsyncStore,
        phases: Sequence[AsyncPhase],
        *,
        policy: Policy,
        conn: Any = None,
        bind: Callable[[Any], Awaitable[AsyncStore]] | None = None,
        observer: Observer | None = None,
    ) -> None:
        names = [p.name for p in phases]
        if not phases or len(set(names)) != len(names):
            raise ValueError(f"phases need distinct names, at least one: {names}")
        if any(p.local for p in phases) and (conn is None or bind is None):
            raise ValueError("local phases need conn= (the database their writes go to)")
        self.store = store
        self.phases = list(phases)
        self.policy = policy
        self.conn = conn
        self._bind = bind
        self.engine = AsyncEngine(store, observer)

    async def run(self, *, scope: str, key: str, fingerprint: str) -> Any:
        held = await self.engine.acquire(scope, key, fingerprint, self.policy)
        if isinstance(held, Replay):
            return self.engine.replay(held.outcome, scope=scope, key=key, policy=self.policy)
        if isinstance(held, Reject):
            raise held.error
        results = _load_point(held.recovery_point)
        if results:
            log.info("idempo: resuming %r/%r after phases %s", scope, key, list(results))
        ctx = AsyncPhaseContext(scope, key, results, self.conn)
        try:
            # The lease is renewed while a (long) phase runs, so only a crashed worker's claim
            # runs out; each recovery point renews it too.
            async with held.heartbeat():
                for phase in self.phases:
                    if phase.name in results:
                        continue  # done before a crash or an error: never again
                    if phase.local:
                        await self._run_local(phase, ctx, held)
                    else:
                        results[phase.name] = await phase.run(ctx)
                        await held.set_recovery_point(_dump_point(results))
        except BaseException as exc:
            last = self.phases[-1].name
            if isinstance(exc, LeaseLostError | StoreUnavailableError) and last in results:
                # Every phase ran; only recording the last one failed: hand back its result.
                exc.executed, exc.value = True, results[last]
            # Unlike a plain call, the claim is NOT released: the recovery point must survive
            # for the retry, which takes over at once (the lease ends now).
            await held.expire()
            raise
        return await held.finish(results[self.phases[-1].name])

    async def _run_local(self, phase: AsyncPhase, ctx: AsyncPhaseContext, held: AsyncHeld) -> None:
        """The phase's writes and its recovery point in one transaction of ``conn``: binding
        opens it the way its database needs (SQLite: ``BEGIN IMMEDIATE``, see stores.binding)."""
        assert self._bind is not None
        bound = await self._bind(self.conn)
        try:
            value = await phase.run(ctx)
            point = _dump_point({**ctx.results, phase.name: value})
            await bound.set_recovery_point(
                held.scope, held.key, held.token, point, lease=self.policy.lease
            )
            await self.conn.commit()
        except BaseException:
            # The original error matters; a connection that is already gone cannot roll back
            # (its transaction is void anyway).
            with contextlib.suppress(Exception):
                await self.conn.rollback()
            raise
        ctx.results[phase.name] = value

"""The engine driver: claim -> execute -> record -> replay, over a store (:class:`AsyncStore`).

All decisions come from :mod:`idempo.core.decide` and :mod:`idempo.core.outcome`; this module
only performs the I/O they call for. ``_sync/engine.py`` is generated from ``_async/engine.py``.

Round trips: a new key costs two (claim, complete); a replay or a refused duplicate one (claim).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from idempo._primitives import async_periodic, async_sleep
from idempo.core import outcome as outcomes
from idempo.core.decide import Execute, Reject, Replay, Wait, decide
from idempo.core.policy import Policy
from idempo.errors import LeaseLostError, OutcomeNotStoredError, StoreUnavailableError
from idempo.stores.base import AsyncStore

__all__ = ["AsyncEngine"]

log = logging.getLogger("idempo")


class AsyncEngine:
    """Runs operations at most once per (scope, key) at a time, and replays their results."""

    def __init__(self, store: AsyncStore) -> None:
        self.store = store

    async def acquire(
        self, scope: str, key: str, fingerprint: str, policy: Policy
    ) -> Execute | Replay:
        """Claim the key, waiting for an in-flight duplicate if the policy allows.

        Returns Execute (we hold the claim) or Replay (stored outcome); raises the refusal
        (KeyReuseError, InProgressError) otherwise.
        """
        token = secrets.token_hex(16)
        started = time.monotonic()
        attempt = 0
        while True:
            result = await self.store.claim(
                scope, key, fingerprint, token, lease=policy.lease, ttl=policy.ttl
            )
            decision = decide(
                result, waited=time.monotonic() - started, wait=policy.wait, attempt=attempt
            )
            if isinstance(decision, Execute | Replay):
                return decision
            if isinstance(decision, Reject):
                raise decision.error
            assert isinstance(decision, Wait)
            await async_sleep(decision.delay)
            attempt += 1

    async def run(
        self,
        call: Callable[[], Awaitable[Any]],
        *,
        scope: str,
        key: str,
        fingerprint: str,
        policy: Policy,
    ) -> Any:
        """Run ``call`` once per (scope, key, fingerprint), or replay its first run's result."""
        decision = await self.acquire(scope, key, fingerprint, policy)
        if isinstance(decision, Replay):
            return self.replay(decision.outcome, scope=scope, key=key, policy=policy)
        token = decision.token
        if decision.takeover:
            log.warning("idempo: took over the expired claim of %r/%r", scope, key)
        try:
            async with self.heartbeat(scope, key, token, policy):
                value = await call()
        except BaseException:
            # A failure is not kept: free the key so that a retry runs the operation again.
            await self.release_quietly(scope, key, token)
            raise
        encoded = outcomes.encode_result(policy.serializer, value, policy.max_outcome_bytes)
        try:
            await self.store.complete(scope, key, token, encoded.data, ttl=policy.ttl)
        except (LeaseLostError, StoreUnavailableError) as exc:
            # The operation ran but its result could not be recorded. Say so, and hand back the
            # live result so that nothing is lost.
            exc.executed, exc.value = True, value
            raise
        if encoded.error is not None:
            raise encoded.error
        if not encoded.stored:
            log.warning("idempo: result of %r/%r not kept: too large", scope, key)
        return value

    def heartbeat(
        self, scope: str, key: str, token: str, policy: Policy
    ) -> AbstractAsyncContextManager[None]:
        """Renew the claim's lease every ``lease / 3`` seconds while the block runs (if the
        policy asks for it), so that a live operation longer than its lease is not taken over;
        only a crashed holder's claim runs out."""
        if not policy.heartbeat:
            return contextlib.nullcontext()
        return async_periodic(
            lambda: self.store.extend(scope, key, token, lease=policy.lease), policy.lease / 3
        )

    def replay(self, data: bytes, *, scope: str, key: str, policy: Policy) -> Any:
        value = outcomes.decode(policy.serializer, data)
        if isinstance(value, outcomes.NotStored):
            raise OutcomeNotStoredError(
                f"idempotency key {key!r} already ran, but its result was not kept "
                f"({value.reason}); use a new key to run the operation again",
                reason=value.reason,
                key=key,
                scope=scope,
            )
        return value

    async def settle(
        self, scope: str, key: str, token: str, data: bytes | None, *, ttl: float
    ) -> None:
        """Keep ``data`` as the outcome, or release the key if it is None, after the caller has
        already answered (HTTP adapters): a store failure is logged, not raised, since there is
        nobody left to tell. A retry after the lease runs out may then run the handler again."""
        try:
            if data is None:
                await self.store.release(scope, key, token)
            else:
                await self.store.complete(scope, key, token, data, ttl=ttl)
        except (LeaseLostError, StoreUnavailableError) as exc:
            log.error("idempo: could not record the response of key %r: %s", key, exc)

    async def release_quietly(self, scope: str, key: str, token: str) -> None:
        try:
            await self.store.release(scope, key, token)
        except Exception:
            # The original error matters more. The claim frees itself when its lease runs out.
            log.warning(
                "idempo: could not release the claim of %r/%r; it frees itself when its lease "
                "runs out",
                scope,
                key,
                exc_info=True,
            )

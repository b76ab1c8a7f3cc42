# DO NOT EDIT: generated from src/idempo/_async/engine.py by scripts/unasync.py
"""The engine: claim -> execute -> record -> replay, over a store (:class:`Store`).

Every driver (the decorator, transactional mode, atomic phases, the consumers and the HTTP
front) runs one lifecycle::

    decision = engine.acquire(scope, key, fingerprint, policy)
    match decision:
        case Held():  # we hold the claim: run, then finish (or release)
        case Replay():     # already done: engine.replay(decision.outcome)
        case Reject():     # refused: decision.error says why (409, 422)

All decisions come from :mod:`idempo.core.decide` and :mod:`idempo.core.outcome`; this module
only performs the I/O they call for. The lease handle :class:`Held` is the one place that
renews, completes, releases and hands over a claim, so no driver writes its own finish.
``_sync/engine.py`` is generated from ``_async/engine.py``.

Round trips: a new key costs two (claim, complete); a replay or a refused duplicate one (claim).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from os import urandom
from typing import Any, Literal

from idempo._sync.observed import ObservedStore
from idempo._primitives import sync_interrupted, sync_periodic, sync_sleep, sync_spawn
from idempo.core import outcome as outcomes
from idempo.core.decide import Execute, Reject, Replay, Wait, decide
from idempo.core.outcome import Keep, Release
from idempo.core.policy import Policy
from idempo.errors import (
    InProgressError,
    LeaseLostError,
    OutcomeNotStoredError,
    StoreUnavailableError,
)
from idempo.observe import Observer, Outcome
from idempo.stores.base import Store

__all__ = ["Engine", "Held", "Unstorable"]

log = logging.getLogger("idempo")

#: What :meth:`Held.finish` does with a result the serializer cannot keep: ``"raise"``
#: keeps a not-stored marker, then raises the SerializationError (the live value on it);
#: ``"raise_before_write"`` raises before writing anything (transactional mode: the caller's
#: rollback then undoes the effect too); ``"log"`` keeps the marker and logs (consumers: the
#: message is acked, there is nobody to raise to).
Unstorable = Literal["raise", "raise_before_write", "log"]


class Held:
    """A claim this process holds: the lease handle of one execution.

    It carries what every later step needs (store, scope, key, fencing token, policy), so a
    driver never threads them by hand. ``takeover`` is True when it took over an expired claim
    (the earlier holder stopped mid-way: its effects may be partly there); ``recovery_point`` is
    the last one that holder recorded (atomic phases resume from it).
    """

    __slots__ = (
        "_beat",
        "key",
        "observer",
        "policy",
        "recovery_point",
        "scope",
        "store",
        "takeover",
        "token",
    )

    def __init__(
        self,
        store: Store,
        scope: str,
        key: str,
        token: str,
        policy: Policy,
        *,
        takeover: bool = False,
        recovery_point: bytes | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.observer = observer
        self.scope = scope
        self.key = key
        self.token = token
        self.policy = policy
        self.takeover = takeover
        self.recovery_point = recovery_point
        self._beat: AbstractContextManager[None] | None = None

    def __repr__(self) -> str:
        return f"<Held {self.scope!r}/{self.key!r} takeover={self.takeover}>"

    # -- the lease ---------------------------------------------------------------------------

    def extend(self, lease: float | None = None) -> float:
        """Renew the lease for ``lease`` seconds (default: the policy's); the new deadline, by
        the store's clock. Raises LeaseLostError if another execution took over."""
        return self.store.extend(
            self.scope, self.key, self.token, lease=self.policy.lease if lease is None else lease
        )

    def set_recovery_point(self, point: bytes) -> float:
        """Record the phase reached (fenced, renews the lease), so that a takeover after a
        crash resumes from it."""
        return self.store.set_recovery_point(
            self.scope, self.key, self.token, point, lease=self.policy.lease
        )

    def heartbeat(
        self,
        also: Callable[[], object] | None = None,
        *,
        interval: float | None = None,
    ) -> AbstractContextManager[None]:
        """Renew the lease every ``lease / 3`` seconds while the block runs (if the policy asks
        for it), so that a live operation longer than its lease is not taken over; only a
        crashed holder's claim runs out. ``also`` is called after each renewal (a broker's
        keepalive). A lost lease stops the beats; a failed renewal (a store blip) does not."""
        if not self.policy.heartbeat:
            return contextlib.nullcontext()
        every = self.policy.lease / 3 if interval is None else interval
        if also is None:
            return sync_periodic(self.extend, every, fatal=(LeaseLostError,))

        def beat() -> None:
            self.extend()
            also()

        return sync_periodic(beat, every, fatal=(LeaseLostError,))

    def start_heartbeat(self) -> None:
        """:meth:`heartbeat` for a block that is not one ``with`` statement (a response that
        streams after the handler returned): beats until :meth:`stop_heartbeat`."""
        if self._beat is None:
            self._beat = self.heartbeat()
            self._beat.__enter__()

    def stop_heartbeat(self) -> None:
        beat, self._beat = self._beat, None
        if beat is not None:
            beat.__exit__(None, None, None)

    # -- the end -----------------------------------------------------------------------------

    def complete(self, data: bytes) -> None:
        """Keep ``data`` (an outcome envelope) for the policy's TTL. Raises LeaseLostError when
        another execution took over (fencing) and StoreUnavailableError. Cancelled on its way,
        it is sent again in the background (the operation ran: its outcome must not be lost
        to a cancellation), and the cancellation goes on."""
        try:
            self.store.complete(self.scope, self.key, self.token, data, ttl=self.policy.ttl)
        except sync_interrupted:
            self._resend_complete(data)
            raise

    def release(self) -> None:
        """Free the key: the execution failed and its outcome is not kept. Cancelled on its
        way, it is sent again in the background (else a retry would meet "in progress" for a
        whole lease)."""
        try:
            self.store.release(self.scope, self.key, self.token)
        except sync_interrupted:
            self._resend_release()
            raise

    def _resend_complete(self, data: bytes) -> None:
        self._resend_later(
            lambda: self.store.complete(
                self.scope, self.key, self.token, data, ttl=self.policy.ttl
            ),
            "idempo: could not record the outcome of %r/%r after a cancellation; a retry after "
            "its lease runs out runs the operation again",
            logging.WARNING,
        )

    def _resend_release(self) -> None:
        self._resend_later(
            lambda: self.store.release(self.scope, self.key, self.token),
            "idempo: could not release %r/%r after a cancellation; it frees itself when its "
            "lease runs out",
        )

    def _resend_later(
        self, write: Callable[[], object], failed: str, level: int = logging.DEBUG
    ) -> None:
        lease, scope, key = self.policy.lease, self.scope, self.key
        sync_spawn(lambda: _resend(write, lease, failed, scope, key, level))

    def release_quietly(self) -> None:
        """:meth:`release` after the operation failed, logging instead of raising: the
        original error matters more, and the claim frees itself when its lease runs out."""
        self.report("failed")
        try:
            self.release()
        except Exception:
            log.warning(
                "idempo: could not release the claim of %r/%r; it frees itself when its lease "
                "runs out",
                self.scope,
                self.key,
                exc_info=True,
            )

    def expire(self) -> None:
        """End the lease now, keeping the record and its recovery point, so that a retry takes
        over at once (atomic phases after a failed phase). Best effort: logged, not raised."""
        self.report("failed")
        try:
            self.store.extend(self.scope, self.key, self.token, lease=0)
        except Exception:
            log.warning(
                "idempo: could not hand over %r/%r; its lease will run out", self.scope, self.key
            )

    def finish(self, value: Any, *, unstorable: Unstorable = "raise") -> Any:
        """Keep ``value`` as the outcome and return it.

        If it cannot be recorded (LeaseLostError: taken over; StoreUnavailableError), the error
        says the operation ran (``executed``) and carries the live ``value``, so nothing is
        lost. A value the serializer cannot keep is handled as ``unstorable`` says; one that is
        too large is kept as a not-stored marker (a retry is refused, never run again).
        """
        policy = self.policy
        encoded = outcomes.encode_result(policy.serializer, value, policy.max_outcome_bytes)
        if encoded.error is not None and unstorable == "raise_before_write":
            self.report("failed", encoded.error)
            raise encoded.error
        try:
            try:  # what complete() does, without its frame: this runs for every operation
                self.store.complete(
                    self.scope, self.key, self.token, encoded.data, ttl=policy.ttl
                )
            except sync_interrupted:
                self._resend_complete(encoded.data)
                raise
        except (LeaseLostError, StoreUnavailableError) as exc:
            exc.executed, exc.value = True, value
            self.report(_failure(exc), exc)
            raise
        self.report("executed")
        if encoded.error is not None:
            if unstorable == "raise":
                raise encoded.error
            log.warning("idempo: result of %r/%r not kept: %s", self.scope, self.key, encoded.error)
        elif not encoded.stored:
            log.warning("idempo: result of %r/%r not kept: too large", self.scope, self.key)
        return value

    def settle(self, outcome: Keep | Release) -> None:
        """Keep or release after the caller has already answered (HTTP): a store failure is
        logged, not raised, since there is nobody left to tell. A retry after the lease runs
        out may then run the handler again."""
        if self._beat is not None:
            self.stop_heartbeat()
        try:
            # What complete() and release() do, without their frames (every HTTP request).
            try:
                if isinstance(outcome, Keep):
                    self.store.complete(
                        self.scope, self.key, self.token, outcome.data, ttl=self.policy.ttl
                    )
                else:
                    self.store.release(self.scope, self.key, self.token)
            except sync_interrupted:
                if isinstance(outcome, Keep):
                    self._resend_complete(outcome.data)
                else:
                    self._resend_release()
                raise
        except (LeaseLostError, StoreUnavailableError) as exc:
            log.error("idempo: could not record the response of key %r: %s", self.key, exc)
            self.report(_failure(exc), exc)
            return
        self.report("executed" if isinstance(outcome, Keep) else "failed")

    def report(self, outcome: Outcome, error: BaseException | None = None) -> None:
        """Tell the observer how this execution ended (the methods above do it themselves)."""
        if self.observer is not None:
            self.observer.outcome(outcome, self.scope, self.key, error=error)


def _resend(
    write: Callable[[], object],
    lease: float,
    failed: str,
    scope: str,
    key: str,
    level: int = logging.DEBUG,
) -> None:
    """Send again, in the background, a write whose outcome is unknown: its reply was lost, or
    a cancellation cut it short. Every such write is fenced by the execution's token, so a
    second send of one that landed does nothing (a release finds no claim, a complete finds
    the record completed: LeaseLostError). A store that is still down is asked again, with
    backoff, until the lease would have run out anyway: a stalled server may run the queued
    write only once it resumes. Best effort: ``failed`` is logged at ``level`` if it never gets
    through."""
    delay = 0.25
    deadline = time.monotonic() + lease
    while True:
        try:
            write()
            return
        except LeaseLostError:
            return  # the first send landed, or another execution took over
        except StoreUnavailableError as exc:
            if time.monotonic() + delay >= deadline:
                error: Exception = exc
                break
            sync_sleep(delay)
            delay = min(delay * 2, 5.0)
        except Exception as exc:
            error = exc
            break
    log.log(level, failed, scope, key, exc_info=error)


def _failure(exc: BaseException) -> Outcome:
    return "lease_lost" if isinstance(exc, LeaseLostError) else "store_unavailable"


class Engine:
    """Runs operations at most once per (scope, key) at a time, and replays their results.

    With an ``observer`` (:mod:`idempo.observe`), every outcome is reported to it, and the
    store's round trips are measured when OpenTelemetry is installed."""

    __slots__ = ("_measuring", "_observed", "observer", "store")

    def __init__(self, store: Store, observer: Observer | None = None) -> None:
        # An observer with nothing to report to (no OpenTelemetry, no hooks) is dropped here,
        # so that it costs nothing at all.
        self.observer = observer if observer is not None and observer.active else None
        self.store = store
        # With opentelemetry-api installed, round trips are measured through the observed
        # wrapper, chosen per execution (at acquire) while an SDK records: without one, the
        # execution's calls go straight to the store, with no wrapper call in between.
        self._observed: ObservedStore | None = None
        self._measuring: Callable[[], bool] | None = None
        if observer is not None and observer.telemetry_installed:
            self._observed = ObservedStore(store, observer)
            self._measuring = self._observed.measuring

    def _store(self) -> Store:
        """The store one execution talks to: the observed wrapper while an SDK records."""
        if self._measuring is not None and self._measuring():
            assert self._observed is not None
            return self._observed
        return self.store

    def acquire(
        self, scope: str, key: str, fingerprint: str, policy: Policy
    ) -> Held | Replay | Reject:
        """Claim the key, waiting for an in-flight duplicate if the policy allows.

        Returns the decision, never raises it: Held (we hold the claim), Replay (the
        stored outcome), or Reject (KeyReuseError, InProgressError in ``error``). Store
        failures raise (StoreUnavailableError, StoreError).
        """
        token = urandom(16).hex()  # secrets.token_hex(16), two calls fewer on every claim
        store = self._store()
        # The clock matters only to a caller willing to wait for an in-flight duplicate.
        started = time.monotonic() if policy.wait else 0.0
        attempt = 0
        while True:
            try:
                result = store.claim(
                    scope, key, fingerprint, token, lease=policy.lease, ttl=policy.ttl
                )
            except StoreUnavailableError as exc:
                # What was lost may be the reply: the claim may be written, under our token.
                # Release it, or the key stays blocked for a whole lease with nothing running:
                # in the background, so that the caller hears of the failure within one timeout.
                sync_spawn(
                    lambda: self._release_unknown_claim(store, scope, key, token, policy.lease)
                )
                if self.observer is not None:
                    self.observer.outcome("store_unavailable", scope, key, error=exc)
                raise
            except sync_interrupted:
                # Cut short with the claim on its way (a task cancelled by its caller's timeout
                # or by a server; a thread is never cut short): as with a lost reply it may be
                # written, so it is released the same way, or a retry would get "in progress"
                # for a whole lease.
                sync_spawn(
                    lambda: self._release_unknown_claim(store, scope, key, token, policy.lease)
                )
                raise
            decision = decide(
                result,
                waited=time.monotonic() - started if policy.wait else 0.0,
                wait=policy.wait,
                attempt=attempt,
            )
            match decision:
                case Execute():
                    if decision.takeover:
                        log.warning("idempo: took over the expired claim of %r/%r", scope, key)
                        if self.observer is not None:
                            self.observer.takeover(scope, key)
                    return Held(
                        store,
                        scope,
                        key,
                        decision.token,
                        policy,
                        takeover=decision.takeover,
                        recovery_point=decision.recovery_point,
                        observer=self.observer,
                    )
                case Replay():
                    return decision
                case Reject():
                    if self.observer is not None:
                        refusal: Outcome = (
                            "in_progress"
                            if isinstance(decision.error, InProgressError)
                            else "mismatch"
                        )
                        self.observer.outcome(refusal, scope, key, error=decision.error)
                    return decision
                case Wait():
                    sync_sleep(decision.delay)
                    attempt += 1

    def _release_unknown_claim(
        self, store: Store, scope: str, key: str, token: str, lease: float
    ) -> None:
        """Best effort (see :func:`_resend`). A claim that was never written has nothing to
        release."""
        _resend(
            lambda: store.release(scope, key, token),
            lease,
            "idempo: could not release the unknown claim of %r/%r; it frees itself when its "
            "lease runs out",
            scope,
            key,
        )

    def run(
        self,
        call: Callable[[], Any],
        *,
        scope: str,
        key: str,
        fingerprint: str,
        policy: Policy,
    ) -> Any:
        """Run ``call`` once per (scope, key, fingerprint), or replay its first run's result.

        The one driver that wants exceptions: a refusal raises its error."""
        decision = self.acquire(scope, key, fingerprint, policy)
        if isinstance(decision, Replay):
            return self.replay(decision.outcome, scope=scope, key=key, policy=policy)
        if isinstance(decision, Reject):
            raise decision.error
        try:
            with decision.heartbeat():
                value = call()
        except BaseException:
            # A failure is not kept: free the key so that a retry runs the operation again.
            decision.release_quietly()
            raise
        return decision.finish(value)

    def replay(self, data: bytes, *, scope: str, key: str, policy: Policy) -> Any:
        """The value kept in ``data``; OutcomeNotStoredError if the first result was not kept."""
        try:
            value = outcomes.replayed(policy.serializer, data, scope=scope, key=key)
        except OutcomeNotStoredError as exc:
            if self.observer is not None:
                self.observer.outcome("not_stored", scope, key, error=exc)
            raise
        if self.observer is not None:
            self.observer.outcome("replayed", scope, key)
        return value

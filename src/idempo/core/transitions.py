"""The record state machine as pure functions: (record, inputs, now) -> (answer, new record).

Stores that run Python next to their data (memory, SQLite) apply these inside their one atomic
step; stores with a server-side language (Redis Lua, PostgreSQL SQL) implement the same table in
it. The table itself is documented in :mod:`idempo.stores.base`, and the conformance suite checks
that every store agrees with it.
"""

from __future__ import annotations

import enum

from idempo.core.records import ClaimResult, ClaimStatus, Record, State
from idempo.errors import LeaseLostError

__all__ = ["LostReason", "claim", "complete", "extend", "live", "public", "require_holder"]


class LostReason(enum.StrEnum):
    """Why a token no longer holds its claim: the one set of reasons every store reports.

    The values are the codes the server-side code answers with (the MariaDB procedure, the
    PostgreSQL statement, the Redis scripts), so a store maps its reply with ``LostReason(code)``.
    """

    GONE = "gone"  # no live record: released, deleted or expired
    COMPLETED = "completed"  # the record is completed: nothing is held any more
    TAKEN_OVER = "taken_over"  # another execution took the expired lease over

    def error(self) -> LeaseLostError:
        return LeaseLostError(_LOST_MESSAGES[self])


_LOST_MESSAGES = {
    LostReason.GONE: "the idempotency record is gone (released, deleted or expired)",
    LostReason.COMPLETED: "the idempotency record is already completed",
    LostReason.TAKEN_OVER: "the lease was taken over by another execution",
}


def live(record: Record | None, now: float) -> Record | None:
    """The record if it has not expired, else None (an expired record counts as absent)."""
    if record is None or record.expires_at <= now:
        return None
    return record


def public(record: Record | None, now: float) -> Record | None:
    """The live record as shown to anyone but its holder: without the fencing token."""
    record = live(record, now)
    return None if record is None else _without_token(record)


# Records are built with their constructor, field by field, rather than dataclasses.replace:
# these run on every claim and completion of the stores that decide in Python, and replace()
# costs twice the constructor (it inspects the fields on every call).


def _without_token(r: Record) -> Record:
    """``r`` as shown to anyone but its holder."""
    if r.token is None:
        return r
    return Record(
        r.scope,
        r.key,
        r.fingerprint,
        r.state,
        None,
        r.lease_until,
        r.outcome,
        r.created_at,
        r.expires_at,
        r.recovery_point,
    )


def claim(
    current: Record | None,
    *,
    scope: str,
    key: str,
    fingerprint: str,
    token: str,
    now: float,
    lease: float,
    ttl: float,
) -> tuple[ClaimResult, Record | None]:
    """Decide a claim. Returns the answer and the record to write (None: write nothing)."""
    current = live(current, now)
    if current is None:
        new = Record(
            scope=scope,
            key=key,
            fingerprint=fingerprint,
            state=State.IN_PROGRESS,
            token=token,
            lease_until=now + lease,
            outcome=None,
            created_at=now,
            expires_at=now + max(ttl, lease),
        )
        return ClaimResult(ClaimStatus.ACQUIRED, new, now), new
    # A different request under the same key is refused whatever state the first is in: taking
    # over a crashed holder's claim with another request would mix two operations' effects.
    # Only the holder ever sees its token: answers to anyone else carry none.
    if current.fingerprint != fingerprint:
        return ClaimResult(ClaimStatus.MISMATCH, _without_token(current), now), None
    if current.state is State.COMPLETED:
        return ClaimResult(ClaimStatus.COMPLETED, current, now), None
    assert current.lease_until is not None
    if current.lease_until > now:
        return ClaimResult(ClaimStatus.IN_PROGRESS, _without_token(current), now), None
    # The holder's lease ran out: it crashed or stalled. Take over with a fresh token, so that
    # the stale holder, should it wake up, can no longer complete (fencing). Keep the recovery
    # point: a multi-step operation resumes where the crashed holder left it.
    taken = Record(
        current.scope,
        current.key,
        current.fingerprint,
        current.state,
        token,
        now + lease,
        current.outcome,
        current.created_at,
        max(current.expires_at, now + lease),
        current.recovery_point,
    )
    return ClaimResult(ClaimStatus.ACQUIRED, taken, now, takeover=True), taken


def require_holder(current: Record | None, token: str, now: float) -> Record:
    """The live in_progress record whose current token is ``token``, or LeaseLostError."""
    current = live(current, now)
    if current is None:
        raise LostReason.GONE.error()
    if current.state is not State.IN_PROGRESS:
        raise LostReason.COMPLETED.error()
    if current.token != token:
        raise LostReason.TAKEN_OVER.error()
    return current


def complete(
    current: Record | None, *, token: str, outcome: bytes, now: float, ttl: float
) -> Record:
    """The completed record, or LeaseLostError if ``token`` does not hold the claim."""
    held = require_holder(current, token, now)
    return Record(
        held.scope,
        held.key,
        held.fingerprint,
        State.COMPLETED,
        None,
        None,
        outcome,
        held.created_at,
        now + ttl,
        held.recovery_point,
    )


def extend(
    current: Record | None,
    *,
    token: str,
    now: float,
    lease: float,
    recovery_point: bytes | None = None,
) -> Record:
    """The record with its lease moved to ``now + lease`` (and a new recovery point, if given)."""
    held = require_holder(current, token, now)
    lease_until = now + lease
    return Record(
        held.scope,
        held.key,
        held.fingerprint,
        held.state,
        held.token,
        lease_until,
        held.outcome,
        held.created_at,
        max(held.expires_at, lease_until),
        held.recovery_point if recovery_point is None else recovery_point,
    )

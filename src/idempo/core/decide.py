"""What to do with a claim's answer: the engine's decisions, free of I/O and clocks.

Every driver (the function decorator, sync or async, and the HTTP adapters) asks :func:`decide`
and does what it says, so the policy lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass

from idempo.core.records import ClaimResult, ClaimStatus
from idempo.errors import IdempoError, InProgressError, KeyReuseError

__all__ = ["Decision", "Execute", "Reject", "Replay", "Wait", "decide", "retry_after"]

# While waiting for an in-flight duplicate, poll no faster than this and no slower than that.
MIN_POLL = 0.01
MAX_POLL = 1.0


@dataclass(frozen=True, slots=True)
class Execute:
    """We hold the claim: run the operation, then complete (or release) with ``token``."""

    token: str
    takeover: bool
    recovery_point: bytes | None


@dataclass(frozen=True, slots=True)
class Replay:
    """Already done: return the stored outcome."""

    outcome: bytes


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse: raise (or, over HTTP, answer) ``error``."""

    error: IdempoError


@dataclass(frozen=True, slots=True)
class Wait:
    """An in-flight duplicate: claim again after ``delay`` seconds."""

    delay: float


Decision = Execute | Replay | Reject | Wait


def retry_after(result: ClaimResult) -> float:
    """Seconds until the holder's lease runs out, by the store's clock (at least a little)."""
    lease_until = result.record.lease_until
    if lease_until is None:
        return MIN_POLL
    return max(MIN_POLL, lease_until - result.now)


def decide(
    result: ClaimResult, *, waited: float = 0.0, wait: float = 0.0, attempt: int = 0
) -> Decision:
    """Decide on a claim's answer.

    ``wait`` is how long the caller is willing to wait for an in-flight duplicate in total,
    ``waited`` how long it has already waited, ``attempt`` how many times it has polled.
    """
    record = result.record
    status = result.status
    if status is ClaimStatus.ACQUIRED:
        return Execute(result.token, result.takeover, record.recovery_point)
    if status is ClaimStatus.COMPLETED:
        assert record.outcome is not None
        return Replay(record.outcome)
    if status is ClaimStatus.MISMATCH:
        return Reject(
            KeyReuseError(
                f"idempotency key {record.key!r} was already used for a different request",
                key=record.key,
                scope=record.scope,
            )
        )
    lease_left = retry_after(result)
    remaining = wait - waited
    if remaining > 0:
        # Back off exponentially from MIN_POLL, but never sleep past the holder's lease (a crashed
        # holder's claim can be taken over then) nor past our own deadline.
        backoff = min(MAX_POLL, MIN_POLL * 2**attempt)
        return Wait(max(0.0, min(backoff, lease_left, remaining)))
    return Reject(
        InProgressError(
            f"a call with idempotency key {record.key!r} is still in progress",
            key=record.key,
            scope=record.scope,
            retry_after=lease_left,
        )
    )

"""Records and claim results: the data every store speaks.

A store keeps one :class:`Record` per (scope, key). All times are seconds since the epoch as the
*store's* clock tells them (Redis ``TIME``, SQL ``now()``): clients' clocks are never compared with
each other. Outcomes are opaque bytes to the store; the engine owns their encoding.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["ClaimResult", "ClaimStatus", "Record", "State"]


class State(enum.StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


class ClaimStatus(enum.StrEnum):
    ACQUIRED = "acquired"  # the caller holds the lease (record.token) and must execute
    COMPLETED = "completed"  # already done: replay record.outcome
    IN_PROGRESS = "in_progress"  # another holder's lease is live
    MISMATCH = "mismatch"  # same key, different fingerprint


@dataclass(frozen=True, slots=True)
class Record:
    scope: str
    key: str
    fingerprint: str
    state: State
    token: str | None  # the fencing token: shown only to its holder (ACQUIRED), else None
    lease_until: float | None  # when the current lease runs out; None once completed
    outcome: bytes | None  # the encoded outcome once completed
    created_at: float
    expires_at: float  # after this the record counts as absent
    recovery_point: bytes | None = None  # last committed phase of a multi-step operation


@dataclass(frozen=True, slots=True)
class ClaimResult:
    status: ClaimStatus
    record: Record
    now: float  # the store's clock when it decided
    takeover: bool = False  # ACQUIRED by taking over an expired lease (a holder crashed)

    @property
    def token(self) -> str:
        """The fencing token of an acquired claim."""
        if self.status is not ClaimStatus.ACQUIRED or self.record.token is None:
            raise ValueError(f"a {self.status} claim holds no token")
        return self.record.token

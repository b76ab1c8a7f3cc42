"""The knobs of one idempotent operation, resolved: what the engine needs besides the store."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from idempo.core.outcome import JSONSerializer, Serializer

__all__ = ["DEFAULT_LEASE", "DEFAULT_MAX_OUTCOME_BYTES", "DEFAULT_TTL", "Policy"]

DEFAULT_TTL = 86400.0  # keep completed outcomes a day, like Stripe
DEFAULT_LEASE = 30.0
DEFAULT_MAX_OUTCOME_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Policy:
    ttl: float = DEFAULT_TTL  # how long a completed outcome is replayed
    lease: float = DEFAULT_LEASE  # how long one execution may hold the claim
    wait: float = 0.0  # how long a duplicate waits for an in-flight first call (0: refuse)
    serializer: Serializer = field(default_factory=JSONSerializer)
    max_outcome_bytes: int = DEFAULT_MAX_OUTCOME_BYTES  # larger results are not kept
    # Renew the lease every lease/3 while the operation runs: the lease then bounds how long a
    # *crashed* holder blocks its key, not how long a live operation may take.
    heartbeat: bool = True

    def __post_init__(self) -> None:
        for name in ("ttl", "lease", "wait"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number of seconds")
        if not self.ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, not {self.ttl!r}")
        if not self.lease > 0:
            raise ValueError(f"lease must be > 0 seconds, not {self.lease!r}")
        if not self.wait >= 0:
            raise ValueError(f"wait must be >= 0 seconds, not {self.wait!r}")
        if not self.max_outcome_bytes > 0:
            raise ValueError(f"max_outcome_bytes must be > 0, not {self.max_outcome_bytes!r}")

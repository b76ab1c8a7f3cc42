"""What a store under test cannot do, so that the suite's tests say so instead of failing."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Capabilities"]


@dataclass(frozen=True)
class Capabilities:
    """The capabilities the conformance suite reads from its ``capabilities`` fixture."""

    #: The server deletes expired records itself, so ``purge_expired`` has nothing to do (0).
    expires_natively: bool = False
    #: Time comes from the store's clock (False for an in-process store: the client's clock).
    server_clock: bool = True
    #: A scan lists each record once and a page never holds more than ``limit`` records, in
    #: (scope, key) order (False for Redis, whose SCAN promises none of it).
    scan_exact: bool = True

"""An operation for the `idempo recover --stalled` tests: two foreign phases on the store named
by IDEMPO_STALLED_STORE (its options as JSON in IDEMPO_STALLED_OPTIONS); while
IDEMPO_STALLED_FAIL=1 the second phase fails. RUNS counts each phase's runs in this process."""

from __future__ import annotations

import collections
import json
import os
from typing import Any

from idempo import Idempotency
from idempo.phases import Phase, PhaseContext

RUNS: collections.Counter[str] = collections.Counter()


def ship(key: str, *, scope: str = "") -> Any:
    options = json.loads(os.environ.get("IDEMPO_STALLED_OPTIONS", "{}"))
    idem = Idempotency(os.environ["IDEMPO_STALLED_STORE"], lease=30, store_options=options)

    def charge(ctx: PhaseContext) -> str:
        RUNS[f"charge {ctx.scope}/{ctx.key}"] += 1
        return "charged"

    def send(ctx: PhaseContext) -> str:
        RUNS[f"send {ctx.scope}/{ctx.key}"] += 1
        if os.environ.get("IDEMPO_STALLED_FAIL") == "1":
            raise RuntimeError("courier API down")
        return f"shipped {ctx.key}"

    try:
        return idem.run_phases([Phase("charge", charge), Phase("send", send)], key=key, scope=scope)
    finally:
        idem.close()


def ship_unscoped(key: str) -> Any:
    """The same operation for a function that takes no scope: it always runs in scope ''."""
    return ship(key)

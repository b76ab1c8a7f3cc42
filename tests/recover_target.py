"""An operation for the `idempo recover` test: two phases over a SQLite file named by the
IDEMPO_RECOVER_DB environment variable; the first attempt can be made to fail in phase two."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from idempo import Idempotency
from idempo.phases import Phase, PhaseContext


def place_order(key: str) -> Any:
    path = os.environ["IDEMPO_RECOVER_DB"]
    idem = Idempotency(f"sqlite:///{path}", lease=30)
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)

    def reserve(ctx: PhaseContext) -> str:
        ctx.conn.execute("INSERT INTO log VALUES (?, 'reserve')", (ctx.key,))
        return "reserved"

    def ship(ctx: PhaseContext) -> str:
        if os.environ.get("IDEMPO_RECOVER_FAIL") == "1":
            raise RuntimeError("courier API down")
        ctx.conn.execute("INSERT INTO log VALUES (?, 'ship')", (ctx.key,))
        return "shipped"

    try:
        return idem.run_phases(
            [Phase("reserve", reserve, local=True), Phase("ship", ship, local=True)],
            key=key,
            conn=conn,
        )
    finally:
        conn.close()
        idem.close()

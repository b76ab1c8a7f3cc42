"""A worker for the atomic-phases crash tests: charge with a foreign provider, then record the
order locally, under one idempotency key; SIGKILL itself at a chosen point.

    python -m tests.phases_worker STORE_URL STORE_OPTIONS_JSON DB_KIND DB_URL PROVIDER KEY CRASH

CRASH: none, after_foreign_call (charged, no recovery point yet), after_charge_point (the
recovery point is stored), mid_local (order row written, not committed), after_local (committed,
the operation not completed).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
import urllib.request
from typing import Any

from idempo import Idempotency
from idempo.phases import Phase, PhaseContext


def main(
    store_url: str, options: str, db_kind: str, db_url: str, provider: str, key: str, crash: str
) -> None:
    def crash_if(here: str) -> None:
        if crash == here:
            os.kill(os.getpid(), signal.SIGKILL)

    def charge(ctx: PhaseContext) -> Any:
        request = urllib.request.Request(
            f"{provider}/charge",
            data=b"{}",
            method="POST",
            headers={"Idempotency-Key": ctx.foreign_key("charge")},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            result = json.loads(response.read())
        crash_if("after_foreign_call")
        return result

    def record(ctx: PhaseContext) -> Any:
        crash_if("after_charge_point")
        charge_id = ctx.results["charge"]["charge_id"]
        placeholder = "?" if db_kind == "sqlite" else "%s"
        sql = f"INSERT INTO orders (order_id, charge_id) VALUES ({placeholder}, {placeholder})"
        if db_kind == "mysql":
            ctx.conn.cursor().execute(sql, (ctx.key, charge_id))
        else:
            ctx.conn.execute(sql, (ctx.key, charge_id))
        crash_if("mid_local")
        return {"order": ctx.key, "charge_id": charge_id}

    idem = Idempotency(store_url, store_options=json.loads(options), lease=1, wait=10)
    if db_kind == "sqlite":
        conn: Any = sqlite3.connect(
            db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=10
        )
    elif db_kind == "mysql":
        import pymysql

        from idempo.stores.mysql import connect_kwargs

        conn = pymysql.connect(
            **connect_kwargs(db_url),
            autocommit=False,
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )
    else:
        import psycopg

        conn = psycopg.connect(db_url)
    phases = [Phase("charge", charge), Phase("record", record, local=True)]

    original_complete = idem.store.complete

    def complete(*args: Any, **kwargs: Any) -> None:
        crash_if("after_local")
        original_complete(*args, **kwargs)

    idem.store.complete = complete  # type: ignore[method-assign]
    result = idem.run_phases(phases, key=key, fingerprint={"amount": 100}, conn=conn)
    conn.close()
    idem.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])

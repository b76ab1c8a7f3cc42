"""A worker process for the crash tests: charge one order in transactional mode, and kill itself
with SIGKILL at a chosen point.

    python -m tests.transactional_worker KIND DB_URL STORE_OPTIONS_JSON KEY CRASH_POINT

KIND is sqlite, postgres, postgres-sqlalchemy or mysql. CRASH_POINT is one of: none, after_claim,
after_effect (before the commit), after_commit (before the reply is printed). On success it
prints one JSON line: {"replayed": bool, "result": ...}.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

from idempo import Idempotency


def crash_if(point: str, here: str) -> None:
    if point == here:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def charge(
    idem: Idempotency, conn: Any, key: str, crash: str, insert: Callable[[], object]
) -> dict[str, Any]:
    """The charge of ``key`` in ``conn``'s transaction (``insert`` writes it); not committed."""
    with idem.transaction(conn, key=key, fingerprint={"amount": 10}) as tx:
        crash_if(crash, "after_claim")
        if tx.replayed:
            return {"replayed": True, "result": tx.result}
        insert()
        crash_if(crash, "after_effect")
        tx.result = {"order": key, "charged": 10}
    return {"replayed": False, "result": tx.result}


def main(kind: str, url: str, options_json: str, key: str, crash: str) -> None:
    options = json.loads(options_json)
    idem = Idempotency(url, store_options=options)
    if kind == "sqlite":
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None, timeout=10)
        sql = "INSERT INTO charges (order_id, amount) VALUES (?, ?)"
        out = charge(idem, conn, key, crash, lambda: conn.execute(sql, (key, 10)))
        conn.execute("COMMIT")
        conn.close()
    elif kind == "postgres":
        import psycopg

        with psycopg.connect(url) as pconn:
            sql = f'INSERT INTO "{options["schema"]}".charges (order_id, amount) VALUES (%s, %s)'
            out = charge(idem, pconn, key, crash, lambda: pconn.execute(sql, (key, 10)))
            pconn.commit()
    elif kind == "mysql":
        import pymysql

        from idempo.stores.mysql import connect_kwargs

        mconn = pymysql.connect(
            **connect_kwargs(url),
            autocommit=False,
            init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        )
        sql = f"INSERT INTO `{options['table']}_charges` (order_id, amount) VALUES (%s, 10)"
        out = charge(idem, mconn, key, crash, lambda: mconn.cursor().execute(sql, (key,)))
        mconn.commit()
        mconn.close()
    elif kind == "postgres-sqlalchemy":
        import sqlalchemy as sa
        from sqlalchemy.orm import Session

        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        statement = sa.text(
            f'INSERT INTO "{options["schema"]}".charges (order_id, amount) VALUES (:k, 10)'
        )
        with Session(engine) as session:
            out = charge(idem, session, key, crash, lambda: session.execute(statement, {"k": key}))
            session.commit()
        engine.dispose()
    else:
        raise SystemExit(f"unknown kind {kind}")
    crash_if(crash, "after_commit")
    idem.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])

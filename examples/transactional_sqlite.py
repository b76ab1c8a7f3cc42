"""Transactional mode: the idempotency record commits with the effect, in one transaction.

python examples/transactional_sqlite.py
"""

import sqlite3
import tempfile
from pathlib import Path

from idempo import Idempotency

with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "app.db"  # one database for the effect and the record
    idem = Idempotency(f"sqlite:///{path}")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE charges (order_id TEXT, amount INTEGER)")

    def charge(order_id: str, amount: int) -> dict:
        with idem.transaction(conn, key=order_id, fingerprint={"amount": amount}) as tx:
            if tx.replayed:
                return tx.result  # committed before: nothing runs
            conn.execute("INSERT INTO charges VALUES (?, ?)", (order_id, amount))
            tx.result = {"order": order_id, "charged": amount}
        conn.execute("COMMIT")  # the effect and the record, together; idempo never commits
        return tx.result

    print(charge("order-1", 10))
    print(charge("order-1", 10))
    print("rows:", conn.execute("SELECT count(*) FROM charges").fetchone()[0])
    conn.close()
    idem.close()

"""Atomic phases: a foreign call (a payment provider), then a local write, resumable.

python examples/phases_sqlite.py
"""

import sqlite3
import tempfile
from pathlib import Path

from idempo import Idempotency
from idempo.phases import Phase, PhaseContext

provider_charges: dict[str, str] = {}  # stands in for the provider, which dedupes by key


def provider_charge(amount: int, idempotency_key: str) -> str:
    return provider_charges.setdefault(idempotency_key, f"ch_{len(provider_charges) + 1}")


with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "app.db"
    idem = Idempotency(f"sqlite:///{path}")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE orders (order_id TEXT, charge_id TEXT)")
    attempts = {"n": 0}

    def charge(ctx: PhaseContext) -> str:
        return provider_charge(100, idempotency_key=ctx.foreign_key("charge"))

    def record(ctx: PhaseContext) -> dict:
        attempts["n"] += 1
        if attempts["n"] == 1:
            raise ConnectionError("database hiccup after the charge")  # a crash, in effect
        ctx.conn.execute("INSERT INTO orders VALUES (?, ?)", (ctx.key, ctx.results["charge"]))
        return {"order": ctx.key, "charge": ctx.results["charge"]}

    phases = [Phase("charge", charge), Phase("record", record, local=True)]
    try:
        idem.run_phases(phases, key="order-1", conn=conn)
    except ConnectionError as exc:
        print("first attempt failed:", exc)
    print(idem.run_phases(phases, key="order-1", conn=conn))  # resumes at "record"
    print("provider charges:", len(provider_charges))
    print("orders:", conn.execute("SELECT count(*) FROM orders").fetchone()[0])
    conn.close()
    idem.close()

"""Standalone mode: make a function idempotent with the embedded SQLite store.

python examples/decorator.py
"""

import tempfile
from pathlib import Path

from idempo import Idempotency
from idempo.errors import KeyReuseError

with tempfile.TemporaryDirectory() as tmp:
    idem = Idempotency(f"sqlite:///{Path(tmp) / 'idempo.db'}", ttl=86400, lease=30)
    charges = []

    @idem.idempotent(key=lambda order_id, amount: order_id)
    def charge(order_id: str, amount: int) -> dict:
        charges.append(amount)  # the effect
        return {"order": order_id, "charged": amount}

    print(charge("order-1", 10))  # runs
    print(charge("order-1", 10))  # replayed: the effect does not run again
    try:
        charge("order-1", 99)
    except KeyReuseError as exc:
        print("refused:", exc)
    print("effects:", len(charges))
    idem.close()

"""idempo: make operations safe to retry.

Example::

    from idempo import Idempotency
    idem = Idempotency(store="sqlite:///idempo.db", ttl=86400, lease=30)

    @idem.idempotent(key=lambda order_id, amount: order_id)
    def charge(order_id: str, amount: int) -> dict: ...
"""

from idempo.core.outcome import JSONSerializer, PickleSerializer, Serializer
from idempo.idempotency import Idempotency
from idempo.stores import open_async_store, open_store

__all__ = [
    "Idempotency",
    "JSONSerializer",
    "PickleSerializer",
    "Serializer",
    "__version__",
    "open_async_store",
    "open_store",
]

__version__ = "0.1.0"

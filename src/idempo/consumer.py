"""The consumer's former home: ``from idempo.consumer import Consumer`` keeps working.

The code lives in :mod:`idempo.consumers` (``Consumer`` and the broker adapters).
"""

from idempo.consumers import (
    Claim,
    Consumer,
    ConsumerOptions,
    Delivery,
    Handler,
    Result,
    Status,
    Transaction,
    backoff,
)

__all__ = [
    "Claim",
    "Consumer",
    "ConsumerOptions",
    "Delivery",
    "Handler",
    "Result",
    "Status",
    "Transaction",
    "backoff",
]

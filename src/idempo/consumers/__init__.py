"""Exactly-once message consumers: :class:`Consumer`, and its broker adapters.

==============================================  ===================  ==========================
adapter                                         install              default message id
==============================================  ===================  ==========================
:class:`~.rabbitmq.RabbitMQConsumer` (aio-pika)  ``idempo[rabbitmq]``  AMQP ``message_id``
:class:`~.nats.JetStreamConsumer` (nats-py)      ``idempo[nats]``      ``Nats-Msg-Id``, else
                                                                     ``stream:sequence``
:class:`~.redis_streams.RedisStreamConsumer`     ``idempo[redis]``     the entry id
:class:`~.kafka.KafkaConsumer` (aiokafka)        ``idempo[kafka]``     ``topic/partition/offset``
==============================================  ===================  ==========================

Each lives in its own module and is imported only when asked for (``import idempo`` imports no
broker client); a missing client raises ImportError naming the extra to install. See
``docs/consumers.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from idempo.consumers._consumer import (
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

if TYPE_CHECKING:
    from idempo.consumers.kafka import KafkaConsumer
    from idempo.consumers.nats import JetStreamConsumer
    from idempo.consumers.rabbitmq import RabbitMQConsumer
    from idempo.consumers.redis_streams import RedisStreamConsumer, StreamEntry

__all__ = [
    "Claim",
    "Consumer",
    "ConsumerOptions",
    "Delivery",
    "Handler",
    "JetStreamConsumer",
    "KafkaConsumer",
    "RabbitMQConsumer",
    "RedisStreamConsumer",
    "Result",
    "Status",
    "StreamEntry",
    "Transaction",
    "backoff",
]

_LAZY = {
    "RabbitMQConsumer": "idempo.consumers.rabbitmq",
    "JetStreamConsumer": "idempo.consumers.nats",
    "RedisStreamConsumer": "idempo.consumers.redis_streams",
    "StreamEntry": "idempo.consumers.redis_streams",
    "KafkaConsumer": "idempo.consumers.kafka",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

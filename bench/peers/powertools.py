"""aws-lambda-powertools: ``idempotent_function`` with ``RedisCachePersistenceLayer``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

DIST = "aws-lambda-powertools"
HTTP = False


def function(kind: str, store: str, url: str, prefix: str, body: Callable[..., Any]) -> Any:
    if kind != "sync" or store != "redis":
        return None  # its decorator is sync and its cache layer is Redis (or DynamoDB)
    import redis
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
    from aws_lambda_powertools.utilities.idempotency.persistence.redis import (
        RedisCachePersistenceLayer,
    )

    # Outside Lambda it warns on every call that it has no context to read the time left from.
    warnings.filterwarnings("ignore", message="Couldn't determine the remaining time left")
    layer = RedisCachePersistenceLayer(client=redis.Redis.from_url(url))
    # Defaults otherwise: no local cache (use_local_cache=False), one hour expiry.
    wrapped = idempotent_function(
        data_keyword_argument="order_id",
        persistence_store=layer,
        config=IdempotencyConfig(),
        key_prefix=prefix + "powertools",
    )(body)
    return lambda order_id: wrapped(order_id=order_id)


def http(endpoint: Any, store: str, url: str, prefix: str) -> Any:
    return None  # Lambda handlers only

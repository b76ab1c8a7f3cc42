"""justonce: the ``idempotent`` decorator with ``PostgresStore`` (sync, PostgreSQL only here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

DIST = "justonce"
HTTP = False


def function(kind: str, store: str, url: str, prefix: str, body: Callable[..., Any]) -> Any:
    if kind != "sync" or store != "postgres":
        return None
    from justonce import Idempotent, idempotent
    from justonce.stores.postgres import PostgresStore

    engine = Idempotent(PostgresStore(url))
    return idempotent(key=lambda order_id: order_id, engine=engine)(body)


def http(endpoint: Any, store: str, url: str, prefix: str) -> Any:
    return None  # no HTTP surface

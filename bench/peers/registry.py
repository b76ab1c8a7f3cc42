"""The adapters bench_peers.py runs, in table order (idempo first)."""

from __future__ import annotations

import importlib
from types import ModuleType

#: idempo with its opt-in replay cache: shown beside idempo's defaults, never counted as a peer.
CACHED = "idempo, replay_cache=2"

ADAPTERS = {
    "idempo": "idempo_adapter",
    CACHED: "idempo_cached_adapter",
    "aws-lambda-powertools": "powertools",
    "asgi-idempotency-header": "asgi_idempotency_header",
    "fastapi-idempotency-key": "fastapi_idempotency_key",
    "fastidempotent": "fastidempotent",
    "idemkit": "idemkit_adapter",
    "pyidempotent": "pyidempotent",
    "idempotency-kit": "idempotency_kit",
    "justonce": "justonce_adapter",
}


def load(name: str) -> ModuleType | str:
    """The adapter module, or why it cannot be imported (the peer is missing or broken)."""
    try:
        return importlib.import_module(f"peers.{ADAPTERS[name]}")
    except Exception as exc:  # reported in the table, not hidden
        return f"{type(exc).__name__}: {exc}"

"""The public surface, locked: each public module's ``__all__``, the import paths users write
(DESIGN §7), and ``import idempo`` with none of the optional extras installed.

A change here is a change to the public API: update the lock deliberately, with a changelog
entry, never to make a refactor pass.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PUBLIC_ALL: dict[str, list[str]] = {
    "idempo": [
        "Idempotency",
        "JSONSerializer",
        "PickleSerializer",
        "Serializer",
        "__version__",
        "open_async_store",
        "open_store",
    ],
    "idempo.errors": [
        "FingerprintError",
        "IdempoError",
        "InProgressError",
        "IncompleteBodyError",
        "InvalidKeyError",
        "KeyReuseError",
        "LeaseLostError",
        "MissingKeyError",
        "OutcomeNotStoredError",
        "RequestTooLargeError",
        "SerializationError",
        "StoreError",
        "StoreUnavailableError",
        "VersionConflictError",
    ],
    "idempo.client": [
        "AsyncClient",
        "Client",
        "DEFAULT_KEY_METHODS",
        "DEFAULT_RETRY_STATUSES",
        "IDEMPOTENT_METHODS",
        "RETRY_ERRORS",
        "RetryInfo",
        "encode_key",
        "retry_info",
        "was_replayed",
    ],
    "idempo.asgi": ["HttpOptions", "IdempotencyMiddleware", "Route"],
    "idempo.celery": ["IdempotentTask", "ResultSerializer"],
    "idempo.wsgi": ["HttpOptions", "IdempotencyMiddleware", "Route"],
    "idempo.stores": ["AsyncStore", "Store", "open_async_store", "open_pair", "open_store"],
    "idempo.consumers": [
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
    ],
    "idempo.serializers": [
        "DataclassSerializer",
        "MsgspecSerializer",
        "PydanticSerializer",
        "TypedSerializer",
        "serializer_for",
    ],
    "idempo.testing.helpers": [
        "assert_endpoint_idempotent",
        "assert_endpoint_idempotent_async",
        "assert_endpoint_idempotent_concurrently",
        "assert_endpoint_idempotent_concurrently_async",
        "assert_endpoint_rejects_reuse",
        "assert_endpoint_rejects_reuse_async",
        "assert_idempotent",
        "assert_idempotent_async",
        "assert_idempotent_concurrently",
        "assert_idempotent_concurrently_async",
        "assert_rejects_reuse",
        "assert_rejects_reuse_async",
    ],
    "idempo.testing": [
        "AsyncServerStoreConformance",
        "AsyncStoreConformance",
        "Capabilities",
        "ServerStoreConformance",
        "StoreConformance",
    ],
}

# The optional extras (and what they pull in): `import idempo` must need none of them.
EXTRAS = [
    "redis",
    "psycopg",
    "psycopg_pool",
    "pymysql",
    "aiomysql",
    "httpx",
    "stamina",
    "starlette",
    "django",
    "sqlalchemy",
    "aio_pika",
    "nats",
    "uvicorn",
    "rich",
    "fastapi",
    "celery",
    "kombu",
]

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("module", sorted(PUBLIC_ALL))
def test_all_is_locked(module: str) -> None:
    """Each public module exports exactly the locked names, and every one of them exists."""
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC_ALL[module])
    assert len(set(mod.__all__)) == len(mod.__all__)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []


def test_design_import_paths() -> None:
    """The import lines of DESIGN §7 (for the modules that exist) keep working."""
    from idempo import Idempotency, open_async_store, open_store
    from idempo.asgi import IdempotencyMiddleware as AsgiMiddleware
    from idempo.celery import IdempotentTask
    from idempo.client import AsyncClient, Client
    from idempo.consumers.rabbitmq import RabbitMQConsumer
    from idempo.errors import (
        IdempoError,
        InProgressError,
        InvalidKeyError,
        KeyReuseError,
        LeaseLostError,
        StoreUnavailableError,
    )
    from idempo.phases import Phase
    from idempo.wsgi import IdempotencyMiddleware as WsgiMiddleware

    assert callable(open_store)
    assert callable(open_async_store)
    for cls in (Idempotency, AsgiMiddleware, WsgiMiddleware, Client, AsyncClient, Phase):
        assert isinstance(cls, type)
    assert isinstance(RabbitMQConsumer, type)
    assert isinstance(IdempotentTask, type)
    for error in (InProgressError, InvalidKeyError, KeyReuseError, LeaseLostError):
        assert issubclass(error, IdempoError)
    assert issubclass(StoreUnavailableError, IdempoError)


NO_EXTRAS = """
import asyncio
import sys
from importlib.abc import MetaPathFinder

EXTRAS = set(sys.argv[1].split(","))


class RefuseExtras(MetaPathFinder):
    # Refusing at the finder is what a machine without the extra sees: ModuleNotFoundError.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in EXTRAS:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
        return None


assert not EXTRAS & set(sys.modules), sorted(EXTRAS & set(sys.modules))
sys.meta_path.insert(0, RefuseExtras())

import idempo

for url in ("memory://", "sqlite:///" + sys.argv[2]):
    idem = idempo.Idempotency(url)
    runs = []

    @idem.idempotent(key=lambda order_id, amount: order_id)
    def charge(order_id, amount):
        runs.append(order_id)
        return {"order": order_id, "amount": amount}

    @idem.idempotent(key=lambda order_id: order_id)
    async def refund(order_id):
        runs.append("refund " + order_id)
        return order_id

    assert charge("o-1", 10) == {"order": "o-1", "amount": 10}
    assert charge("o-1", 10) == {"order": "o-1", "amount": 10}
    assert asyncio.run(refund("o-1")) == "o-1"
    assert asyncio.run(refund("o-1")) == "o-1"
    assert runs == ["o-1", "refund o-1"], (url, runs)
    asyncio.run(idem.aclose())
    idem.close()

assert not EXTRAS & set(sys.modules), sorted(EXTRAS & set(sys.modules))
print("ok")
"""


def test_import_idempo_without_any_extra(tmp_path: Path) -> None:
    """With every optional extra refused at import, ``import idempo`` works, and so does the
    decorator (def and async def) on the memory and SQLite stores."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(NO_EXTRAS),
            ",".join(EXTRAS),
            str(tmp_path / "idempo.db"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


def test_the_finder_does_refuse_extras() -> None:
    """The refusing finder is real: asking it for an extra fails as a missing package would."""
    code = NO_EXTRAS.split("import idempo", 1)[0] + "import httpx\n"
    done = subprocess.run(
        [sys.executable, "-c", code, ",".join(EXTRAS), "unused"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "ModuleNotFoundError: No module named 'httpx' (hidden)" in done.stderr

"""The PostgreSQL store: ``postgresql://user@host:port/dbname`` (or ``postgres://``).

:class:`PostgresStore` (sync) and :class:`AsyncPostgresStore` (async) keep one row per
(scope, key) in ``<schema>.<table>`` (default ``public.idempo_records``) and decide claims in a
plpgsql function installed next to it; every operation is one statement. Needs psycopg 3 and
psycopg-pool: ``pip install 'idempo[postgres]'``.

URL options (``open_store(url, schema=..., table=..., max_size=...)``) go to ``from_url``::

    store = open_store("postgresql://app@db/app", schema="idempo", auto_migrate=False)
    store.migrate()  # at deploy time, with a role that may create objects

:func:`migration_sql` returns the same DDL as a script, for migration tools.
"""

from __future__ import annotations

from typing import Any

try:
    import psycopg  # noqa: F401 - imported to fail early with a clear message
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the PostgreSQL store needs psycopg 3 and psycopg-pool: "
        f"pip install 'idempo[postgres]' ({exc})"
    ) from exc

from idempo.stores._async.postgres import AsyncPostgresStore
from idempo.stores._postgres_sql import SCHEMA_VERSION, migration_sql
from idempo.stores._sync.postgres import PostgresStore

__all__ = [
    "SCHEMA_VERSION",
    "AsyncPostgresStore",
    "PostgresStore",
    "migration_sql",
    "open_async",
    "open_sync",
]


def open_sync(url: str, **options: Any) -> PostgresStore:
    """``postgresql://...``: a store owning a connection pool; ``options`` go to ``from_url``."""
    return PostgresStore.from_url(url, **options)


def open_async(url: str, **options: Any) -> AsyncPostgresStore:
    """The async twin of :func:`open_sync`; its pool opens on first use, in the event loop."""
    return AsyncPostgresStore.from_url(url, **options)

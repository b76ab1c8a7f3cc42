"""The PostgreSQL store: ``postgresql://user@host:port/dbname`` (or ``postgres://``).

:class:`PostgresStore` (sync) and :class:`AsyncPostgresStore` (async) keep one row per
(scope, key) in ``<schema>.<table>`` (default ``public.idempo_records``) and decide claims in a
plpgsql function installed next to it; every operation is one statement. Needs psycopg 3 and
psycopg-pool: ``pip install 'idempo[postgres]'``.

Options (``open_store(url, schema=..., table=..., max_size=...)``) go to ``from_url``, and may
ride in the URL's query instead, next to libpq's own parameters (``sslmode``,
``application_name``...), which libpq reads::

    store = open_store("postgresql://app@db/app", schema="idempo", auto_migrate=False)
    store = open_store("postgresql://app@db/app?schema=idempo&auto_migrate=false&timeout=2")
    store.migrate()  # at deploy time, with a role that may create objects

:func:`migration_sql` returns the same DDL as a script, for migration tools.
"""

from __future__ import annotations

from typing import Any

try:
    import psycopg
    import psycopg_pool  # noqa: F401 - imported to fail early with a clear message
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the PostgreSQL store needs psycopg 3 and psycopg-pool: "
        f"pip install 'idempo[postgres]' ({exc})"
    ) from exc

from idempo.stores._async.postgres import AsyncPostgresStore
from idempo.stores._postgres_sql import SCHEMA_VERSION, migration_sql
from idempo.stores._sync.postgres import PostgresStore
from idempo.stores._url import UrlOptions, boolean, integer, number, optional, text

__all__ = [
    "SCHEMA_VERSION",
    "URL_OPTIONS",
    "AsyncPostgresStore",
    "PostgresStore",
    "migration_sql",
    "open_async",
    "open_sync",
]

# What postgresql://...?... may carry (see idempo.stores._url): from_url's options, and libpq's
# connection parameters, left in the URL for libpq.
URL_OPTIONS = UrlOptions(
    {
        "schema": text,
        "table": text,
        "min_size": integer,
        "max_size": integer,
        "auto_migrate": boolean,
        "timeout": number,
        "pool_timeout": number,
        "prepare_threshold": optional(integer),
    },
    driver=frozenset(o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults()),
    driver_name="libpq",
)


def open_sync(url: str, **options: Any) -> PostgresStore:
    """``postgresql://...``: a store owning a connection pool; ``options`` go to ``from_url``."""
    return PostgresStore.from_url(url, **options)


def open_async(url: str, **options: Any) -> AsyncPostgresStore:
    """The async twin of :func:`open_sync`; its pool opens on first use, in the event loop."""
    return AsyncPostgresStore.from_url(url, **options)

"""The MariaDB store: ``mysql://user:password@host:port/database``.

:class:`MySQLStore` (sync, on PyMySQL) and :class:`AsyncMySQLStore` (async) keep one row per
(scope, key) in a table of the URL's database (default ``idempo_records``). Needs MariaDB 10.5
or later (``DELETE ... RETURNING``; tested on 10.11) with InnoDB, and PyMySQL:
``pip install 'idempo[mysql]'``. MySQL proper is not supported (it lacks ``DELETE ...
RETURNING`` and the ``ascii_nopad_bin`` collation).

Every contract operation is one statement sent in one round trip, atomic on its own:

* ``claim``, ``complete``/``extend``/``set_recovery_point`` and ``purge_expired`` are one
  ``CALL`` each of a stored procedure that :meth:`MySQLStore.migrate` installs next to the table
  (``<table>_claim``, ``<table>_hold``, ``<table>_purge``). A claim must read the record, decide
  and maybe write it: MariaDB has no ``UPDATE ... RETURNING`` nor a way to read a row and write
  it in one statement, so the procedure runs the three steps as one transaction on the server.
  A ``CALL`` answers with its result set and a final status packet; the client reads both from
  the one reply (``cursor.nextset()``), without another request.
* ``get`` is one ``SELECT``; ``release`` and ``delete`` one ``DELETE`` (``RETURNING`` tells
  ``delete`` whether the removed record was live).

Time is the server's clock, as float epoch seconds stored in ``DOUBLE`` columns (no time zone
in the data). ``UNIX_TIMESTAMP(datetime)`` reads its argument in the session time zone, which
with daylight saving time names some instants twice, so the store's connections run with
``time_zone = '+00:00'`` and the procedures refuse any other. Inside procedures the clock is
``SYSDATE(6)``, read once per decision after the row lock is taken; single statements use
``NOW(6)``, fixed for the statement (see ``_CLAIM`` and ``_GET`` in ``_sql``).

Async design: :class:`AsyncMySQLStore` is ``SyncStoreAsAsync(MySQLStore(...), offload=True)``:
each operation runs in a worker thread of the event loop's default executor. Chosen over
aiomysql because it keeps one implementation of everything that can be wrong (the SQL, the
pool, the error translation, the draining of CALL replies) and one driver to depend on
(aiomysql is a fork of PyMySQL's protocol code on asyncio, with its own pool and release
cycle). The cost: a thread hop per operation (tens of microseconds next to a network round
trip); concurrency bounded by the executor's threads (and by ``max_size`` anyway); and a
cancelled task does not stop its operation, which finishes in its thread (a claim it made holds
the key until its lease runs out, as with a claim whose reply was lost).

The package: ``_sql`` (the DDL, procedures and statements), ``_errors`` (driver errors),
``_pool`` (connections), ``_store`` (:class:`MySQLStore`, :class:`AsyncMySQLStore`) and
``_bound`` (:class:`BoundMySQLStore`, transactional mode).
"""

from __future__ import annotations

from typing import Any

try:
    import pymysql  # type: ignore[import-untyped]
    import pymysql.cursors  # type: ignore[import-untyped]  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the MariaDB store needs PyMySQL: pip install 'idempo[mysql]' ({exc})"
    ) from exc

from idempo.stores._rows import RECORD_FORMAT
from idempo.stores._url import UrlOptions, boolean, integer, number, text
from idempo.stores.mysql._bound import BoundMySQLStore
from idempo.stores.mysql._pool import connect_kwargs
from idempo.stores.mysql._sql import SCHEMA_VERSION
from idempo.stores.mysql._store import AsyncMySQLStore, MySQLStore

__all__ = [
    "RECORD_FORMAT",
    "SCHEMA_VERSION",
    "URL_OPTIONS",
    "AsyncMySQLStore",
    "BoundMySQLStore",
    "MySQLStore",
    "connect_kwargs",
    "open_async",
    "open_pair",
    "open_sync",
]

# What mysql://...?... may carry (see idempo.stores._url): MySQLStore's options and the PyMySQL
# connection arguments a deployment sets (the URL itself is parsed by connect_kwargs).
URL_OPTIONS = UrlOptions(
    {
        "table": text,
        "max_size": integer,
        "timeout": number,
        "pool_timeout": number,
        "max_idle": number,
        "auto_migrate": boolean,
        "migrate_lock_timeout": number,
        "connect_timeout": number,
        "read_timeout": number,
        "write_timeout": number,
        "charset": text,
        "unix_socket": text,
        "ssl_ca": text,
        "ssl_cert": text,
        "ssl_key": text,
        "ssl_verify_cert": boolean,
        "ssl_verify_identity": boolean,
    }
)


def open_sync(url: str, **options: Any) -> MySQLStore:
    """``mysql://user:password@host:port/database``; ``options`` go to :class:`MySQLStore`."""
    return MySQLStore.from_url(url, **options)


def open_async(url: str, **options: Any) -> AsyncMySQLStore:
    """The async twin of :func:`open_sync` (operations run in worker threads)."""
    return AsyncMySQLStore.from_url(url, **options)


def open_pair(url: str, **options: Any) -> tuple[MySQLStore, AsyncMySQLStore]:
    """Both kinds over one :class:`MySQLStore`, so over one connection pool."""
    store = MySQLStore.from_url(url, **options)
    return store, AsyncMySQLStore(store)

"""Stores, opened by URL.

=========================================  =============================================
URL                                        store
=========================================  =============================================
``memory://``                              :class:`~idempo.stores.memory.MemoryStore`
``sqlite:///path.db``, ``sqlite://:memory:``  :class:`~idempo.stores.sqlite.SQLiteStore`
``redis://host:port/db``, ``rediss://``      :class:`~idempo.stores.redis.RedisStore`
``postgresql://user@host/db``               :class:`~idempo.stores.postgres.PostgresStore`
``mysql://user:pass@host:3306/db``          :class:`~idempo.stores.mysql.MySQLStore` (MariaDB)
=========================================  =============================================

Every option a store takes can also ride in its URL's query, typed, so that a URL alone
configures it: ``postgresql://app@db/app?schema=idempo&timeout=2&max_size=20``,
``sqlite:///idempo.db?timeout=10``. An unknown option is an error naming the known ones, and an
option given both in the URL and as a keyword argument is an error (see
:mod:`idempo.stores._url`).

A plain map from scheme to module: each module offers ``open_sync(url, **options)`` and
``open_async(url, **options)``, and may offer ``open_pair(url, **options)`` when its two kinds
should share one store (see :func:`open_pair`), and ``URL_OPTIONS`` (a
:class:`~idempo.stores._url.UrlOptions`) naming what its URL's query may carry: the options are
taken out of the URL and passed to those functions as keyword arguments. Integrations are
imported only when their scheme is used, so a missing extra gives a clear error naming it.
"""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import urlsplit

from idempo.stores._url import redact
from idempo.stores.base import AsyncStore, Store

__all__ = ["AsyncStore", "Store", "open_async_store", "open_pair", "open_store"]

# scheme -> (module, the extra that installs its driver)
_SCHEMES: dict[str, tuple[str, str | None]] = {
    "memory": ("idempo.stores.memory", None),
    "sqlite": ("idempo.stores.sqlite", None),
    "redis": ("idempo.stores.redis", "redis"),
    "rediss": ("idempo.stores.redis", "redis"),
    "redis+cluster": ("idempo.stores.redis", "redis"),
    "rediss+cluster": ("idempo.stores.redis", "redis"),
    "postgresql": ("idempo.stores.postgres", "postgres"),
    "postgres": ("idempo.stores.postgres", "postgres"),
    "mysql": ("idempo.stores.mysql", "mysql"),
}


def _module(url: str) -> Any:
    if not isinstance(url, str):
        raise TypeError(f"a store URL must be a str, not {type(url).__name__}")
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ValueError(f"unknown store URL scheme in {redact(url)!r}; idempo knows {known}")
    module, extra = _SCHEMES[scheme]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if extra is None:
            raise
        raise ImportError(
            f"the {scheme}:// store needs its driver: pip install 'idempo[{extra}]' ({exc})"
        ) from exc


def _resolve(url: str, options: dict[str, Any]) -> tuple[Any, str, dict[str, Any]]:
    """The store's module, and the URL and options it gets once the query's options are out."""
    module = _module(url)
    declared = getattr(module, "URL_OPTIONS", None)
    if declared is not None:
        url, options = declared.split(url, options)
    return module, url, options


def open_store(url: str, **options: Any) -> Store:
    """Open a synchronous store by URL. ``options`` (and those of the URL's query) go to the
    store's constructor."""
    module, url, options = _resolve(url, options)
    store: Store = module.open_sync(url, **options)
    return store


def open_async_store(url: str, **options: Any) -> AsyncStore:
    """Open an asynchronous store by URL. ``options`` (and those of the URL's query) go to the
    store's constructor."""
    module, url, options = _resolve(url, options)
    store: AsyncStore = module.open_async(url, **options)
    return store


def open_pair(url: str, **options: Any) -> tuple[Store, AsyncStore]:
    """Open both kinds of store for one URL: ``(sync, async)``, for code with both ``def`` and
    ``async def`` functions under one configuration.

    Where the async store runs the sync one in worker threads (``memory://``, ``sqlite://``,
    ``mysql://``), the two share one store: one dict for ``memory://`` (a record one side writes
    is the other's to see; two :func:`open_store` calls would give two empty dicts), one
    database for ``sqlite://:memory:``, one connection pool for ``mysql://``. Closing either
    side then closes that one store. Elsewhere (``redis://``, ``postgresql://``) each side has
    its own client or pool over the same server; close each.

    Both are opened at once: no store connects before its first operation, so a side that is
    never used costs no connection.
    """
    module, url, options = _resolve(url, options)
    pair = getattr(module, "open_pair", None)
    if pair is not None:
        both: tuple[Store, AsyncStore] = pair(url, **options)
        return both
    return module.open_sync(url, **options), module.open_async(url, **options)

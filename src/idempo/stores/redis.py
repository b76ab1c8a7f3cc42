"""The Redis store: ``redis://host:port/db`` and ``rediss://`` (TLS); on Redis Cluster
``redis+cluster://host:port`` and ``rediss+cluster://`` (one seed node, the rest discovered).

:class:`RedisStore` (sync, over ``redis.Redis``) and :class:`AsyncRedisStore` (over
``redis.asyncio.Redis``) keep one hash per record and run every operation as one Lua script on
one key; see :mod:`idempo.stores._async.redis` for the layout and the durability caveats.
"""

from __future__ import annotations

from typing import Any

from idempo.stores._url import UrlOptions, integer, number, text

try:
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    from idempo.stores._async.redis import AsyncRedisStore
    from idempo.stores._sync.redis import RedisStore
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    if exc.name is None or exc.name.partition(".")[0] != "redis":
        raise
    raise ImportError(
        f"idempo's Redis store needs the redis package: pip install 'idempo[redis]' ({exc})"
    ) from exc

__all__ = ["URL_OPTIONS", "AsyncRedisStore", "RedisStore", "open_async", "open_sync"]

# What redis://...?... may carry (see idempo.stores._url): from_url's options, and what redis-py
# reads from the URL itself (socket_timeout, ...), left in the URL for it.
URL_OPTIONS = UrlOptions(
    {
        "prefix": text,
        "timeout": number,
        "wait_replicas": integer,
        "wait_timeout": number,
        "max_connections": integer,
        "pool_timeout": number,
    },
    driver=frozenset(URL_QUERY_ARGUMENT_PARSERS),
    driver_name="redis-py",
)


def open_sync(url: str, **options: Any) -> RedisStore:
    """A :class:`RedisStore` for ``url``; ``options`` go to :meth:`RedisStore.from_url`
    (``prefix=``, ``timeout=`` (default 5 s), ``wait_replicas=``, ``wait_timeout=``, and
    client options)."""
    return RedisStore.from_url(url, **options)


def open_async(url: str, **options: Any) -> AsyncRedisStore:
    """An :class:`AsyncRedisStore` for ``url``; options as for :func:`open_sync`."""
    return AsyncRedisStore.from_url(url, **options)

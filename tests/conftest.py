"""Shared fixtures: real services, isolated per test, and one store fixture per backend.

Service URLs come from the environment (defaults: the local services). Without a service its
tests skip with the reason, unless IDEMPO_REQUIRE_SERVICES=1 (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from idempo import Idempotency, open_async_store, open_store
from idempo.stores.base import AsyncStore, Store

REDIS_URL = os.environ.get("IDEMPO_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("IDEMPO_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("IDEMPO_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
REQUIRE_SERVICES = os.environ.get("IDEMPO_REQUIRE_SERVICES") == "1"

STORE_KINDS = [
    pytest.param("memory", marks=pytest.mark.memory),
    pytest.param("sqlite", marks=pytest.mark.sqlite),
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("postgres", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]

_service_errors: dict[str, str | None] = {}


def _probe(kind: str) -> str | None:
    """None if the service answers, else why not."""
    try:
        if kind == "redis":
            import redis

            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        elif kind == "postgres":
            import psycopg

            psycopg.connect(POSTGRES_URL, connect_timeout=2).close()
        elif kind == "mysql":
            import pymysql

            from idempo.stores.mysql import connect_kwargs

            pymysql.connect(**connect_kwargs(MYSQL_URL), connect_timeout=2).close()
    except Exception as exc:
        return f"{kind} is not reachable ({exc})"
    return None


def require_service(kind: str) -> None:
    """Skip (or, under IDEMPO_REQUIRE_SERVICES=1, fail) when ``kind``'s server is missing."""
    if kind not in ("redis", "postgres", "mysql"):
        return
    if kind not in _service_errors:
        _service_errors[kind] = _probe(kind)
    reason = _service_errors[kind]
    if reason is not None:
        if REQUIRE_SERVICES:
            pytest.fail(f"{reason}; IDEMPO_REQUIRE_SERVICES=1 makes this a failure")
        pytest.skip(reason)


def store_url(kind: str, tmp_path: Path) -> tuple[str, dict[str, Any]]:
    """A URL and options giving a store isolated to one test."""
    require_service(kind)
    run = uuid.uuid4().hex[:12]
    if kind == "memory":
        return "memory://", {}
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'idempo.db'}", {}
    if kind == "redis":
        return REDIS_URL, {"prefix": f"idempo-test-{run}:"}
    if kind == "postgres":
        return POSTGRES_URL, {"schema": f"idempo_test_{run}"}
    if kind == "mysql":
        return MYSQL_URL, {"table": f"idempo_test_{run}"}
    raise ValueError(kind)


def cleanup(kind: str, options: dict[str, Any]) -> None:
    """Remove what a test's store left on a shared server."""
    if kind == "redis":
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=options["prefix"] + "*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
    elif kind == "postgres":
        import psycopg

        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{options["schema"]}" CASCADE')
    elif kind == "mysql":
        import pymysql

        from idempo.stores.mysql import connect_kwargs

        table = options["table"]
        mconn = pymysql.connect(**connect_kwargs(MYSQL_URL), autocommit=True)
        try:
            cur = mconn.cursor()
            cur.execute(f"DROP TABLE IF EXISTS `{table}`")
            for suffix in ("claim", "hold", "purge"):
                cur.execute(f"DROP PROCEDURE IF EXISTS `{table}_{suffix}`")
        finally:
            mconn.close()


@contextlib.contextmanager
def sync_idempotency_on(kind: str, tmp_path: Path, **options: Any) -> Iterator[Idempotency]:
    """An Idempotency on an isolated store of ``kind`` (ttl 60 s, lease 5 s unless given),
    closed and cleaned up afterwards."""
    url, store_options = store_url(kind, tmp_path)
    idem = Idempotency(url, store_options=store_options, **{"ttl": 60, "lease": 5, **options})
    try:
        yield idem
    finally:
        idem.close()
        cleanup(kind, store_options)


@contextlib.asynccontextmanager
async def async_idempotency_on(
    kind: str, tmp_path: Path, **options: Any
) -> AsyncIterator[Idempotency]:
    """:func:`sync_idempotency_on` for async code (closed with ``aclose``)."""
    url, store_options = store_url(kind, tmp_path)
    idem = Idempotency(url, store_options=store_options, **{"ttl": 60, "lease": 5, **options})
    try:
        yield idem
    finally:
        await idem.aclose()
        cleanup(kind, store_options)


@contextlib.contextmanager
def sync_store(kind: str, tmp_path: Path) -> Iterator[Store]:
    url, options = store_url(kind, tmp_path)
    store = open_store(url, **options)
    try:
        yield store
    finally:
        store.close()
        cleanup(kind, options)


@contextlib.asynccontextmanager
async def async_store(kind: str, tmp_path: Path) -> AsyncIterator[AsyncStore]:
    url, options = store_url(kind, tmp_path)
    store = open_async_store(url, **options)
    try:
        yield store
    finally:
        await store.close()
        cleanup(kind, options)

"""Store options in the URL's query (DESIGN section 4): every store, against its real server.

A URL alone configures a store wherever one is taken: ``open_store`` and its siblings, and so
the middleware, Django settings, the CLI and the gateway, which all open stores through them.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner

from idempo import Idempotency, open_async_store, open_store
from idempo.cli import main
from idempo.core.records import ClaimStatus
from idempo.errors import StoreError
from idempo.stores import open_pair
from idempo.stores._url import redact
from tests.conftest import MYSQL_URL, POSTGRES_URL, REDIS_URL, STORE_KINDS, cleanup, store_url


def _with(url: str, **options: Any) -> str:
    """``url`` with ``options`` appended to its query, percent-encoded."""
    query = "&".join(f"{k}={quote(str(v), safe='')}" for k, v in options.items())
    return url + ("&" if "?" in url else "?") + query


@pytest.fixture(params=STORE_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def isolated(kind: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """A URL and the options that isolate a test's store; what it leaves is removed."""
    url, options = store_url(kind, tmp_path)
    yield url, options
    cleanup(kind, options)


def _timeout_of(store: Any) -> float:
    inner = getattr(store, "sync_store", store)  # stores awaited through worker threads
    if hasattr(inner, "_lock") and hasattr(inner._lock, "timeout"):  # memory
        timeout: float = inner._lock.timeout
        return timeout
    if hasattr(inner, "_busy_timeout"):  # sqlite
        return float(inner._busy_timeout)
    return float(inner._timeout)


def test_the_query_configures_every_store(kind: str, isolated: tuple[str, dict[str, Any]]) -> None:
    """Isolation (prefix, schema, table) and timeout in the query reach the store, which works."""
    url, options = isolated
    if kind != "redis":  # the Redis store's timeout= comes with its own change
        options = {**options, "timeout": 2.5}
    store = open_store(_with(url, **options))
    try:
        if "timeout" in options:
            assert _timeout_of(store) == 2.5
        if "prefix" in options:
            assert store.prefix == options["prefix"]  # type: ignore[attr-defined]
        if "schema" in options:
            assert (
                repr(store)
                == f"PostgresStore(schema={options['schema']!r}, table='idempo_records')"
            )
        if "table" in options:
            assert f"table={options['table']!r}" in repr(store)
        claimed = store.claim("s", "k", "fp", "tok", lease=30, ttl=60)
        assert claimed.status is ClaimStatus.ACQUIRED
        assert store.get("s", "k") is not None
    finally:
        store.close()
    # The same URL finds the same records: the options were applied, not ignored.
    again = open_store(_with(url, **options))
    try:
        if kind != "memory":
            assert again.get("s", "k") is not None
    finally:
        again.close()


async def test_the_query_configures_async_stores_and_pairs(
    kind: str, isolated: tuple[str, dict[str, Any]]
) -> None:
    """open_async_store and open_pair read the query as open_store does."""
    url, options = isolated
    if kind != "redis":
        options = {**options, "timeout": 3}
    with_query = _with(url, **options)
    astore = open_async_store(with_query)
    sync, paired = open_pair(with_query)
    try:
        if "timeout" in options:
            assert _timeout_of(astore) == _timeout_of(sync) == _timeout_of(paired) == 3.0
        result = await astore.claim("s", "a", "fp", "tok", lease=30, ttl=60)
        assert result.status is ClaimStatus.ACQUIRED
        if kind != "memory":
            assert sync.get("s", "a") is not None
            assert await paired.get("s", "a") is not None
    finally:
        await astore.close()
        sync.close()
        await paired.close()


@pytest.mark.parametrize(
    ("kind", "query", "size"),
    [
        pytest.param("postgres", "max_size=3&min_size=0", 3, marks=pytest.mark.postgres),
        pytest.param("mysql", "max_size=3", 3, marks=pytest.mark.mysql),
        pytest.param("redis", "max_connections=7", 7, marks=pytest.mark.redis),
    ],
)
def test_pool_size_in_the_query(
    kind: str, query: str, size: int, isolated: tuple[str, dict[str, Any]]
) -> None:
    """The pool's size is typed (a whole number) and reaches the pool."""
    url, options = isolated
    store: Any = open_store(_with(url, **options) + "&" + query)
    try:
        if kind == "redis":
            assert store.client.connection_pool.max_connections == size
        else:
            assert store._pool.max_size == size
        assert store.get("s", "k") is None
    finally:
        store.close()


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
        pytest.param("sqlite", marks=pytest.mark.sqlite),
    ],
)
def test_booleans_are_typed(kind: str, isolated: tuple[str, dict[str, Any]]) -> None:
    """auto_migrate=false in the query is False: an unmigrated store fails loudly, and
    auto_migrate=true creates the schema."""
    url, options = isolated
    unmigrated = open_store(_with(url, **options, auto_migrate="false"))
    try:
        with pytest.raises(StoreError):
            unmigrated.get("s", "k")
    finally:
        unmigrated.close()
    migrating = open_store(_with(url, **options, auto_migrate="TRUE"))
    try:
        assert migrating.get("s", "k") is None
    finally:
        migrating.close()


@pytest.mark.parametrize("kind", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_driver_parameters_stay_in_the_url_for_libpq(isolated: Any) -> None:
    """libpq's own parameters ride next to idempo's and reach the connection."""
    _, options = isolated
    store: Any = open_store(_with(POSTGRES_URL, **options, application_name="idempo-url-test"))
    try:
        assert store.get("s", "k") is None
        with store._pool.connection() as conn:
            assert conn.execute("SHOW application_name").fetchone() == ("idempo-url-test",)
    finally:
        store.close()


@pytest.mark.parametrize("kind", [pytest.param("redis", marks=pytest.mark.redis)])
def test_driver_parameters_stay_in_the_url_for_redis_py(isolated: Any) -> None:
    """redis-py's own parameters ride next to idempo's and reach its connections."""
    _, options = isolated
    store: Any = open_store(_with(REDIS_URL, **options, socket_timeout=3))
    try:
        assert store.client.connection_pool.connection_kwargs["socket_timeout"] == 3.0
        assert store.prefix == options["prefix"]
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    [
        "memory://",
        "sqlite:///idempo.db",
        pytest.param(REDIS_URL, marks=pytest.mark.redis),
        pytest.param(POSTGRES_URL, marks=pytest.mark.postgres),
        pytest.param(MYSQL_URL, marks=pytest.mark.mysql),
    ],
)
def test_an_unknown_option_names_itself_and_the_known_ones(url: str) -> None:
    """A misspelt option is an error naming it and what the store takes, never ignored."""
    with pytest.raises(ValueError, match=r"unknown option 'pool_sise'.* takes .*timeout") as caught:
        open_store(_with(url, pool_sise=3))
    if not url.startswith("redis"):  # the Redis store's timeout= comes with its own change
        assert "timeout" in str(caught.value)
    with pytest.raises(ValueError, match="unknown option 'pool_sise'"):
        open_async_store(_with(url, pool_sise=3))


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("timeout=soon", r"timeout='soon' in the store URL .*: timeout must be a number"),
        ("timeout=nan", r"timeout must be a finite number"),
        ("max_size=1.5", r"max_size must be a whole number"),
        ("auto_migrate=maybe", r"auto_migrate must be true or false"),
        ("prepare_threshold=never", r"prepare_threshold must be a whole number or none"),
        ("timeout=1&timeout=2", r"'timeout' appears twice"),
    ],
)
def test_a_bad_value_is_an_error_naming_the_option(query: str, message: str) -> None:
    """Values are typed: one that does not parse is an error naming the option and its type."""
    with pytest.raises(ValueError, match=message):
        open_store(f"{POSTGRES_URL}?{query}")


def test_an_option_in_the_query_and_as_a_keyword_is_an_error(tmp_path: Path) -> None:
    """Given twice, neither silently wins: the caller is told to give it once."""
    with pytest.raises(ValueError, match=r"'timeout' is given both .* give it once"):
        open_store(f"sqlite:///{tmp_path / 'x.db'}?timeout=2", timeout=3)
    idem = Idempotency(f"sqlite:///{tmp_path / 'x.db'}?table=a", store_options={"table": "b"})

    @idem.idempotent(key=lambda: "k")
    def once() -> None:
        """Never runs: the store cannot be opened."""

    with pytest.raises(ValueError, match="'table' is given both"):
        once()  # Idempotency opens its store on first use


def test_sqlite_choices_are_checked_and_normalised(tmp_path: Path) -> None:
    """synchronous takes NORMAL, FULL or EXTRA in any case, and nothing else."""
    store: Any = open_store(f"sqlite:///{tmp_path / 'x.db'}?synchronous=full&table=t1")
    try:
        store.claim("s", "k", "fp", "tok", lease=30, ttl=60)
        assert store._synchronous == "FULL"
    finally:
        store.close()
    assert sqlite3.connect(tmp_path / "x.db").execute("SELECT count(*) FROM t1").fetchone() == (1,)
    with pytest.raises(ValueError, match="synchronous must be one of NORMAL, FULL, EXTRA"):
        open_store(f"sqlite:///{tmp_path / 'x.db'}?synchronous=sometimes")


@pytest.mark.mysql
def test_a_password_in_the_url_works_and_is_never_shown() -> None:
    """A URL with a password (special characters percent-encoded) connects with its options,
    and errors about the URL show the password as ***."""
    import pymysql

    from idempo.stores.mysql import connect_kwargs

    user, password = f"idempo_pw_{secrets.token_hex(4)}", "p@ss:w/rd?&#"
    table = f"idempo_test_{secrets.token_hex(6)}"
    admin = pymysql.connect(**connect_kwargs(MYSQL_URL), autocommit=True)
    try:
        cur = admin.cursor()
        cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
        database = connect_kwargs(MYSQL_URL)["database"]
        cur.execute(f"GRANT ALL ON `{database}`.* TO %s@'%%'", (user,))
        host = f"{connect_kwargs(MYSQL_URL)['host']}:{connect_kwargs(MYSQL_URL)['port']}"
        url = f"mysql://{user}:{quote(password, safe='')}@{host}/{database}"
        store = open_store(_with(url, table=table, timeout=2))
        try:
            assert store.claim("s", "k", "fp", "t", lease=30, ttl=60).status is ClaimStatus.ACQUIRED
        finally:
            store.close()
        with pytest.raises(ValueError, match="unknown option 'tabel'") as caught:
            open_store(_with(url, tabel=table))
        assert quote(password, safe="") not in str(caught.value)
        assert f"{user}:***@" in str(caught.value)
    finally:
        cleanup("mysql", {"table": table})
        admin.cursor().execute("DROP USER IF EXISTS %s@'%%'", (user,))
        admin.close()


def test_redact_hides_every_password() -> None:
    """The user part's password and password-like query values are replaced by ***."""
    assert redact("postgresql://app:s3cret@db:5432/app?sslpassword=x&schema=s") == (
        "postgresql://app:***@db:5432/app?sslpassword=***&schema=s"
    )
    assert redact("redis://:s3cret@cache/0") == "redis://:***@cache/0"
    assert redact("sqlite:///x.db?timeout=1") == "sqlite:///x.db?timeout=1"


def test_idempotency_and_the_cli_take_options_in_the_url(tmp_path: Path) -> None:
    """Everything that takes a URL opens it through open_*: Idempotency and the CLI read the
    query too, and the CLI reports a bad option as one clean line."""
    url = f"sqlite:///{tmp_path / 'x.db'}?table=custom&timeout=2"
    idem = Idempotency(url)

    @idem.idempotent(key=lambda n: str(n))
    def double(n: int) -> int:
        return 2 * n

    assert double(21) == 42
    idem.close()
    assert sqlite3.connect(tmp_path / "x.db").execute("SELECT count(*) FROM custom").fetchone() == (
        1,
    )
    result = CliRunner().invoke(main, ["purge", "--store", url])
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(main, ["purge", "--store", url + "&tabel=x"])
    assert bad.exit_code == 1
    assert bad.output.startswith("Error: unknown option 'tabel'")
    assert bad.output.count("\n") == 1

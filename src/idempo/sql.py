"""Idempotent SQL writes: the two helpers the guides lean on.

* :func:`upsert`: insert a row, or, if its key exists, bring it to the same values. Running it
  twice leaves the table as running it once, and it reports whether anything changed (a repeat
  changes nothing: the UPDATE only touches a row whose values differ, so a replay writes no new
  row version and fires no update trigger).
* :func:`update_if_version`: optimistic concurrency. Update a row only if its version column
  still holds the version the caller read, and bump it; otherwise raise
  :class:`VersionConflictError` (HTTP 409). A retried update that already applied conflicts
  instead of applying twice.

Both take a DB-API connection (``sqlite3``, psycopg 3, PyMySQL) and run one statement in the
caller's transaction; they never commit. Table and column names are quoted identifiers and are
never taken from untrusted input in the first place; values are always bound parameters.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from idempo.errors import VersionConflictError

__all__ = ["VersionConflictError", "update_if_version", "upsert"]


class _Dialect:
    def __init__(self, quote: str, param: str, kind: str) -> None:
        self.quote_char = quote
        self.param = param
        self.kind = kind

    def quote(self, name: str) -> str:
        if not name or "\x00" in name:
            raise ValueError(f"bad SQL identifier {name!r}")
        q = self.quote_char
        return q + name.replace(q, q + q) + q


def _dialect(conn: Any) -> _Dialect:
    if isinstance(conn, sqlite3.Connection):
        return _Dialect('"', "?", "sqlite")
    module = type(conn).__module__
    if module.startswith("psycopg"):
        return _Dialect('"', "%s", "postgres")
    if module.startswith("pymysql"):
        return _Dialect("`", "%s", "mysql")
    raise TypeError(f"unsupported connection {module}.{type(conn).__name__}")


def _columns(values: Mapping[str, Any]) -> list[str]:
    if not values:
        raise ValueError("no values to write")
    return list(values)


def upsert(conn: Any, table: str, values: Mapping[str, Any], *, key: Sequence[str]) -> bool:
    """Insert ``values`` into ``table``, or update the row with the same ``key`` columns to
    them. Returns True if a row was inserted or changed, False if it already held them."""
    d = _dialect(conn)
    cols = _columns(values)
    if not key or any(k not in values for k in key):
        raise ValueError("key columns must be among the values")
    rest = [c for c in cols if c not in key]
    t = d.quote(table)
    names = ", ".join(d.quote(c) for c in cols)
    params = ", ".join(d.param for _ in cols)
    args = [values[c] for c in cols]
    if d.kind == "mysql":
        # MySQL's affected-rows is 1 for an insert, 2 for a changed row, 0 for an unchanged
        # one (without CLIENT_FOUND_ROWS, PyMySQL's default): exactly the answer we need.
        if not rest:
            sql = f"INSERT IGNORE INTO {t} ({names}) VALUES ({params})"
        else:
            sets = ", ".join(f"{d.quote(c)} = VALUES({d.quote(c)})" for c in rest)
            sql = f"INSERT INTO {t} ({names}) VALUES ({params}) ON DUPLICATE KEY UPDATE {sets}"
        cur = conn.cursor()
        cur.execute(sql, args)
        return bool(cur.rowcount)
    conflict = ", ".join(d.quote(k) for k in key)
    if not rest:
        sql = f"INSERT INTO {t} ({names}) VALUES ({params}) ON CONFLICT ({conflict}) DO NOTHING"
    else:
        sets = ", ".join(f"{d.quote(c)} = excluded.{d.quote(c)}" for c in rest)
        # Only a row whose values differ is updated: a repeat is a no-op, reported as such.
        differs = " OR ".join(
            f"{t}.{d.quote(c)} IS DISTINCT FROM excluded.{d.quote(c)}"
            if d.kind == "postgres"
            else f"{t}.{d.quote(c)} IS NOT excluded.{d.quote(c)}"
            for c in rest
        )
        sql = (
            f"INSERT INTO {t} ({names}) VALUES ({params}) "
            f"ON CONFLICT ({conflict}) DO UPDATE SET {sets} WHERE {differs}"
        )
    cur = conn.execute(sql, args)
    return bool(cur.rowcount)


def update_if_version(
    conn: Any,
    table: str,
    values: Mapping[str, Any],
    *,
    where: Mapping[str, Any],
    expected_version: int,
    version_column: str = "version",
) -> int:
    """Set ``values`` on the row matching ``where`` if its ``version_column`` equals
    ``expected_version``, and bump it. Returns the new version; raises VersionConflictError if
    the row is missing or at another version."""
    d = _dialect(conn)
    cols = _columns(values)
    if version_column in values:
        raise ValueError(f"{version_column!r} is set by update_if_version itself")
    if not where:
        raise ValueError("where= must name the row")
    v = d.quote(version_column)
    sets = ", ".join(f"{d.quote(c)} = {d.param}" for c in cols)
    conds = " AND ".join(f"{d.quote(c)} = {d.param}" for c in where)
    sql = f"UPDATE {d.quote(table)} SET {sets}, {v} = {v} + 1 WHERE {conds} AND {v} = {d.param}"
    args = [*(values[c] for c in cols), *where.values(), expected_version]
    cur = conn.cursor() if d.kind == "mysql" else None
    rowcount = cur.execute(sql, args) if cur is not None else conn.execute(sql, args).rowcount
    if not rowcount:
        raise VersionConflictError(
            f"{table} row {dict(where)!r} is not at version {expected_version}: it changed since "
            "it was read, or this update was already applied",
            expected=expected_version,
            table=table,
        )
    return expected_version + 1

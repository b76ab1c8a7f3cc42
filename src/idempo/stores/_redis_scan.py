"""The Redis store's scan and stats: SCAN patterns, key parsing, records from HMGET replies.

Pure helpers for both store classes (:mod:`idempo.stores._async.redis` and its generated twin).
Scan and stats cannot be one script: a script may touch only the keys it declares (Redis
Cluster enforces it), and the keys are what SCAN finds. So a page is two round trips, SCAN and
then one pipeline of ``TIME`` and an ``HMGET`` per key found (on Redis Cluster three: ``TIME``
on its own, as a cluster pipeline refuses it; then SCAN of one primary, the primaries one after
the other, and the HMGETs; a listing across a resharding or failover may miss or repeat
records, and a cursor from before a change of primaries may be refused). SCAN walks the whole
keyspace of the database (MATCH filters what it returns, not what it visits), so a full listing
or a stats call costs about (keys in the database) / COUNT pages, however few are idempo's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from idempo.core.records import Record, State
from idempo.errors import StoreError
from idempo.stores import _rows as rows
from idempo.stores._scan import Counter

__all__ = [
    "SCAN_FIELDS",
    "STATS_FIELDS",
    "clock",
    "cluster_cursor",
    "cluster_position",
    "count",
    "match",
    "position",
    "record",
]

# What a listing shows: no token, no outcome (an outcome may be megabytes).
SCAN_FIELDS = (
    "v",
    "fingerprint",
    "state",
    "lease_until",
    "created_at",
    "expires_at",
    "recovery_point",
)
STATS_FIELDS = ("v", "state", "lease_until", "created_at", "expires_at")

_GLOB = re.compile(r"([\\*?\[\]])")


def match(prefix: str, scope: str | None) -> str:
    """The SCAN MATCH pattern of the store's keys (of one scope), glob characters escaped."""
    head = prefix if scope is None else f"{prefix}{len(scope)}:{scope}:"
    return _GLOB.sub(r"\\\1", head) + "*"


class BadCursor(ValueError):
    """A page cursor this store did not give: the caller's mistake, never an outage (the
    store's boundary translates a client's ValueError as unavailable; not this one)."""


def position(cursor: str | None) -> int:
    """The Redis SCAN cursor a page cursor carries (0: from the start)."""
    if cursor is None:
        return 0
    if not cursor.isdigit():
        raise BadCursor(f"not a cursor this store gave: {cursor!r}")
    return int(cursor)


def cluster_position(cursor: str | None, primaries: int) -> tuple[int, int]:
    """(which primary, its SCAN cursor) of a Redis Cluster page cursor ``"<index>-<cursor>"``:
    the primaries are listed one after the other, in the order of their names."""
    if cursor is None:
        return 0, 0
    index, sep, at = cursor.partition("-")
    if not sep or not index.isdigit() or not at.isdigit() or int(index) >= primaries:
        raise BadCursor(f"not a cursor this store gave (or the cluster changed): {cursor!r}")
    return int(index), int(at)


def cluster_cursor(index: int, at: int, primaries: int) -> str | None:
    """The page cursor after SCAN answered ``at`` on primary ``index`` (None: all done)."""
    if at:
        return f"{index}-{at}"
    return f"{index + 1}-0" if index + 1 < primaries else None


def clock(reply: Any) -> float:
    """Epoch seconds from a TIME reply."""
    seconds, micros = reply
    return int(seconds) + int(micros) / 1e6


def _split(prefix: str, redis_key: bytes) -> tuple[str, str] | None:
    """(scope, key) of ``prefix + "<len(scope)>:<scope>:<key>"``; None for another key."""
    try:
        text = redis_key.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not text.startswith(prefix):
        return None
    length, sep, rest = text[len(prefix) :].partition(":")
    if not sep or not length.isdigit() or len(rest) <= int(length) or rest[int(length)] != ":":
        return None
    n = int(length)
    return rest[:n], rest[n + 1 :]


def record(prefix: str, redis_key: bytes, reply: Any) -> Record | None:
    """The record an HMGET of :data:`SCAN_FIELDS` read (token and outcome None); None when
    the key is not one of ours, is gone, or holds no hash."""
    names = _split(prefix, redis_key)
    if names is None or isinstance(reply, Exception) or reply[0] is None:
        return None
    v, fingerprint, state, lease_until, created, expires, recovery = reply
    try:
        row = (
            fingerprint.decode(),
            state.decode(),
            None,
            None if lease_until is None else int(lease_until) / 1000,
            None,
            recovery,
            int(created) / 1000,
            int(expires) / 1000,
            int(v),
        )
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise StoreError(f"corrupt idempotency record at {redis_key!r}: {exc}") from exc
    return rows.record(*names, row)


def count(
    counter: Counter, prefix: str, redis_keys: Sequence[bytes], replies: Sequence[Any]
) -> None:
    """Add one page's HMGET replies of :data:`STATS_FIELDS` to ``counter``."""
    for redis_key, reply in zip(redis_keys, replies, strict=True):
        if _split(prefix, redis_key) is None or isinstance(reply, Exception) or reply[0] is None:
            continue
        v, state, lease_until, created, expires = reply
        if v != b"1":
            raise StoreError(f"record {redis_key!r} has format {v!r}; this idempo reads 1")
        try:
            counter.add(
                State(state.decode()),
                None if lease_until is None else int(lease_until) / 1000,
                int(created) / 1000,
                int(expires) / 1000,
            )
        except (ValueError, AttributeError) as exc:
            raise StoreError(f"corrupt idempotency record at {redis_key!r}: {exc}") from exc

"""What every store's ``scan`` and ``stats`` share: argument checks, cursors, filters, counts.

Pure: no I/O. The SQL stores page by keyset on (scope, key), so their cursor is the last
(scope, key) a page examined, encoded; Redis's cursor is its own SCAN cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from typing import Any

from idempo.core.records import Record, State
from idempo.stores import _rows as rows
from idempo.stores.base import Page, Stats

__all__ = [
    "FIRST",
    "Counter",
    "check",
    "decode",
    "encode",
    "listed",
    "page",
    "shown",
    "stats_row",
]

# Before every (scope, key): keys are never empty, so ("", "") sorts below all of them.
FIRST = ("", "")


def check(state: State | str | None, limit: int, older_than: float) -> State | None:
    """The checked ``state`` of a scan (ValueError for a bad argument)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, not {limit!r}")
    if older_than < 0:
        raise ValueError(f"older_than must be >= 0 seconds, not {older_than!r}")
    return None if state is None else State(state)


def encode(scope: str, key: str) -> str:
    """The opaque cursor after (scope, key)."""
    raw = json.dumps([scope, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str | None) -> tuple[str, str]:
    """The (scope, key) a cursor continues after (:data:`FIRST` for None)."""
    if cursor is None:
        return FIRST
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        scope, key = json.loads(raw)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise ValueError(f"not a cursor this store gave: {cursor!r}") from exc
    if not isinstance(scope, str) or not isinstance(key, str):
        raise ValueError(f"not a cursor this store gave: {cursor!r}")
    return scope, key


def shown(record: Record, now: float, state: State | None, older_than: float) -> bool:
    """Whether a scan shows ``record``: live, of ``state``, created ``older_than`` ago."""
    return (
        record.expires_at > now
        and (state is None or record.state is state)
        and record.created_at <= now - older_than
    )


def listed(record: Record) -> Record:
    """``record`` as a scan shows it: no token, no outcome."""
    if record.token is None and record.outcome is None:
        return record
    return Record(
        scope=record.scope,
        key=record.key,
        fingerprint=record.fingerprint,
        state=record.state,
        token=None,
        lease_until=record.lease_until,
        outcome=None,
        created_at=record.created_at,
        expires_at=record.expires_at,
        recovery_point=record.recovery_point,
    )


def page(
    now: float,
    window: Sequence[Sequence[Any]],
    *,
    state: State | None,
    older_than: float,
    limit: int,
    where: str = "",
) -> Page:
    """A SQL store's page from the rows it examined, in (scope, key) order: each row is
    (scope, key, fingerprint, state, lease_until, recovery_point, created_at, expires_at,
    format). A full window means more may follow: its last row is the cursor."""
    records = []
    for scope, key, fingerprint, st, lease_until, recovery, created, expires, fmt in window:
        row = (fingerprint, st, None, lease_until, None, recovery, created, expires, fmt)
        record = rows.record(scope, key, row, where=where)
        if shown(record, now, state, older_than):
            records.append(record)
    cursor = encode(window[-1][0], window[-1][1]) if len(window) >= limit else None
    return Page(tuple(records), cursor, now)


class Counter:
    """Stats counted record by record (the memory store, Redis's paged SCAN)."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.in_progress = self.completed = self.expired = self.stalled = 0
        self.oldest: float | None = None

    def add(self, state: State, lease_until: float | None, created: float, expires: float) -> None:
        if expires <= self.now:
            self.expired += 1
        elif state is State.COMPLETED:
            self.completed += 1
        else:
            self.in_progress += 1
            if lease_until is not None and lease_until <= self.now:
                self.stalled += 1
            if self.oldest is None or created < self.oldest:
                self.oldest = created

    def add_all(self, records: Iterable[Record]) -> Counter:
        for r in records:
            self.add(r.state, r.lease_until, r.created_at, r.expires_at)
        return self

    def stats(self) -> Stats:
        return Stats(
            in_progress=self.in_progress,
            completed=self.completed,
            expired=self.expired,
            stalled=self.stalled,
            oldest_in_progress_age=None
            if self.oldest is None
            else max(0.0, self.now - self.oldest),
            now=self.now,
        )


def stats_row(row: Sequence[Any]) -> Stats:
    """Stats from a SQL store's one row: in_progress, completed, expired, stalled, the oldest
    in-progress created_at (NULL: none), now."""
    in_progress, completed, expired, stalled, oldest, now = row
    now = float(now)
    return Stats(
        in_progress=int(in_progress),
        completed=int(completed),
        expired=int(expired),
        stalled=int(stalled),
        oldest_in_progress_age=None if oldest is None else max(0.0, now - float(oldest)),
        now=now,
    )

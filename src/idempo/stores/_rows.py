"""Rows and Records, for every store that keeps a record as one row of columns.

One row layout is shared by the SQL stores (PostgreSQL, MariaDB, SQLite) and, once its reply is
decoded, by Redis: the :data:`COLUMNS` in this order, times as float epoch seconds of the
store's clock. A row carries the record format it was written in; a reader refuses any other
format instead of misreading it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from idempo.core.records import Record, State
from idempo.core.transitions import LostReason
from idempo.errors import LeaseLostError, StoreError

__all__ = ["COLUMNS", "RECORD_FORMAT", "lease_lost", "record", "values"]

# The record layout this code writes and reads (SQLite column ``format_version``, PostgreSQL and
# MariaDB column ``format``, Redis hash field ``v``): a newer idempo that changes what a row means
# writes a higher number, and this code refuses to misread it.
RECORD_FORMAT = 1

# The columns of a row after (scope, key), in the order record() reads and values() writes.
COLUMNS = (
    "fingerprint",
    "state",
    "token",
    "lease_until",
    "outcome",
    "recovery_point",
    "created_at",
    "expires_at",
    "format",
)


_STATES: dict[Any, State] = {s.value: s for s in State}


def record(scope: str, key: str, row: Sequence[Any], *, where: str = "") -> Record:
    """The Record of (scope, key) from a row of :data:`COLUMNS`; StoreError for a row of
    another format or an unknown state. ``where`` names the database in messages."""
    fingerprint, state, token, lease_until, outcome, recovery_point, created, expires, fmt = row
    if fmt != RECORD_FORMAT:
        advice = (
            ", newer than this idempo understands: upgrade idempo" if fmt > RECORD_FORMAT else ""
        )
        raise StoreError(
            f"record ({scope!r}, {key!r}){_in(where)} has format {fmt}; this idempo reads"
            f" {RECORD_FORMAT}{advice}"
        )
    try:
        known = _STATES.get(state)  # a dict, not State(state): an enum call costs ten times more
    except TypeError:  # unhashable: no state at all
        known = None
    if known is None:
        raise StoreError(f"corrupt record ({scope!r}, {key!r}){_in(where)}: state {state!r}")
    return Record(
        scope=scope,
        key=key,
        fingerprint=fingerprint,
        state=known,
        token=token,
        lease_until=None if lease_until is None else float(lease_until),
        # bytes(): drivers may hand back memoryview or bytearray; bytes(bytes) is a no-op.
        outcome=None if outcome is None else bytes(outcome),
        created_at=float(created),
        expires_at=float(expires),
        recovery_point=None if recovery_point is None else bytes(recovery_point),
    )


def _in(where: str) -> str:
    return f" in {where}" if where else ""


def values(r: Record) -> tuple[Any, ...]:
    """The row of :data:`COLUMNS` that stores ``r`` (in the current format)."""
    return (
        r.fingerprint,
        r.state.value,
        r.token,
        r.lease_until,
        r.outcome,
        r.recovery_point,
        r.created_at,
        r.expires_at,
        RECORD_FORMAT,
    )


def lease_lost(code: str | bytes | None) -> LeaseLostError | StoreError:
    """The error for a store's refusal code: a :class:`LostReason` value (None: no row, so
    gone), or StoreError for a code no idempo script or statement gives."""
    if code is None:
        return LostReason.GONE.error()
    text = code.decode(errors="replace") if isinstance(code, bytes) else code
    try:
        return LostReason(text).error()
    except ValueError:
        return StoreError(f"unexpected reply from the store: {code!r}")

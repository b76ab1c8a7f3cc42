"""How the ``idempo`` command prints: JSON for scripts, tables for people.

JSON shapes are stable (DESIGN §7): times are Unix seconds (floats, the store's clock), states
are ``in_progress`` or ``completed``, and a listing is one JSON array, streamed item by item so
that listing a whole store never holds it in memory. Tables use rich when it is installed
(``idempo[demo]``) and plain aligned columns otherwise.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Sequence
from typing import Any

import click

from idempo.core.records import Record
from idempo.stores.base import Stats

__all__ = [
    "FORMATS",
    "JsonArray",
    "age",
    "echo_json",
    "format_option",
    "record_json",
    "stats_json",
    "table",
    "when",
]

FORMATS = ("table", "json")


def format_option(fn: Any) -> Any:
    """The ``--format table|json`` option every command that prints data takes."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table for people, json for scripts.",
    )(fn)


def record_json(record: Record) -> dict[str, Any]:
    """A record as ``keys list`` and ``keys show`` print it (never its token or outcome)."""
    return {
        "scope": record.scope,
        "key": record.key,
        "state": record.state.value,
        "fingerprint": record.fingerprint,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "lease_until": record.lease_until,
        "recovery_point": record.recovery_point is not None,
    }


def stats_json(stats: Stats) -> dict[str, Any]:
    return {
        "in_progress": stats.in_progress,
        "completed": stats.completed,
        "expired": stats.expired,
        "stalled": stats.stalled,
        "oldest_in_progress_age": stats.oldest_in_progress_age,
        "now": stats.now,
    }


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, default=repr))


class JsonArray:
    """One JSON array on stdout, an item at a time: ``[]`` when nothing was added."""

    def __init__(self) -> None:
        self.count = 0

    def add(self, item: Any) -> None:
        head = "[\n" if self.count == 0 else ",\n"
        click.echo(head + json.dumps(item, default=repr), nl=False)
        self.count += 1

    def close(self) -> None:
        click.echo("[]" if self.count == 0 else "\n]")


def when(seconds: float | None) -> str:
    """An instant for people: ISO 8601 in UTC, to the second."""
    if seconds is None:
        return "-"
    instant = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return instant.strftime("%Y-%m-%d %H:%M:%SZ")


def age(seconds: float | None) -> str:
    """A duration for people: 42s, 3m12s, 5h03m, 2d04h."""
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    title: str = "",
    fold: Sequence[str] = (),
) -> None:
    """Print ``rows`` under ``columns``; the ``fold`` columns (keys, scopes: data of any length)
    wrap when the table is too wide, the others never do."""
    rows = list(rows)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover - rich comes with idempo[demo]
        _plain(columns, rows, title)
        return
    view = Table(*columns, title=title or None, title_justify="left")
    for column in view.columns:
        if column.header in fold:
            column.overflow = "fold"  # keys are data: wrap them, never cut them short
        else:
            column.no_wrap = True
    for row in rows:
        view.add_row(*row)
    # To sys.stdout as it is now (CliRunner swaps it). Not a terminal (a pipe, a file): no
    # width to fit, so do not wrap at rich's default of 80 columns.
    console = Console(highlight=False)
    if not console.is_terminal:
        console.width = 250
    console.print(view)


def _plain(columns: Sequence[str], rows: list[Sequence[str]], title: str) -> None:
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    if title:
        click.echo(title)
    for line in [columns, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())

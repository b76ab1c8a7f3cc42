"""The ``idempo`` command: the demo, and operator tools over any store URL.

Every command that prints data takes ``--format table|json`` (the JSON shapes are in
:mod:`idempo._cli_format`). A failure of the store is one ``Error: ...`` line on stderr and exit
status 1, in either format.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import click

from idempo import _cli_format as out
from idempo import open_store
from idempo.check import check as _check  # stdlib and click only: httpx loads when it runs
from idempo.core.records import Record, State
from idempo.errors import IdempoError

if TYPE_CHECKING:
    from idempo.stores.base import Store

__all__ = ["main"]


def _failure(exc: Exception) -> click.ClickException:
    # One line: driver messages (psycopg's, for one) span several, and an operator wants the
    # reason, not a traceback.
    return click.ClickException(" ".join(str(exc).split()))


@contextlib.contextmanager
def _store(url: str) -> Iterator[Store]:
    """The store at ``url``, closed afterwards; an idempo error (or a URL no store takes)
    becomes a clean command-line error."""
    try:
        store = open_store(url)
    except (IdempoError, ValueError, ImportError) as exc:  # a bad URL or a missing extra
        raise _failure(exc) from exc
    try:
        try:
            yield store
        finally:
            store.close()
    except IdempoError as exc:
        raise _failure(exc) from exc


@click.group()
@click.version_option(package_name="idempo")
def main() -> None:
    """idempo: make operations safe to retry."""


main.add_command(_check)


@main.command()
@click.option(
    "--orders",
    "-n",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Orders to charge.",
)
@click.option(
    "--loss",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.3,
    show_default=True,
    help="Share of replies lost after the server processed the request.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Seed of the losses.")
@click.option("--no-color", is_flag=True, help="Plain output (NO_COLOR works too).")
def demo(orders: int, loss: float, seed: int, no_color: bool) -> None:
    """Charge orders over a network that loses replies: naive retries vs idempo.

    Starts a payments API (Starlette + uvicorn on 127.0.0.1, SQLite ledger, idempo middleware
    with a SQLite store) and a client whose network loses a share of the replies after the
    server has charged. Each order is charged in two runs: retried without a key, and with
    idempo's client. Exits 0 only if idempo's ledger total is exact.
    """
    try:
        # Imported here: the demo needs the web stack, which `idempo` itself does not.
        from idempo import demo as demo_module
    except ImportError as exc:
        raise click.ClickException(
            f"the demo needs {exc.name}: pip install 'idempo[demo]'"
        ) from exc
    click.get_current_context().exit(demo_module.main(orders, loss, seed, no_color=no_color))


@main.command()
@click.option("--store", "url", required=True, help="Store URL.")
@out.format_option
def migrate(url: str, fmt: str) -> None:
    """Create or upgrade the store's schema (run once before production traffic)."""
    with _store(url) as store:
        store.migrate()
    if fmt == "json":
        out.echo_json({"migrated": True})
    else:
        click.echo("migrated")


@main.group()
def keys() -> None:
    """Inspect or delete single records."""


_STATES = click.Choice([s.value for s in State])


@keys.command("list")
@click.option("--store", "url", required=True, help="Store URL.")
@click.option("--state", type=_STATES, default=None, help="Only records in this state.")
@click.option("--scope", default=None, help="Only records of this scope.")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Only records created at least this many seconds ago.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Records to list at most; 0 lists them all (use --format json for big listings).",
)
@out.format_option
def keys_list(
    url: str, state: str | None, scope: str | None, older_than: float, limit: int, fmt: str
) -> None:
    """List live records, page by page through the store's index (never a full load)."""
    records = _listing(url, state=state, scope=scope, older_than=older_than, limit=limit)
    if fmt == "json":
        array = out.JsonArray()
        for record, _ in records:
            array.add(out.record_json(record))
        array.close()
        return
    rows, more = [], False
    for record, now in records:
        rows.append(_row(record, now))
    if limit and len(rows) == limit:
        more = True
    columns = ("scope", "key", "state", "created", "age", "expires", "lease", "recovery")
    out.table(columns, rows, fold=("scope", "key"))
    if more:
        click.echo(f"(the first {limit}; more may follow: --limit 0 lists all)", err=True)


def _listing(
    url: str, *, state: str | None, scope: str | None, older_than: float, limit: int
) -> Iterator[tuple[Record, float]]:
    """The records of a scan with the store's clock of their page, at most ``limit`` (0: all).
    With a limit, a record Redis's SCAN returns twice is shown once."""
    seen: set[tuple[str, str]] = set()
    count = 0
    with _store(url) as store:
        cursor: str | None = None
        while True:
            page = store.scan(
                state=None if state is None else State(state),
                scope=scope,
                older_than=older_than,
                cursor=cursor,
                limit=min(limit, 500) if limit else 500,
            )
            for record in page.records:
                if limit:
                    if (record.scope, record.key) in seen:
                        continue
                    seen.add((record.scope, record.key))
                yield record, page.now
                count += 1
                if limit and count >= limit:
                    return
            cursor = page.cursor
            if cursor is None:
                return


def _row(record: Record, now: float) -> tuple[str, ...]:
    if record.lease_until is None:
        lease = "-"
    elif record.lease_until > now:
        lease = f"{out.age(record.lease_until - now)} left"
    else:
        lease = f"ran out {out.age(now - record.lease_until)} ago"
    return (
        record.scope,
        record.key,
        record.state.value,
        out.when(record.created_at),
        out.age(now - record.created_at),
        out.when(record.expires_at),
        lease,
        "yes" if record.recovery_point is not None else "-",
    )


@keys.command("show")
@click.option("--store", "url", required=True, help="Store URL.")
@click.option("--scope", default="", help="The record's scope.")
@click.argument("key")
@out.format_option
def keys_show(url: str, scope: str, key: str, fmt: str) -> None:
    """Show the record of KEY."""
    with _store(url) as store:
        record = store.get(scope, key)
    if record is None:
        raise click.ClickException(f"no record for key {key!r} in scope {scope!r}")
    if fmt == "json":
        shown = out.record_json(record)
        shown["outcome_bytes"] = None if record.outcome is None else len(record.outcome)
        out.echo_json(shown)
        return
    click.echo(f"scope:        {record.scope}")
    click.echo(f"key:          {record.key}")
    click.echo(f"state:        {record.state}")
    click.echo(f"fingerprint:  {record.fingerprint}")
    click.echo(f"created_at:   {record.created_at:.3f}")
    click.echo(f"expires_at:   {record.expires_at:.3f}")
    if record.lease_until is not None:
        click.echo(f"lease_until:  {record.lease_until:.3f}")
    if record.outcome is not None:
        click.echo(f"outcome:      {len(record.outcome)} bytes")


@keys.command("delete")
@click.option("--store", "url", required=True, help="Store URL.")
@click.option("--scope", default="", help="The record's scope.")
@click.argument("key")
@out.format_option
def keys_delete(url: str, scope: str, key: str, fmt: str) -> None:
    """Delete the record of KEY (the next call with it runs again)."""
    with _store(url) as store:
        deleted = store.delete(scope, key)
    if not deleted:
        raise click.ClickException(f"no record for key {key!r} in scope {scope!r}")
    if fmt == "json":
        out.echo_json({"deleted": True, "scope": scope, "key": key})
    else:
        click.echo("deleted")


@main.command()
@click.option("--store", "url", required=True, help="Store URL.")
@out.format_option
def stats(url: str, fmt: str) -> None:
    """Count the store's records: in flight (and stalled), completed, expired but not purged."""
    with _store(url) as store:
        counts = store.stats()
    if fmt == "json":
        out.echo_json(out.stats_json(counts))
        return
    rows = [
        ("in progress", str(counts.in_progress)),
        ("  stalled (lease ran out)", str(counts.stalled)),
        ("completed", str(counts.completed)),
        ("expired, not purged", str(counts.expired)),
        ("oldest in progress", out.age(counts.oldest_in_progress_age)),
    ]
    out.table(("records", "count"), rows)


@main.command()
@click.option("--store", "url", required=True, help="Store URL.")
@click.option("--batch", default=1000, show_default=True, help="Records deleted per batch.")
@out.format_option
def purge(url: str, batch: int, fmt: str) -> None:
    """Delete expired records, in batches, until none are left."""
    total = 0
    with _store(url) as store:
        while True:
            n = store.purge_expired(limit=batch)
            total += n
            if n < batch:
                break
    if fmt == "json":
        out.echo_json({"purged": total})
    else:
        click.echo(f"purged {total} expired records")


@main.command()
@click.option(
    "--call",
    "target",
    required=True,
    help="module:function that runs the operation for one key (it calls idem.run_phases).",
)
@click.option(
    "--stalled",
    is_flag=True,
    help="Find the stalled operations in the store (--store) instead of naming their keys.",
)
@click.option("--store", "url", default=None, help="Store URL, with --stalled.")
@click.option(
    "--scope",
    default=None,
    help="With --stalled: only this scope (default: every scope if the function takes scope=,"
    " else the empty scope).",
)
@out.format_option
@click.argument("keys", nargs=-1)
def recover(
    target: str, stalled: bool, url: str | None, scope: str | None, fmt: str, keys: tuple[str, ...]
) -> None:
    """Resume interrupted multi-step operations from their last recovery point.

    TARGET is your function taking one idempotency key (and, if it declares one, a ``scope``
    keyword: passed with --scope or --stalled); it declares the phases and calls
    ``idem.run_phases``, which takes over the crashed holder's claim (once its lease runs out,
    waiting if the Idempotency has wait=) and continues after the last committed phase. A key
    that already completed is replayed, so recovering twice is harmless.

    With --stalled, the keys are found in the store: in-progress records with a recovery point
    whose lease ran out (a worker crashed, or a phase failed, mid-operation).
    """
    if stalled == bool(keys):
        raise click.UsageError("name the KEYs to recover, or pass --stalled (not both)")
    if stalled and url is None:
        raise click.UsageError("--stalled needs --store URL: the store to look in")
    fn = _load(target)
    takes_scope = _takes_scope(fn)
    if scope is not None and not takes_scope and not stalled:
        raise click.UsageError(f"--scope: {target} takes no scope= argument")
    if stalled:
        assert url is not None
        found = _stalled(url, scope if scope is not None or takes_scope else "")
    else:
        found = [(scope or "", key) for key in keys]
    # Named keys without --scope: called as before, fn(key), whatever the function takes.
    pass_scope = takes_scope and (stalled or scope is not None)
    results, failed = [], 0
    for record_scope, key in found:
        try:
            result = fn(key, scope=record_scope) if pass_scope else fn(key)
        except Exception as exc:  # report every key, then fail
            failed += 1
            error = f"{type(exc).__name__}: {exc}"
            results.append({"scope": record_scope, "key": key, "done": False, "error": error})
            if fmt == "table":
                click.echo(f"{key}: failed: {error}", err=True)
        else:
            results.append({"scope": record_scope, "key": key, "done": True, "result": result})
            if fmt == "table":
                click.echo(f"{key}: done: {result!r}")
    if fmt == "json":
        out.echo_json(results)
    elif not found:
        click.echo("no stalled operations")
    if failed:
        raise click.ClickException(f"{failed} of {len(found)} operations did not complete")


def _load(target: str) -> Callable[..., Any]:
    import importlib
    import sys

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise click.BadParameter("use module:function", param_hint="--call")
    sys.path.insert(0, "")  # the current directory, as `python -m` would
    try:
        fn: Callable[..., Any] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise click.ClickException(f"cannot load {target}: {exc}") from exc
    return fn


def _takes_scope(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` declares a ``scope`` parameter (``**kwargs`` does not count: it may
    forward the argument somewhere that does not expect it)."""
    try:
        parameter = inspect.signature(fn).parameters.get("scope")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind is not inspect.Parameter.POSITIONAL_ONLY


def _stalled(url: str, scope: str | None) -> list[tuple[str, str]]:
    """(scope, key) of every stalled phased operation: in progress, a recovery point, the
    lease run out by the store's clock. Found through scan's in-progress index."""
    found = []
    for record, now in _listing(
        url, state=State.IN_PROGRESS.value, scope=scope, older_than=0, limit=0
    ):
        lease = record.lease_until
        if record.recovery_point is not None and lease is not None and lease <= now:
            found.append((record.scope, record.key))
    return list(dict.fromkeys(found))  # SCAN (Redis) may list a record twice


def _register_gateway() -> None:
    # The command's module imports only click; uvicorn and aiohttp load when it runs.
    from idempo.gateway.cli import gateway

    main.add_command(gateway)


_register_gateway()

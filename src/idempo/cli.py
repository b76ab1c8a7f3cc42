"""The ``idempo`` command: the demo, and a few operator tools over any store URL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from idempo import open_store
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
def migrate(url: str) -> None:
    """Create or upgrade the store's schema (run once before production traffic)."""
    with _store(url) as store:
        store.migrate()
    click.echo("migrated")


@main.group()
def keys() -> None:
    """Inspect or delete single records."""


@keys.command("show")
@click.option("--store", "url", required=True, help="Store URL.")
@click.option("--scope", default="", help="The record's scope.")
@click.argument("key")
def keys_show(url: str, scope: str, key: str) -> None:
    """Show the record of KEY."""
    with _store(url) as store:
        record = store.get(scope, key)
    if record is None:
        raise click.ClickException(f"no record for key {key!r} in scope {scope!r}")
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
def keys_delete(url: str, scope: str, key: str) -> None:
    """Delete the record of KEY (the next call with it runs again)."""
    with _store(url) as store:
        deleted = store.delete(scope, key)
    if not deleted:
        raise click.ClickException(f"no record for key {key!r} in scope {scope!r}")
    click.echo("deleted")


@main.command()
@click.option("--store", "url", required=True, help="Store URL.")
@click.option("--batch", default=1000, show_default=True, help="Records deleted per batch.")
def purge(url: str, batch: int) -> None:
    """Delete expired records, in batches, until none are left."""
    total = 0
    with _store(url) as store:
        while True:
            n = store.purge_expired(limit=batch)
            total += n
            if n < batch:
                break
    click.echo(f"purged {total} expired records")


@main.command()
@click.option(
    "--call",
    "target",
    required=True,
    help="module:function that runs the operation for one key (it calls idem.run_phases).",
)
@click.argument("keys", nargs=-1, required=True)
def recover(target: str, keys: tuple[str, ...]) -> None:
    """Resume interrupted multi-step operations from their last recovery point.

    TARGET is your function taking one idempotency key; it declares the phases and calls
    ``idem.run_phases``, which takes over the crashed holder's claim (once its lease runs out,
    waiting if the Idempotency has wait=) and continues after the last committed phase. A key
    that already completed is replayed, so recovering twice is harmless.
    """
    import importlib
    import sys

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise click.BadParameter("use module:function", param_hint="--call")
    sys.path.insert(0, "")  # the current directory, as `python -m` would
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise click.ClickException(f"cannot load {target}: {exc}") from exc
    failed = 0
    for key in keys:
        try:
            result = fn(key)
        except Exception as exc:  # report every key, then fail
            failed += 1
            click.echo(f"{key}: failed: {type(exc).__name__}: {exc}", err=True)
        else:
            click.echo(f"{key}: done: {result!r}")
    if failed:
        raise click.ClickException(f"{failed} of {len(keys)} operations did not complete")


def _register_gateway() -> None:
    # The command's module imports only click; uvicorn and httpx load when it runs.
    from idempo.gateway.cli import gateway

    main.add_command(gateway)


_register_gateway()

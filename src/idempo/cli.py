"""The ``idempo`` command: the demo, and a few operator tools over any store URL."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable
from pathlib import Path

import click

from idempo import Idempotency, open_store
from idempo.errors import IdempoError

__all__ = ["main"]


@click.group()
@click.version_option(package_name="idempo")
def main() -> None:
    """idempo: make operations safe to retry."""


class _LostReply(Exception):
    """The effect happened, but the caller never heard back."""


@main.command()
@click.option("--orders", "-n", default=200, show_default=True, help="Orders to charge.")
@click.option("--loss", default=0.3, show_default=True, help="Share of replies lost (0-1).")
@click.option("--seed", default=7, show_default=True, help="Random seed for the losses.")
def demo(orders: int, loss: float, seed: int) -> None:
    """Charge orders over a link that loses replies: naive retries vs idempo.

    Every charge takes effect, but its reply is lost with probability LOSS, so the caller
    retries. Without idempo each retry charges again; with idempo (SQLite store) a retry replays
    the first charge. Exits 0 only if idempo's total is exact.
    """
    if not 0 <= loss < 1:
        raise click.BadParameter("must be in [0, 1)", param_hint="--loss")
    amount = 10
    expected = orders * amount

    def run(charge_fn: Callable[[str, int], None]) -> int:
        """Charge every order, retrying each until its reply arrives; returns the retries."""
        retries = 0
        for i in range(orders):
            while True:
                try:
                    charge_fn(f"order-{i}", amount)
                    break
                except _LostReply:
                    retries += 1
        return retries

    # Naive: every attempt charges.
    ledger: list[int] = []
    rng = random.Random(seed)

    def naive_charge(order_id: str, cents: int) -> None:
        ledger.append(cents)
        if rng.random() < loss:
            raise _LostReply

    naive_retries = run(naive_charge)
    naive_total = sum(ledger)

    # idempo: the key is the order id; a lost reply is retried with the same key.
    with tempfile.TemporaryDirectory() as tmp:
        idem = Idempotency(f"sqlite:///{Path(tmp) / 'idempo.db'}")
        idem_ledger: list[int] = []
        rng2 = random.Random(seed)
        executions = 0

        @idem.idempotent(key=lambda order_id, cents: order_id)
        def charge(order_id: str, cents: int) -> dict[str, int | str]:
            nonlocal executions
            executions += 1
            idem_ledger.append(cents)
            return {"order": order_id, "charged": cents}

        def lossy_charge(order_id: str, cents: int) -> None:
            charge(order_id, cents)  # the effect (or its replay) happens...
            if rng2.random() < loss:
                raise _LostReply  # ...but the reply is lost on the way back

        idem_retries = run(lossy_charge)
        idem.close()
    idem_total = sum(idem_ledger)

    click.echo(f"{orders} orders of {amount}, {loss:.0%} of replies lost (seed {seed})")
    click.echo(f"{'':10}{'total':>10}{'retries':>10}{'charges':>10}")
    click.echo(f"{'expected':10}{expected:>10}{'':>10}{orders:>10}")
    click.echo(f"{'naive':10}{naive_total:>10}{naive_retries:>10}{len(ledger):>10}")
    click.echo(f"{'idempo':10}{idem_total:>10}{idem_retries:>10}{executions:>10}")
    click.echo(f"idempo replayed {idem_retries} retries from its store instead of charging again.")
    if idem_total != expected:
        raise click.ClickException(f"idempo total {idem_total} != expected {expected}")
    click.echo("idempo total is exact.")


@main.command()
@click.option("--store", "url", required=True, help="Store URL.")
def migrate(url: str) -> None:
    """Create or upgrade the store's schema (run once before production traffic)."""
    store = open_store(url)
    try:
        store.migrate()
    finally:
        store.close()
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
    store = open_store(url)
    try:
        record = store.get(scope, key)
    finally:
        store.close()
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
    store = open_store(url)
    try:
        deleted = store.delete(scope, key)
    finally:
        store.close()
    if not deleted:
        raise click.ClickException(f"no record for key {key!r} in scope {scope!r}")
    click.echo("deleted")


@main.command()
@click.option("--store", "url", required=True, help="Store URL.")
@click.option("--batch", default=1000, show_default=True, help="Records deleted per batch.")
def purge(url: str, batch: int) -> None:
    """Delete expired records, in batches, until none are left."""
    store = open_store(url)
    total = 0
    try:
        while True:
            n = store.purge_expired(limit=batch)
            total += n
            if n < batch:
                break
    except IdempoError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    click.echo(f"purged {total} expired records")

"""The ``idempo gateway`` command."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import click

from idempo.gateway.config import ConfigError, GatewayConfig, load

__all__ = ["gateway"]


@click.command()
@click.option("--upstream", metavar="URL", help="The service to protect (http://host:port).")
@click.option("--store", metavar="URL", help="The store (redis://, postgresql://, sqlite:///...).")
@click.option("--listen", metavar="HOST:PORT", help="Where clients connect [127.0.0.1:8080].")
@click.option("--admin", metavar="HOST:PORT", help="/healthz, /readyz and /metrics.")
@click.option("--config", "config_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="A TOML file: routes, scope, ttl, lease, limits, timeouts.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1), help="Worker processes [1].")
@click.option(
    "--required/--optional", default=None, help="Answer 400 to a guarded request with no key."
)
@click.option("--log-level", default="warning", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))  # fmt: skip
def gateway(config_file: str | None, log_level: str, **flags: Any) -> None:
    """Give any HTTP service Idempotency-Key semantics, as a reverse proxy.

    Flags override the file. SIGTERM finishes the requests in flight, then exits.
    """
    try:
        config = load(config_file) if config_file else GatewayConfig()
        config = replace(config, **{k: v for k, v in flags.items() if v is not None}).validate()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        from idempo.gateway.server import serve
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise click.ClickException(
            f"the gateway needs its extra ({exc.name} is missing): pip install 'idempo[gateway]'"
        ) from exc
    try:
        code = serve(config, log_level=log_level)
    except OSError as exc:
        raise click.ClickException(f"cannot listen: {exc.strerror or exc}") from exc
    raise SystemExit(code)

"""What every command shares: finding the database, and turning expected errors into one line."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from pgshield.errors import ShieldError

F = TypeVar("F", bound=Callable[..., Any])

dsn_option = click.option(
    "--dsn",
    help="Postgres connection string. Default: $PGSHIELD_DSN, then $DATABASE_URL, "
    "else the embedded dev cluster.",
)


def resolve_dsn(dsn: str | None, *, apply_migrations: bool = True) -> str:
    """``--dsn``, then ``$PGSHIELD_DSN``, then ``$DATABASE_URL``, else the dev cluster.

    The dev cluster is started (and prepared) when needed, and announced on stderr.
    """
    for candidate in (dsn, os.environ.get("PGSHIELD_DSN"), os.environ.get("DATABASE_URL")):
        if candidate:
            return candidate
    from pgshield.embedded import dev_cluster
    from pgshield.provision import prepare_cluster

    cluster = dev_cluster()
    click.echo(f"Using the embedded dev cluster in {cluster.base} (port {cluster.port})", err=True)
    cluster.start()
    return prepare_cluster(cluster, apply_migrations=apply_migrations)


def expected_errors(func: F) -> F:
    """Print ShieldErrors as one ``Error: ...`` line and exit 1, without a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ShieldError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]

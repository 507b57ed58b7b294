"""What every command shares: finding the database, and turning expected errors into one line."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
import psycopg

from pgshield.errors import SCHEMA_HINT, NotAllowed, ShieldError, translate

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


def one_line(exc: ShieldError | psycopg.Error) -> str:
    """The error as one line; a role that may not use schema pgshield is told which to use."""
    err = translate(exc) if isinstance(exc, psycopg.Error) else exc
    if (
        isinstance(err, NotAllowed)
        and err.hint is None
        and "permission denied for schema pgshield" in str(err)
    ):
        err.hint = SCHEMA_HINT
    return str(err)


def expected_errors(func: F) -> F:
    """Print database and pgshield errors as one ``Error: ...`` line and exit 1, no traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ShieldError, psycopg.Error) as exc:
            raise click.ClickException(one_line(exc)) from exc

    return wrapper  # type: ignore[return-value]

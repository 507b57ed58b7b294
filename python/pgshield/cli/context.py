"""What every command shares: finding the database, and turning expected errors into one line."""

from __future__ import annotations

import os
import re
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


_URI_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s\"']*:)(?P<pw>[^@\s\"']+)(?=@)", re.I
)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def dsn_passwords(*dsns: str | None) -> list[str]:
    """The passwords written in these connection strings, found without parsing them (a DSN
    libpq cannot parse is exactly the one whose error message may quote it)."""
    found: list[str] = []
    for dsn in dsns:
        for rx in (_URI_PASSWORD, _KV_PASSWORD):
            found += [m.group("pw").strip("'") for m in rx.finditer(dsn or "")]
    return [pw for pw in found if pw]


def masked(text: str, passwords: list[str]) -> str:
    """``text`` with every password of ``passwords`` and every URI or key=value password
    replaced by ``***``."""
    for pw in sorted(set(passwords), key=len, reverse=True):
        text = text.replace(pw, "***")
    text = _URI_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    return _KV_PASSWORD.sub(lambda m: m.group("head") + "***", text)


def expected_errors(func: F) -> F:
    """Print database and pgshield errors as one ``Error: ...`` line and exit 1, no traceback.

    The line never shows a password: libpq quotes the part of a connection string it could not
    parse, which may be the password itself."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ShieldError, psycopg.Error) as exc:
            secrets = dsn_passwords(
                kwargs.get("dsn"), os.environ.get("PGSHIELD_DSN"), os.environ.get("DATABASE_URL")
            )
            raise click.ClickException(masked(one_line(exc), secrets)) from exc

    return wrapper  # type: ignore[return-value]

"""What every command shares: finding the database, and turning expected errors into one line."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
import psycopg
from psycopg import conninfo

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
    given = used_dsn(dsn)
    if given is not None:
        return given
    from pgshield.embedded import dev_cluster
    from pgshield.provision import prepare_cluster

    cluster = dev_cluster()
    click.echo(f"Using the embedded dev cluster in {cluster.base} (port {cluster.port})", err=True)
    cluster.start()
    return prepare_cluster(cluster, apply_migrations=apply_migrations)


NOT_INSTALLED_HINT = (
    "is the pack installed (and up to date) in this database? `pgshield status` lists the"
    " pending migrations, `pgshield migrate` applies them"
)


def one_line(exc: ShieldError | psycopg.Error) -> str:
    """The error as one line; a role that may not use schema pgshield is told which to use,
    and a function, table or schema of the pack that is not there points at the migrations."""
    err = translate(exc) if isinstance(exc, psycopg.Error) else exc
    if (
        isinstance(err, NotAllowed)
        and err.hint is None
        and "permission denied for schema pgshield" in str(err)
    ):
        err.hint = SCHEMA_HINT
    elif (err.sqlstate in ("42883", "42P01", "3F000") and "pgshield" in str(err)) or (
        err.sqlstate == "42883" and "public." in str(err)
    ):
        err.hint = NOT_INSTALLED_HINT
    return str(err)


# Passwords in connection strings libpq could not parse (then nothing is known for sure):
# a URI's user:password@ (quotes and all), a URI's ?password= or &password=, a key=value
# password (quoted, or up to the next key=).
_URI_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?=@)", re.I)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&#\s]+)", re.I)
_KV_PASSWORD = re.compile(
    r"(?P<head>(?<![?&\w])password\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|.+?)(?=\s+\w+\s*=|\s*$)",
    re.I,
)
_FORMS = (_URI_PASSWORD, _QUERY_PASSWORD, _KV_PASSWORD)
# A literal replace of a shorter password would mangle the message's own words.
_MIN_LITERAL = 4


def masked(text: str, dsn: str | None) -> str:
    """``text`` (an error message) with no password of ``dsn`` left in it.

    A DSN libpq parses gives its password, replaced wherever it appears. For one it cannot
    parse, libpq's message quotes the token it stopped at: every quoted part of the message is
    then replaced, and so is every password the patterns find in the DSN."""
    secrets: list[str] = []
    try:
        password = conninfo.conninfo_to_dict(dsn or "").get("password")
        if password:
            secrets.append(str(password))
    except psycopg.Error:
        text = re.sub(r'"[^"]*"', '"***"', text)
        for rx in _FORMS:
            secrets += [m.group("pw").strip("'") for m in rx.finditer(dsn or "")]
    for secret in sorted({x for x in secrets if len(x) >= _MIN_LITERAL}, key=len, reverse=True):
        text = text.replace(secret, "***")
    for rx in _FORMS:
        text = rx.sub(lambda m: m.group("head") + "***", text)
    return text


def used_dsn(dsn: str | None) -> str | None:
    """The DSN a command connects with (as resolve_dsn picks it), None for the dev cluster."""
    for candidate in (dsn, os.environ.get("PGSHIELD_DSN"), os.environ.get("DATABASE_URL")):
        if candidate:
            return candidate
    return None


def expected_errors(func: F) -> F:
    """Print database, pgshield and OS errors as one ``Error: ...`` line and exit 1, no traceback.

    The line never shows a password: libpq quotes the part of a connection string it could not
    parse, which may be the password itself."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ShieldError, psycopg.Error) as exc:
            raise click.ClickException(masked(one_line(exc), used_dsn(kwargs.get("dsn")))) from exc
        except OSError as exc:  # a port in use, a host that does not resolve, a path not there
            raise click.ClickException(masked(str(exc), used_dsn(kwargs.get("dsn")))) from exc

    return wrapper  # type: ignore[return-value]

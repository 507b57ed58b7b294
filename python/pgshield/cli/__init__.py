"""The ``pgshield`` command line: a thin layer over the library."""

from __future__ import annotations

from pathlib import Path

import click
import psycopg

from pgshield import __version__
from pgshield.cli.context import dsn_option, expected_errors, resolve_dsn
from pgshield.cli.db import db
from pgshield.cli.output import emit, emit_json, json_option
from pgshield.client import connect
from pgshield.migrations import Migration, pinned_search_path
from pgshield.migrations import export as export_migrations
from pgshield.migrations import migrate as run_migrations
from pgshield.migrations import status as migration_status
from pgshield.modules import MODULES, load
from pgshield.resources import compat_sql, release_of

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="pgshield")
def main() -> None:
    """pgshield: guard rails that live in Postgres.

    Example: pgshield migrate --dsn postgresql://postgres@localhost:54322/postgres
    """


main.add_command(db)
for _module in MODULES:  # one click group per module, from the registry
    if _module.cli:
        main.add_command(load(_module.cli))  # type: ignore[arg-type]
main.add_command(load("pgshield.cli.maintenance:metrics"))  # type: ignore[arg-type]


@main.command()
@dsn_option
@click.option("--dry-run", is_flag=True, help="Print what would run; change nothing.")
@click.option(
    "--with-compat",
    is_flag=True,
    help="Plain Postgres only: first apply the stub of what Supabase provides (roles anon,"
    " authenticated, service_role, authenticator; auth.users, auth.uid()). Refused on Supabase.",
)
@json_option
@expected_errors
def migrate(dsn: str | None, dry_run: bool, with_compat: bool, as_json: bool) -> None:
    """Apply the pack's pending migrations, each in its own transaction.

    Example: pgshield migrate --dsn "$DATABASE_URL" --dry-run
    """
    dsn = resolve_dsn(dsn, apply_migrations=False)
    with connect(dsn, timeout=10) as conn:
        with pinned_search_path(conn):
            if with_compat and not dry_run:
                conn.execute(compat_sql())
            before = installed_version(conn)
        shown = not as_json and not dry_run

        def announce(m: Migration) -> None:
            click.echo(f"applying {m.filename} ({release_of(m.filename) or 'unreleased'})")

        done = run_migrations(
            conn,
            dry_run=dry_run,
            progress=announce if shown else None,
            platform_check=not (dry_run and with_compat),
        )
        with pinned_search_path(conn):
            after = before if dry_run else installed_version(conn)
    rows = [
        {
            "version": m.version,
            "name": m.name,
            "file": m.filename,
            "release": release_of(m.filename),
        }
        for m in done
    ]
    if as_json:
        emit_json({"dry_run": dry_run, "from": before, "to": after, "migrations": rows})
    elif dry_run:
        click.echo(f"pack installed: {before or 'none'}")
        click.echo("\n".join(f"would apply {r['file']}" for r in rows) or "nothing to apply")
    elif rows:
        click.echo(f"applied {len(rows)} migration(s): pack {before or 'none'} -> {after}")
    else:
        click.echo(f"nothing to apply: pack {after}")


def installed_version(conn: psycopg.Connection) -> str | None:
    """The pack version a database reports (None before the core migration)."""
    row = conn.execute("select to_regprocedure('pgshield.version()') is not null").fetchone()
    if not (row and row[0]):
        return None
    row = conn.execute("select pgshield.version()").fetchone()
    return row[0] if row else None


@main.command()
@dsn_option
@json_option
@expected_errors
def status(dsn: str | None, as_json: bool) -> None:
    """List the pack's migrations, applied and pending.

    Example: pgshield status --json
    """
    dsn = resolve_dsn(dsn, apply_migrations=False)
    with connect(dsn, timeout=10) as conn:
        states = migration_status(conn)
    rows = [
        {
            "version": s.migration.version,
            "name": s.migration.name,
            "state": "edited" if s.edited else ("applied" if s.applied else "pending"),
        }
        for s in states
    ]
    emit(rows, as_json)


@main.command()
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The Supabase project's supabase/migrations directory.",
)
@json_option
@expected_errors
def export(target: Path, as_json: bool) -> None:
    """Copy the pack's migrations into a Supabase project (then run `supabase db push`).

    Example: pgshield export --to ../my-app/supabase/migrations
    """
    result = export_migrations(target)
    if as_json:
        emit_json(result)
        return
    for name in result.copied:
        click.echo(f"copied {name}")
    for name in result.identical:
        click.echo(f"identical {name}")
    click.echo(f"{len(result.copied)} copied, {len(result.identical)} already there")


@main.command()
@dsn_option
@json_option
@expected_errors
def doctor(dsn: str | None, as_json: bool) -> None:
    """Check a database: pack version, pending migrations, pg_cron and pgtap.

    Example: pgshield doctor --dsn "$DATABASE_URL"
    """
    from pgshield.doctor import diagnose

    dsn = resolve_dsn(dsn)
    checks = diagnose(dsn)
    emit(checks, as_json, ["check", "status", "detail"])


@main.command()
@click.option(
    "--dsn",
    help="Run the tour against this database instead (it creates the tour's objects there)."
    " Default: a throw-away embedded cluster; $PGSHIELD_DSN and $DATABASE_URL are not used.",
)
@expected_errors
def demo(dsn: str | None) -> None:
    """A short tour of every module on a throw-away embedded database.

    Example: pgshield demo
    """
    from pgshield.demo import run_demo

    run_demo(dsn, click.echo)

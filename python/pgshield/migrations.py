"""Migration runner compatible with the Supabase CLI.

Applied versions are recorded in ``supabase_migrations.schema_migrations (version, statements,
name)`` as ``supabase db push`` does, so either tool can take over from the other. pgshield also
keeps a SHA-256 per file in ``supabase_migrations.pgshield_checksums`` and refuses to run when an
applied file was edited. Each migration runs in its own transaction holding a transaction-scoped
advisory lock, so concurrent runners (even through Supavisor transaction mode) apply each
migration exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import pq

from pgshield.errors import MigrationError, translate
from pgshield.migration_checks import (
    refuse_foreign_schema,
    refuse_foreign_types,
    refuse_missing_platform,
)
from pgshield.resources import migrations_dir

NAME_RE = re.compile(r"^(?P<version>\d{14})_(?P<name>[a-z0-9]+(?:_[a-z0-9]+)*)\.sql$")
LOCK_SQL = "select pg_advisory_xact_lock(hashtextextended('pgshield.migrate', 0::int8))"
PIN_SEARCH_PATH = "set local search_path = pg_catalog, pg_temp"
BOOKKEEPING_SQL = """
create schema if not exists supabase_migrations;
create table if not exists supabase_migrations.schema_migrations (
  version text not null primary key,
  statements text[],
  name text
);
-- A history table made by an older Supabase CLI has only the version (the CLI adds the other
-- columns as it goes); altered only when one is missing (ALTER TABLE locks it even then).
do $bk$
begin
  if not exists (select 1 from pg_attribute a
                  where a.attrelid = 'supabase_migrations.schema_migrations'::regclass
                    and a.attname = 'statements' and not a.attisdropped) then
    alter table supabase_migrations.schema_migrations add column statements text[];
  end if;
  if not exists (select 1 from pg_attribute a
                  where a.attrelid = 'supabase_migrations.schema_migrations'::regclass
                    and a.attname = 'name' and not a.attisdropped) then
    alter table supabase_migrations.schema_migrations add column name text;
  end if;
end
$bk$;
create table if not exists supabase_migrations.pgshield_checksums (
  version text not null primary key,
  name text not null,
  sha256 text not null,
  applied_at timestamptz not null default now()
);
"""


# Checksums a migration file had on main after it had landed, before it was restored to the
# content first applied (that edit belonged in a new migration, which now carries it and is
# idempotent for databases that ran the edited file). A database that recorded one of these
# ran that version: it is not refused as edited.
SUPERSEDED: dict[str, frozenset[str]] = {
    # 20261201224000_create_breaker.sql with the tombstones of 20261202030000 written into it.
    "20261201224000": frozenset(
        {"658c32c11895ae50d792298f9a68ac025ce0cf2606f3125662ac86898cba29c6"}
    ),
}


@dataclass(frozen=True)
class Migration:
    """One migration file: ``<14-digit UTC timestamp>_<name>.sql``."""

    version: str
    name: str
    path: Path

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class MigrationState:
    """A migration and whether the database has it."""

    migration: Migration
    applied: bool
    edited: bool  # applied, but the file's checksum differs from the recorded one


def discover(directory: Path | None = None) -> list[Migration]:
    """The migrations in ``directory`` (default: the pack's), checked and in version order."""
    directory = Path(directory) if directory else migrations_dir()
    found: dict[str, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = NAME_RE.match(path.name)
        if not match:
            raise MigrationError(
                f"{path.name}: migration names must be <14-digit UTC timestamp>_<snake_name>.sql"
            )
        version = match["version"]
        if version in found:
            raise MigrationError(f"{path.name}: version {version} is used twice")
        found[version] = Migration(version, match["name"], path)
    return [found[v] for v in sorted(found)]


_TOKEN = re.compile(
    r"""(?P<dollar>\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)
      | (?P<quote>'(?:[^']|'')*')
      | (?P<ident>"(?:[^"]|"")*")
      | (?P<line>--[^\n]*)
      | (?P<block>/\*.*?\*/)
      | (?P<semi>;)""",
    re.VERBOSE | re.DOTALL,
)


def split_statements(sql: str) -> list[str]:
    """Split SQL into statements, respecting quotes, dollar quotes and comments."""
    statements: list[str] = []
    start = pos = 0
    while True:
        match = _TOKEN.search(sql, pos)
        if match is None:
            break
        if match["dollar"]:
            end = sql.find(match["dollar"], match.end())
            pos = len(sql) if end < 0 else end + len(match["dollar"])
            continue
        if match["semi"]:
            stmt = sql[start : match.start()].strip()
            if _has_code(stmt):
                statements.append(stmt)
            start = match.end()
        pos = match.end()
    tail = sql[start:].strip()
    if _has_code(tail):
        statements.append(tail)
    return statements


def _has_code(stmt: str) -> bool:
    without = re.sub(r"--[^\n]*|/\*.*?\*/", "", stmt, flags=re.DOTALL)
    return bool(without.strip())


@contextlib.contextmanager
def pinned_search_path(conn: psycopg.Connection) -> Iterator[None]:
    """Run the block with search_path pinned to ``pg_catalog, pg_temp``, changing no session.

    What the runner sends in the block then resolves no function, operator or type through a
    schema other roles can write to (CVE-2018-1058: a look-alike ``public.unnest(text[])``
    would otherwise run as the migrator). On an autocommit connection outside a transaction
    the block is one transaction and the pin a ``SET LOCAL``: nothing outlives it, so a
    transaction pooler (Supavisor, PgBouncer), which may hand every transaction another server
    connection, is left with no server connection whose search_path was changed (a session
    ``SET`` landed on one and its restore on another). Inside a transaction (the caller's) the
    caller's value is put back before it ends. Each migration pins itself in its own
    transaction (``migrate``), so do not wrap ``migrate`` in this.
    """
    if conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE:
        with conn.transaction():
            conn.execute(PIN_SEARCH_PATH)
            yield
        return
    row = conn.execute("show search_path").fetchone()
    saved = row[0] if row else None
    conn.execute("set search_path = pg_catalog, pg_temp")
    try:
        yield
    finally:
        # Inside a transaction (the caller's, or psycopg's own on a connection that is not
        # autocommit) the value is put back in it: at commit the session keeps the caller's
        # path. A failed transaction undoes the SET itself when it is rolled back.
        if (
            saved is not None
            and not conn.closed
            and conn.info.transaction_status != pq.TransactionStatus.INERROR
        ):
            conn.execute("select pg_catalog.set_config('search_path', %s, false)", (saved,))


def _applied(conn: psycopg.Connection) -> tuple[set[str], dict[str, str]]:
    """Applied versions and the checksums pgshield recorded for them."""
    exists = conn.execute(
        "select to_regclass('supabase_migrations.schema_migrations') is not null,"
        " to_regclass('supabase_migrations.pgshield_checksums') is not null"
    ).fetchone()
    assert exists is not None
    versions: set[str] = set()
    sums: dict[str, str] = {}
    if exists[0]:
        versions = {
            r[0] for r in conn.execute("select version from supabase_migrations.schema_migrations")
        }
    if exists[1]:
        sums = dict(
            conn.execute(
                "select version, sha256 from supabase_migrations.pgshield_checksums"
            ).fetchall()
        )
    return versions, sums


def status(
    conn: psycopg.Connection, migrations: list[Migration] | None = None
) -> list[MigrationState]:
    """Every pack migration with whether it is applied, and whether its file was edited since."""
    migrations = discover() if migrations is None else migrations
    try:
        with pinned_search_path(conn):
            versions, sums = _applied(conn)
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return [
        MigrationState(
            m,
            applied=m.version in versions,
            edited=m.version in sums
            and sums[m.version] != m.sha256
            and sums[m.version] not in SUPERSEDED.get(m.version, frozenset()),
        )
        for m in migrations
    ]


def _refuse_edited(states: list[MigrationState]) -> None:
    edited = [s.migration.filename for s in states if s.edited]
    if edited:
        raise MigrationError(
            f"applied migration file(s) changed since they were applied: {', '.join(edited)}",
            hint="migrations are immutable once applied: restore the file and add a new migration",
        )


def migrate(
    conn: psycopg.Connection,
    *,
    dry_run: bool = False,
    migrations: list[Migration] | None = None,
    progress: Callable[[Migration], None] | None = None,
    platform_check: bool = True,
) -> list[Migration]:
    """Apply pending migrations in order, each in its own transaction; return those applied.

    ``conn`` must be in autocommit mode (pgshield opens one transaction per migration).
    With ``dry_run`` nothing is executed and the pending migrations are returned, after the
    same checks as a real run (a run that would be refused is refused). ``platform_check``
    False skips the test for what Supabase provides, for a dry run before the compat stub
    (which provides it) is applied.
    """
    migrations = discover() if migrations is None else migrations
    states = status(conn, migrations)
    _refuse_edited(states)
    if not dry_run and not conn.autocommit:
        raise MigrationError("migrate() needs a connection in autocommit mode")
    if not dry_run and conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise MigrationError(
            "migrate() runs each migration in its own transaction: call it outside one"
        )
    pending = [s.migration for s in states if not s.applied]
    if pending:
        with pinned_search_path(conn):
            _refuse_reverted(conn, pending)
            refuse_foreign_schema(conn)
            if platform_check:
                refuse_missing_platform(conn)
            refuse_foreign_types(conn, [m.sql for m in pending])
    if dry_run:
        return pending
    return _apply(conn, states, progress)


def _refuse_reverted(conn: psycopg.Connection, pending: list[Migration]) -> None:
    """Refuse pending migrations pgshield applied before, whose history rows were removed.

    ``supabase db push`` suggests ``supabase migration repair --status reverted`` for versions
    its local folder lacks, and that deletes their ``schema_migrations`` rows while the schema
    they made stays: applying them again would put released functions back over newer ones
    (and the pack's version back). Only pgshield's checksum row remembers them. Once schema
    pgshield is gone too (the pack dropped to install it again), they are applied again.
    """
    _, sums = _applied(conn)
    row = conn.execute("select to_regnamespace('pgshield') is not null").fetchone()
    if not (row and row[0]):
        return
    reverted = [m for m in pending if m.version in sums]
    if reverted:
        names = ", ".join(m.filename for m in reverted[:3]) + (" ..." if len(reverted) > 3 else "")
        raise MigrationError(
            f"{len(reverted)} migration(s) pgshield applied are no longer in"
            f" supabase_migrations.schema_migrations (marked reverted?): {names}",
            hint="their schema is still there: record them again with `supabase migration repair"
            " --status applied <version> ...`, and keep the files in supabase/migrations"
            " (`pgshield export --to supabase/migrations`) so that `supabase db push` knows them",
        )


def _apply(
    conn: psycopg.Connection,
    states: list[MigrationState],
    progress: Callable[[Migration], None] | None,
) -> list[Migration]:
    applied: list[Migration] = []
    for migration in (s.migration for s in states if not s.applied):
        try:
            with conn.transaction():
                # First: the lock's hashtextextended and the bookkeeping resolve nothing
                # through a schema other roles can write to either.
                conn.execute(PIN_SEARCH_PATH)
                conn.execute(LOCK_SQL)
                conn.execute(BOOKKEEPING_SQL)
                versions, sums = _applied(conn)
                if migration.version in versions:
                    if sums.get(migration.version, migration.sha256) != migration.sha256:
                        raise MigrationError(
                            f"applied migration file changed: {migration.filename}"
                        )
                    continue  # a concurrent runner applied it
                if progress:
                    progress(migration)
                # Resolve nothing through a schema other roles can write to (CVE-2018-1058:
                # a look-alike public.format(text, text) would otherwise run as the migrator).
                conn.execute(PIN_SEARCH_PATH)
                conn.execute(migration.sql)
                conn.execute(PIN_SEARCH_PATH)  # whatever the file set, for the bookkeeping
                record(conn, migration)
        except psycopg.Error as exc:
            err = translate(exc)
            raise MigrationError(
                f"{migration.filename}: {err.args[0] if err.args else err}",
                sqlstate=err.sqlstate,
                hint=err.hint,
            ) from exc
        applied.append(migration)
    return applied


def record(conn: psycopg.Connection, migration: Migration) -> None:
    """Record ``migration`` as applied, as the Supabase CLI does, plus pgshield's checksum."""
    conn.execute(
        "insert into supabase_migrations.schema_migrations (version, statements, name)"
        " values (%s, %s, %s) on conflict (version) do nothing",
        (migration.version, split_statements(migration.sql), migration.name),
    )
    conn.execute(
        "insert into supabase_migrations.pgshield_checksums (version, name, sha256)"
        " values (%s, %s, %s) on conflict (version) do nothing",
        (migration.version, migration.name, migration.sha256),
    )


@dataclass(frozen=True)
class ExportResult:
    copied: list[str]
    identical: list[str]


def export(target: Path, migrations: list[Migration] | None = None) -> ExportResult:
    """Copy the pack's migration files into a Supabase project's ``supabase/migrations``.

    Identical files are skipped; a differing file of the same name is refused before anything
    is written.
    """
    migrations = discover() if migrations is None else migrations
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise MigrationError(f"{target} exists and is not a directory")
    copied: list[str] = []
    identical: list[str] = []
    conflicts: list[str] = []
    for m in migrations:
        dest = target / m.filename
        if dest.exists():
            (identical if dest.read_bytes() == m.path.read_bytes() else conflicts).append(
                m.filename
            )
        else:
            copied.append(m.filename)
    if conflicts:
        raise MigrationError(
            f"{target} already has different file(s) with the same name: {', '.join(conflicts)}",
            hint="nothing was copied; remove or rename those files first",
        )
    target.mkdir(parents=True, exist_ok=True)
    for m in migrations:
        if m.filename in copied:
            shutil.copyfile(m.path, target / m.filename)
    return ExportResult(copied, identical)

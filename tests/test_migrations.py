"""The migration runner: order, idempotence, concurrency, checksums, Supabase CLI bookkeeping."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from pgshield.cli import main
from pgshield.errors import MigrationError
from pgshield.migrations import (
    NAME_RE,
    SUPERSEDED,
    discover,
    export,
    migrate,
    split_statements,
    status,
)
from pgshield.resources import MODULE_ORDER, compat_sql, migrations_dir, sql_dir
from support import Backend, as_user

PGSHIELD = [sys.executable, "-m", "pgshield.cli"]


def applied_versions(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                "select version from supabase_migrations.schema_migrations order by version"
            )
        ]


# ------------------------------------------------------------------ files ----
def test_migration_file_names_and_content() -> None:
    files = sorted(migrations_dir().glob("*"))
    assert files, "no migration files"
    versions = []
    for path in files:
        match = NAME_RE.match(path.name)
        assert match, f"{path.name} is not <14-digit UTC timestamp>_<snake_name>.sql"
        dt.datetime.strptime(match["version"], "%Y%m%d%H%M%S")  # a real UTC timestamp
        versions.append(match["version"])
        text = path.read_text()
        assert not re.search(r"^\s*\\", text, re.M), f"{path.name} has a psql meta-command"
        assert not re.search(r"^\s*(begin|commit|rollback)\s*;", text, re.I | re.M), (
            f"{path.name} controls its own transaction; the runner wraps each file in one"
        )
    assert len(set(versions)) == len(versions)


def test_every_module_has_its_sql_file_and_migration() -> None:
    modules = {p.stem for p in sql_dir().glob("*.sql")}
    modules |= {
        p.name
        for p in sql_dir().iterdir()
        if p.is_dir() and p.name != "compat" and any(p.glob("*.sql"))
    }
    assert modules == set(MODULE_ORDER)
    created = {m.name for m in discover()}
    for module in MODULE_ORDER:
        assert any(module in name for name in created), f"no migration creates {module}"


def test_split_statements_respects_quotes_dollars_and_comments() -> None:
    text = """
    -- a comment; with a semicolon
    create function f() returns text language sql as $$ select 'a;b' $$;
    select 'it''s; fine';  /* block; comment */
    do $body$ begin perform 1; end $body$;
    select ";" from t
    """
    stmts = split_statements(text)
    assert len(stmts) == 4
    assert stmts[0].endswith("$$ select 'a;b' $$")
    assert stmts[1] == "select 'it''s; fine'"
    assert stmts[3] == 'select ";" from t'


# ----------------------------------------------------------------- runner ----
def test_migrate_twice_applies_nothing_the_second_time(bare_db: str) -> None:
    with psycopg.connect(bare_db, autocommit=True) as conn:
        first = migrate(conn)
        second = migrate(conn)
    assert [m.version for m in first] == [m.version for m in discover()]
    assert second == []
    assert applied_versions(bare_db) == [m.version for m in discover()]


def test_records_versions_as_the_supabase_cli_does(bare_db: str) -> None:
    with psycopg.connect(bare_db, autocommit=True) as conn:
        migrate(conn)
        rows = conn.execute(
            "select version, name, statements from supabase_migrations.schema_migrations"
            " order by version"
        ).fetchall()
        cols = conn.execute(
            "select column_name, data_type from information_schema.columns"
            " where table_schema = 'supabase_migrations' and table_name = 'schema_migrations'"
            " order by ordinal_position"
        ).fetchall()
    assert cols == [("version", "text"), ("statements", "ARRAY"), ("name", "text")]
    for (version, name, statements), m in zip(rows, discover(), strict=True):
        assert (version, name) == (m.version, m.name)
        assert statements == split_statements(m.sql) and statements


def test_two_concurrent_runners_apply_each_migration_once(bare_db: str) -> None:
    procs = [
        subprocess.Popen(
            [*PGSHIELD, "migrate", "--dsn", bare_db],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outcomes
    assert applied_versions(bare_db) == [m.version for m in discover()]
    with psycopg.connect(bare_db) as conn:
        sums = conn.execute(
            "select count(*) from supabase_migrations.pgshield_checksums"
        ).fetchone()
        assert sums == (len(discover()),)
        assert conn.execute("select pgshield.version()").fetchone() is not None


def _copy_migrations(tmp_path: Path) -> Path:
    target = tmp_path / "migrations"
    shutil.copytree(migrations_dir(), target)
    return target


def test_edited_applied_migration_is_refused_naming_the_file(bare_db: str, tmp_path: Path) -> None:
    folder = _copy_migrations(tmp_path)
    with psycopg.connect(bare_db, autocommit=True) as conn:
        migrate(conn, migrations=discover(folder))
        first = discover(folder)[0]
        first.path.write_text(first.sql + "\n-- an innocent-looking edit\n")
        with pytest.raises(MigrationError, match=re.escape(first.filename)):
            migrate(conn, migrations=discover(folder))
        states = status(conn, discover(folder))
    assert states[0].edited is True
    assert not any(s.edited for s in states[1:])


def test_a_superseded_checksum_is_not_an_edit(bare_db: str) -> None:
    # 20261201224000_create_breaker.sql was edited on main after it had landed, then restored;
    # a database that recorded the edited file's checksum migrates on, any other is refused.
    [(version, [sha])] = [(v, sorted(s)) for v, s in SUPERSEDED.items()]
    with psycopg.connect(bare_db, autocommit=True) as conn:
        migrate(conn)
        update = "update supabase_migrations.pgshield_checksums set sha256 = %s where version = %s"
        conn.execute(update, (sha, version))
        assert migrate(conn) == []
        assert not any(s.edited for s in status(conn))
        conn.execute(update, ("0" * 64, version))
        with pytest.raises(MigrationError, match=version):
            migrate(conn)


def test_the_tombstones_migration_converges_where_the_table_exists(
    bare_db: str, tmp_path: Path
) -> None:
    # A database that ran the edited create_breaker file has the table (and tombstones in it)
    # before 20261202030000 runs: the migration keeps both and completes.
    folder = _copy_migrations(tmp_path)
    carrier = next(folder.glob("20261202030000_*.sql"))
    body = carrier.read_text()
    carrier.unlink()
    with psycopg.connect(bare_db, autocommit=True) as conn:
        migrate(conn, migrations=discover(folder))
        table = body[body.index("create table if not exists pgshield.breaker_tombstones") :]
        conn.execute(table[: table.index(");") + 2])
        conn.execute("insert into pgshield.breaker_tombstones (name, generation) values ('x', 7)")
        carrier.write_text(body)
        assert [m.filename for m in migrate(conn, migrations=discover(folder))] == [carrier.name]
        conn.execute("select public.configure_breaker('x')")
        assert conn.execute(
            "select generation from pgshield.breakers where name = 'x'"
        ).fetchone() == (8,)


def test_failing_migration_rolls_back_alone_and_names_its_file(
    bare_db: str, tmp_path: Path
) -> None:
    folder = _copy_migrations(tmp_path)
    (folder / "29991231000000_create_broken.sql").write_text(
        "create table public.half_done (id bigint primary key);\nselect 1/0;\n"
    )
    with psycopg.connect(bare_db, autocommit=True) as conn:
        broken = re.escape("29991231000000_create_broken.sql")
        with pytest.raises(MigrationError, match=broken) as err:
            migrate(conn, migrations=discover(folder))
        assert err.value.sqlstate == "22012"
        assert conn.execute("select to_regclass('public.half_done')").fetchone() == (None,)
    assert "29991231000000" not in applied_versions(bare_db)
    assert applied_versions(bare_db) == [m.version for m in discover()]


def test_bad_migration_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "2024_create_x.sql").write_text("select 1;")
    with pytest.raises(MigrationError, match=re.escape("2024_create_x.sql")):
        discover(tmp_path)


# -------------------------------------------------------------------- CLI ----
def test_cli_dry_run_changes_nothing_then_status(bare_db: str) -> None:
    runner = CliRunner()
    dry = runner.invoke(main, ["migrate", "--dsn", bare_db, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines()[0] == "pack installed: none"
    assert [line.split()[-1] for line in dry.output.splitlines()[1:]] == [
        m.filename for m in discover()
    ]
    with psycopg.connect(bare_db) as conn:
        assert conn.execute("select to_regnamespace('pgshield')").fetchone() == (None,)
    pending = json.loads(runner.invoke(main, ["status", "--dsn", bare_db, "--json"]).output)
    assert {row["state"] for row in pending} == {"pending"}
    applied = runner.invoke(main, ["migrate", "--dsn", bare_db])
    assert applied.exit_code == 0 and f"applied {len(discover())} migration(s)" in applied.output
    done = json.loads(runner.invoke(main, ["status", "--dsn", bare_db, "--json"]).output)
    assert [r["version"] for r in done if r["state"] == "applied"] == [
        m.version for m in discover()
    ]


# ----------------------------------------------------------------- export ----
def test_export_copies_skips_identical_and_refuses_foreign_files(tmp_path: Path) -> None:
    target = tmp_path / "supabase" / "migrations"
    first = export(target)
    assert first.copied == [m.filename for m in discover()] and first.identical == []
    again = export(target)
    assert again.copied == [] and again.identical == first.copied

    other = tmp_path / "other" / "supabase" / "migrations"
    other.mkdir(parents=True)
    clash = other / discover()[0].filename
    clash.write_text("-- the user's own, different file\n")
    result = CliRunner().invoke(main, ["export", "--to", str(other)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and clash.name in result.output
    assert sorted(p.name for p in other.iterdir()) == [clash.name], "nothing else was written"
    assert clash.read_text() == "-- the user's own, different file\n"


def test_plain_postgres_is_refused_before_anything_then_takes_the_compat_stub(
    backend: Backend,
) -> None:
    # A database without Supabase's auth schema: the runner says what is missing before it
    # applies anything (it used to stop at the teams migration, half installed).
    name = f"pgshield_t_plain_{uuid.uuid4().hex[:8]}"
    dsn = backend.create(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(MigrationError) as caught:
                migrate(conn)
            assert "schema auth" in str(caught.value)
            assert "--with-compat" in (caught.value.hint or "")
            left = conn.execute(
                "select to_regnamespace('pgshield'), to_regnamespace('supabase_migrations')"
            ).fetchone()
            assert left == (None, None)
        refused = CliRunner().invoke(main, ["migrate", "--dsn", dsn])
        assert refused.exit_code == 1
        assert refused.output.startswith("Error: this database lacks"), refused.output
        # A dry run is refused the same way (it used to list what it "would apply").
        dry = CliRunner().invoke(main, ["migrate", "--dry-run", "--dsn", dsn])
        assert dry.exit_code == 1 and "lacks" in dry.output, dry.output
        stub = CliRunner().invoke(main, ["migrate", "--dry-run", "--with-compat", "--dsn", dsn])
        assert stub.exit_code == 0 and "would apply" in stub.output, stub.output
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(compat_sql())
            conn.execute("revoke usage on schema auth from public")
            conn.execute(
                "do $$ begin if not exists (select 1 from pg_roles"
                " where rolname = 'pgshield_t_nouse') then create role pgshield_t_nouse login;"
                " end if; end $$"
            )
            conn.execute("grant create on database " + name + " to pgshield_t_nouse")
        # A role that may not use schema auth is told so, not "permission denied".
        lowly = CliRunner().invoke(main, ["migrate", "--dsn", as_user(dsn, "pgshield_t_nouse")])
        assert lowly.exit_code == 1
        assert "lacks what Supabase provides" in lowly.output, lowly.output
        assert "usage on schema auth" in lowly.output, lowly.output
        done = CliRunner().invoke(main, ["migrate", "--with-compat", "--dsn", dsn])
        assert done.exit_code == 0, done.output
        with psycopg.connect(dsn) as conn:
            assert [s.migration.filename for s in status(conn) if not s.applied] == []
    finally:
        backend.drop(name)


@pytest.mark.parametrize("autocommit", [True, False])
def test_the_runner_gives_the_callers_search_path_back(db: str, autocommit: bool) -> None:
    with psycopg.connect(db, autocommit=autocommit) as conn:
        conn.execute('set search_path = "$user", public, extensions')
        conn.commit()
        status(conn)
        if not autocommit:
            with pytest.raises(MigrationError, match="autocommit"):
                migrate(conn)
        conn.commit()
        assert conn.execute("show search_path").fetchone() == ('"$user", public, extensions',)
        conn.commit()
        if autocommit:
            migrate(conn)  # nothing pending: the path comes back all the same
            assert conn.execute("show search_path").fetchone() == ('"$user", public, extensions',)


def test_the_runner_changes_no_session_a_transaction_pooler_would_hand_on(bare_db: str) -> None:
    # Through Supavisor or PgBouncer in transaction mode each transaction may run on another
    # server connection: a session-level SET (even one restored later, on another connection)
    # leaves some pooled connection with search_path = pg_catalog, pg_temp, and the app's
    # unqualified queries there fail with 42P01. pg_settings says "session" once any
    # session-level SET ran on this connection; a SET LOCAL leaves nothing.
    def source(conn: psycopg.Connection) -> str:
        row = conn.execute("select source from pg_settings where name = 'search_path'").fetchone()
        assert row is not None
        return row[0]

    with psycopg.connect(bare_db, autocommit=True) as conn:
        assert source(conn) != "session"
        assert migrate(conn)  # every migration applied
        status(conn)
        migrate(conn, dry_run=True)
        assert source(conn) != "session"
    done = CliRunner().invoke(main, ["migrate", "--json", "--dsn", bare_db])
    assert done.exit_code == 0, done.output
    with (
        psycopg.connect(bare_db, autocommit=True) as conn,
        pytest.raises(MigrationError, match="outside one"),
        conn.transaction(),
    ):
        migrate(conn)


def test_migrations_whose_history_was_reverted_are_not_applied_again(bare_db: str) -> None:
    # `supabase migration repair --status reverted` deletes schema_migrations rows and leaves
    # the schema: applying those files again would put released functions back over newer ones.
    with psycopg.connect(bare_db, autocommit=True) as conn:
        migrate(conn)
        version = conn.execute("select pgshield.version()").fetchone()
        conn.execute(
            "delete from supabase_migrations.schema_migrations where version in (%s, %s)",
            (discover()[0].version, discover()[1].version),
        )
        with pytest.raises(MigrationError, match="2 migration") as refused:
            migrate(conn)
        assert "repair --status applied" in (refused.value.hint or "")
        assert conn.execute("select pgshield.version()").fetchone() == version
        assert len(applied_versions(bare_db)) == len(discover()) - 2, "nothing was recorded"
        # The pack dropped on purpose (its schema and its history): installed again.
        conn.execute("drop schema pgshield cascade")
        conn.execute("delete from supabase_migrations.schema_migrations")
        assert len(migrate(conn)) == len(discover())


def test_a_history_table_an_older_supabase_cli_made_is_completed(bare_db: str) -> None:
    # Older CLIs made schema_migrations with the version alone; recording failed with 42703.
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute(
            "create schema supabase_migrations;"
            " create table supabase_migrations.schema_migrations (version text primary key);"
            " insert into supabase_migrations.schema_migrations values ('20200101000000')"
        )
        assert migrate(conn)
        row = conn.execute(
            "select name from supabase_migrations.schema_migrations where version = %s",
            (discover()[0].version,),
        ).fetchone()
        assert row == (discover()[0].name,)

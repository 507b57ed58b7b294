"""The CLI: help everywhere, one-line errors, doctor and demo."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import click
import psycopg
import pytest
from click.testing import CliRunner

import pgshield
from pgshield.cli import main
from pgshield.doctor import cron_status, diagnose
from support import as_user


def all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    for name, cmd in group.commands.items():
        out.append((f"{prefix}{name}", cmd))
        if isinstance(cmd, click.Group):
            out += all_commands(cmd, f"{prefix}{name} ")
    return out


def test_every_command_has_a_summary_and_an_example() -> None:
    commands = all_commands(main)
    assert len(commands) >= 9
    for name, cmd in commands:
        assert cmd.help and cmd.help.strip(), f"{name} has no help"
        assert "Example:" in cmd.help, f"{name} has no example"
        result = CliRunner().invoke(main, [*name.split(), "-h"])
        assert result.exit_code == 0 and "Usage:" in result.output


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and pgshield.__version__ in result.output


@pytest.mark.parametrize(
    "dsn",
    ["not a dsn at all", "postgresql://postgres@127.0.0.1:1/postgres"],
    ids=["malformed", "unreachable"],
)
@pytest.mark.parametrize("command", ["migrate", "status", "doctor"])
def test_bad_dsn_is_one_line_and_exit_1(dsn: str, command: str) -> None:
    result = CliRunner().invoke(main, [command, "--dsn", dsn])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "Traceback" not in result.output


def test_dsn_from_environment(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGSHIELD_DSN", raising=False)
    monkeypatch.setenv("DATABASE_URL", db)
    result = CliRunner().invoke(main, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert {r["state"] for r in json.loads(result.output)} == {"applied"}
    monkeypatch.setenv("PGSHIELD_DSN", "postgresql://postgres@127.0.0.1:1/postgres")
    assert CliRunner().invoke(main, ["status"]).exit_code == 1, "PGSHIELD_DSN wins"


def test_doctor_reports_the_pack(db: str) -> None:
    result = CliRunner().invoke(main, ["doctor", "--dsn", db, "--json"])
    assert result.exit_code == 0, result.output
    checks = {c["check"]: c for c in json.loads(result.output)}
    assert checks["pack"]["status"] == "ok" and pgshield.__version__ in checks["pack"]["detail"]
    assert checks["migrations"]["detail"].endswith("0 pending")
    assert checks["pgtap"]["status"] == "ok"


def test_doctor_on_a_database_without_the_pack(bare_db: str) -> None:
    checks = {
        c["check"]: c
        for c in json.loads(CliRunner().invoke(main, ["doctor", "--dsn", bare_db, "--json"]).output)
    }
    assert checks["pack"]["status"] == "missing"
    assert "pending" in checks["migrations"]["detail"]


LOWLY = "pgshield_t_lowly"


def test_a_role_that_may_not_use_the_schema_is_told_which_role_to_use(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            f"do $$ begin if not exists (select 1 from pg_roles where rolname = '{LOWLY}')"
            f" then create role {LOWLY} login; end if; end $$"
        )
    lowly = as_user(db, LOWLY)
    # doctor reports it as a check (it used to end in a traceback), and stops there
    result = CliRunner().invoke(main, ["doctor", "--dsn", lowly, "--json"])
    assert result.exit_code == 0, result.output
    checks = {c["check"]: c for c in json.loads(result.output)}
    assert checks["pack"]["status"] == "missing"
    assert f"role {LOWLY} may not use schema pgshield" in checks["pack"]["detail"]
    assert "postgres on Supabase" in checks["pack"]["detail"]
    assert "migrations" not in checks
    # any other command: one line, with the same hint
    result = CliRunner().invoke(main, ["guard", "status", "--dsn", lowly])
    assert result.exit_code == 1
    assert result.output.startswith("Error: permission denied for schema pgshield"), result.output
    assert "(hint: connect as the role that applied the migrations" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_demo_on_an_existing_database(db: str) -> None:
    result = CliRunner().invoke(main, ["demo", "--dsn", db])
    assert result.exit_code == 0, result.output
    assert "pack status" in result.output and pgshield.__version__ in result.output


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        ((True, "1.6", True, "postgres", "app"), True, "installed in this database"),
        ((False, None, False, None, "app"), False, "not available"),
        ((True, None, False, None, "app"), None, "shared_preload_libraries"),
        ((True, None, True, "postgres", "postgres"), None, "run `create extension pg_cron;`"),
        ((True, None, True, "postgres", "app"), None, "scheduler runs in database 'postgres'"),
    ],
)
def test_doctor_names_the_missing_pg_cron_step(args: tuple, status: bool | None, says: str) -> None:
    got = cron_status(*args)
    assert got[0] is status and says in got[1], got


def test_doctor_on_a_fresh_project_database(db: str) -> None:
    # pg_cron preloaded (the embedded cluster does), created in 'postgres' only: this database
    # is told where the scheduler runs, never that the extension is "installed" elsewhere.
    cron = {c["check"]: c for c in diagnose(db)}["pg_cron"]
    with psycopg.connect(db) as conn:
        here, preloaded = conn.execute(
            "select current_database(), current_setting('shared_preload_libraries') ~ 'pg_cron'"
        ).fetchone()  # type: ignore[misc]
    assert preloaded, "the test cluster preloads pg_cron"
    assert cron["status"] == "warn"
    assert f"not {here!r}" in cron["detail"] and "schedule_in_database" in cron["detail"]


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://app:S3cr%zzet@127.0.0.1:1/postgres",  # libpq quotes the bad token
        "postgresql://app:S3cr%zzet@[::1/postgres",  # ... or the whole URI
        "host=127.0.0.1 port=1 user=app password=S3cr%zzet",
        "postgresql://app@127.0.0.1:1/postgres?password=S3cr%zzet&sslmode=disable",
        "postgresql://app:S3c'r%zzet@127.0.0.1:1/postgres",  # a quote in the password
        "host=127.0.0.1 port=1 user=app password=S3cr zzet",  # unquoted, with a space
    ],
)
@pytest.mark.parametrize("command", ["migrate", "status", "doctor"])
def test_an_error_line_never_shows_the_password(dsn: str, command: str) -> None:
    result = CliRunner().invoke(main, [command, "--dsn", dsn])
    assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
    assert "S3cr" not in result.output and "zzet" not in result.output, result.output


def test_a_short_password_does_not_mangle_the_error_line() -> None:
    result = CliRunner().invoke(
        main, ["status", "--dsn", "host=127.0.0.1 port=1 user=app password=e sslmode=bogus"]
    )
    assert result.exit_code == 1
    assert result.output.strip() == 'Error: connection is bad: invalid sslmode value: "bogus"'


def test_an_os_error_is_one_line_and_exit_1(db: str, tmp_path: Path) -> None:
    # A port in use, a host that does not resolve, a path that cannot be written: one
    # "Error:" line, not a traceback.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        served = CliRunner().invoke(main, ["metrics", "--serve", str(port), "--dsn", db])
    assert served.exit_code == 1 and served.output.startswith("Error: "), served.output
    assert "in use" in served.output and "Traceback" not in served.output
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    exported = CliRunner().invoke(main, ["export", "--to", str(blocked / "migrations")])
    assert exported.exit_code == 1 and exported.output.startswith("Error: "), exported.output


@pytest.mark.parametrize("command", [["ratelimit", "policies"], ["guard", "status"], ["metrics"]])
def test_a_database_without_the_pack_is_told_to_migrate(bare_db: str, command: list[str]) -> None:
    result = CliRunner().invoke(main, [*command, "--dsn", bare_db])
    assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
    assert "pgshield migrate" in result.output, result.output

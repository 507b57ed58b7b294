"""The real Supabase CLI and pgshield share one migration history, in either order.

``pgshield export`` writes the pack's migrations into a Supabase project; ``supabase db push``
applies them and ``pgshield migrate`` then has nothing to do, and the other way round; in both
orders ``supabase migration list`` shows every version locally and remotely. The CLI is the
npm package pinned in package.json / package-lock.json, which ``make setup`` installs with
``npm ci`` into node_modules/ (its Linux binary comes in the optional dependency
``@supabase/cli-linux-x64``; nothing is downloaded from elsewhere).

The CLI runs with telemetry and the update check off and its own temporary HOME, so it only
ever connects to the test database.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
import pytest
from psycopg import conninfo

from pgshield.migrations import discover, export, migrate, status
from test_plpgsql_check import lint_pack

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "node_modules" / ".bin" / "supabase"
PINNED = json.loads((REPO / "package.json").read_text())["devDependencies"]["supabase"]
TIMEOUT = 120  # seconds, for every CLI call


def db_url(dsn: str) -> str:
    """The test DSN as the percent-encoded URL ``--db-url`` wants (TLS off unless asked)."""
    params = conninfo.conninfo_to_dict(dsn)
    auth = quote(str(params.get("user", "postgres")), safe="")
    if params.get("password"):
        auth += ":" + quote(str(params["password"]), safe="")
    host = str(params.get("host", "127.0.0.1"))
    if ":" in host:
        host = f"[{host}]"
    port = params.get("port", 5432)
    dbname = quote(str(params.get("dbname", "postgres")), safe="")
    query = urlencode({"sslmode": params.get("sslmode", "disable")})
    return f"postgresql://{auth}@{host}:{port}/{dbname}?{query}"


def cli_env(home: Path) -> dict[str, str]:
    """This environment less any Supabase credentials, with a private HOME and no phoning home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPABASE_")}
    env.update(
        HOME=str(home),
        SUPABASE_TELEMETRY_DISABLED="1",
        DO_NOT_TRACK="1",
        SUPABASE_NO_UPDATE_NOTIFIER="1",
        NO_COLOR="1",
    )
    return env


@dataclass(frozen=True)
class Project:
    """A Supabase project directory, and the pinned CLI run inside it."""

    workdir: Path

    @property
    def migrations(self) -> Path:
        return self.workdir / "supabase" / "migrations"

    def run(self, *args: str, ok_codes: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        cmd = [str(CLI), *args, "--workdir", str(self.workdir), "--agent", "no"]
        out = subprocess.run(
            cmd,
            cwd=self.workdir,
            env=cli_env(self.workdir / "home"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        if out.returncode not in ok_codes:
            pytest.fail(
                f"{' '.join(cmd)} exited {out.returncode}\n"
                f"stdout:\n{out.stdout}\nstderr:\n{out.stderr}",
                pytrace=False,
            )
        return out

    def json(self, *args: str, ok_codes: tuple[int, ...] = (0,)) -> dict[str, Any]:
        out = self.run(*args, "--output-format", "json", ok_codes=ok_codes)
        try:
            return json.loads(out.stdout)
        except json.JSONDecodeError:
            pytest.fail(
                f"supabase {' '.join(args)}: no JSON on stdout:\n{out.stdout}", pytrace=False
            )

    def push(self, url: str) -> dict[str, Any]:
        return self.json("db", "push", "--db-url", url, "--yes")

    def listed(self, url: str) -> list[dict[str, str]]:
        """``supabase migration list`` rows: ``{"local": ..., "remote": ..., "time": ...}``."""
        return self.json("migration", "list", "--db-url", url)["migrations"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pinned Supabase CLI; fails (never skips) when it is not installed."""
    if not CLI.exists():
        pytest.fail(
            f"{CLI.relative_to(REPO)} is missing: run `make setup`, which runs `npm ci` to"
            f" install the pinned Supabase CLI {PINNED}",
            pytrace=False,
        )
    out = subprocess.run(
        [str(CLI), "--version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        env=cli_env(tmp_path_factory.mktemp("supabase-home")),
    )
    assert out.stdout.strip() == PINNED, f"expected Supabase CLI {PINNED}: {out.stdout}{out.stderr}"
    return CLI


@pytest.fixture
def project(cli: Path, tmp_path: Path) -> Project:
    (tmp_path / "home").mkdir()
    return Project(tmp_path)


def assert_in_step(project: Project, dsn: str) -> None:
    """Both tools see every pack version applied: the CLI lists each locally and remotely."""
    versions = [m.version for m in discover()]
    rows = project.listed(db_url(dsn))
    assert [(r["local"], r["remote"]) for r in rows] == [(v, v) for v in versions]
    with psycopg.connect(dsn, autocommit=True) as conn:
        states = status(conn)
    assert [s.migration.version for s in states if not s.applied or s.edited] == []


def test_supabase_push_then_pgshield_migrate(project: Project, bare_db: str) -> None:
    url = db_url(bare_db)
    pack = discover()
    assert export(project.migrations).copied == [m.filename for m in pack]

    pushed = project.push(url)
    assert pushed["migrations"] == [m.filename for m in pack]
    with psycopg.connect(bare_db, autocommit=True) as conn:
        assert migrate(conn) == []
    assert_in_step(project, bare_db)
    assert project.push(url)["upToDate"] is True


def test_pgshield_migrate_then_supabase_push(project: Project, bare_db: str) -> None:
    url = db_url(bare_db)
    pack = discover()
    with psycopg.connect(bare_db, autocommit=True) as conn:
        assert [m.version for m in migrate(conn)] == [m.version for m in pack]
    assert export(project.migrations).copied == [m.filename for m in pack]

    pushed = project.push(url)
    assert (pushed["upToDate"], pushed["migrations"]) == (True, [])
    assert_in_step(project, bare_db)


def test_supabase_db_lint_reports_what_the_plpgsql_check_test_reports(
    project: Project, db: str
) -> None:
    """tests/test_plpgsql_check.py lints with the same checker and flags as ``db lint``."""
    lint = project.json(
        "db", "lint", "--db-url", db_url(db), "--schema", "pgshield,public", "--fail-on", "none"
    )
    cli_findings = Counter(
        (result["function"], issue["level"], issue["message"])
        for result in lint.get("results") or []
        for issue in result["issues"]
    )
    with psycopg.connect(db, autocommit=True) as conn:
        ours = lint_pack(conn)
    our_findings = Counter(
        (f.function.split("(")[0], f.level, f.message) for f in ours.findings if f.relation is None
    )
    assert cli_findings == our_findings

"""Running pgTAP files with psql and reading their TAP output (used by test_pgtap.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import conninfo

PLAN_RE = re.compile(r"^1\.\.(\d+)")
RESULT_RE = re.compile(r"^(not ok|ok)\s+(\d+)\s*(?:-\s*)?(.*)$")


@dataclass
class Assertion:
    number: int
    ok: bool
    description: str
    diagnostics: list[str] = field(default_factory=list)


@dataclass
class TapResult:
    """What one pgTAP file reported."""

    path: Path
    returncode: int
    output: str
    stderr: str
    planned: int | None = None
    assertions: list[Assertion] = field(default_factory=list)

    @property
    def failures(self) -> list[Assertion]:
        return [a for a in self.assertions if not a.ok]

    @property
    def ok(self) -> bool:
        return (
            self.returncode == 0
            and self.planned is not None
            and self.planned == len(self.assertions) > 0
            and not self.failures
        )

    def report(self) -> str:
        lines = [f"pgTAP file {self.path.name}:"]
        for a in self.failures:
            lines.append(f"  not ok {a.number} - {a.description}")
            lines += [f"      {d}" for d in a.diagnostics]
        if self.planned is None:
            lines.append("  no plan was printed")
        elif self.planned != len(self.assertions):
            lines.append(f"  planned {self.planned} assertions, ran {len(self.assertions)}")
        if self.returncode != 0:
            lines.append(f"  psql exited {self.returncode}: {self.stderr.strip()[-2000:]}")
        return "\n".join(lines)


def parse_tap(path: Path, returncode: int, output: str, stderr: str) -> TapResult:
    result = TapResult(path, returncode, output, stderr)
    for raw in output.splitlines():
        line = raw.strip()
        if (plan := PLAN_RE.match(line)) and result.planned is None:
            result.planned = int(plan.group(1))
        elif match := RESULT_RE.match(line):
            result.assertions.append(
                Assertion(int(match.group(2)), match.group(1) == "ok", match.group(3))
            )
        elif line.startswith("#") and result.assertions:
            result.assertions[-1].diagnostics.append(line)
    return result


def pgtap_files(directory: Path) -> list[Path]:
    """The pgTAP files of a directory, in the order pg_prove runs them.

    Files whose name starts with ``_`` (``_helpers.psql``) are pulled in by the others with
    ``\\ir`` and never run on their own.
    """
    return sorted(p for p in directory.glob("*.sql") if not p.name.startswith("_"))


def psql_binary() -> str:
    from pgshield.embedded import find_bindir

    try:
        candidate = find_bindir() / "psql"
        if candidate.is_file():
            return str(candidate)
    except Exception:
        pass
    found = shutil.which("psql")
    if not found:
        raise RuntimeError("psql is needed to run the pgTAP files")
    return found


def run_pgtap_file(dsn: str, path: Path) -> TapResult:
    """Run one pgTAP file the way pg_prove does, and parse its output.

    psql runs the file with ``-f``, so ``\\ir`` in it resolves relative to the file's directory.
    """
    proc = subprocess.run(
        [
            psql_binary(),
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "--pset",
            "pager=off",
            "-d",
            dsn,
            "-f",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    return parse_tap(path, proc.returncode, proc.stdout, proc.stderr)


def run_pg_prove(dsn: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Run a directory of pgTAP files the way ``supabase test db`` does.

    ``pg_prove --ext .pg --ext .sql -r <dir>``, connected through the ``PG*`` environment; every
    file runs in the same database, one after another. pg_prove comes from Debian's
    ``libtap-parser-sourcehandler-pgtap-perl`` (scripts/ensure-system-packages.sh installs it).
    """
    pg_prove = shutil.which("pg_prove")
    if not pg_prove:
        raise RuntimeError(
            "pg_prove is missing: `make setup` runs scripts/ensure-system-packages.sh, which"
            " installs it (libtap-parser-sourcehandler-pgtap-perl)"
        )
    params = conninfo.conninfo_to_dict(dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
    env.update({var: str(params[key]) for key, var in names.items() if params.get(key)})
    if params.get("password"):
        env["PGPASSWORD"] = str(params["password"])
    args = ["--psql-bin", psql_binary(), "--ext", ".pg", "--ext", ".sql", "-r", str(directory)]
    return subprocess.run(
        [pg_prove, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )

"""Every ``tests/pgtap/*.sql`` file as one pytest item, run in a database of its own.

The files stay plain pgTAP (they also run under ``pg_prove`` and ``supabase test db``); here a
failure shows each failing assertion's description and diagnostics. Every file pulls in the
shared ``_helpers.psql`` with ``\\ir``; files starting with ``_`` never run on their own.

Each file runs twice: as the cluster's superuser, and as ``supabase_postgres``, the compat stub's
stand-in for hosted Supabase's ``postgres`` (not a superuser; it applied the migrations of its
template itself). Then pg_prove runs the directory as that role, as ``supabase test db`` does.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from support import SUPABASE_POSTGRES, Backend, as_user
from tap import parse_tap, pgtap_files, run_pg_prove, run_pgtap_file

PGTAP_DIR = Path(__file__).parent / "pgtap"
FILES = pgtap_files(PGTAP_DIR)
HELPERS = PGTAP_DIR / "_helpers.psql"


def test_pgtap_files_exist() -> None:
    assert FILES, f"no pgTAP files in {PGTAP_DIR}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_pgtap(path: Path, backend: Backend, template_db: str) -> None:
    with backend.clone(template_db) as dsn:
        result = run_pgtap_file(dsn, path)
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_pgtap_as_supabase_postgres(
    path: Path, backend: Backend, supabase_template_db: str
) -> None:
    """The same file as hosted Supabase's ``postgres`` runs it (``supabase test db``).

    Not a superuser: CREATEROLE, CREATEDB, REPLICATION, BYPASSRLS, a member of anon,
    authenticated and service_role, the owner of the database and of what the migrations made.
    """
    with backend.clone(supabase_template_db, owner=SUPABASE_POSTGRES) as dsn:
        result = run_pgtap_file(as_user(dsn, SUPABASE_POSTGRES), path)
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)


def test_supabase_postgres_is_hosted_postgres(backend: Backend, supabase_template_db: str) -> None:
    """The stand-in has hosted ``postgres``'s attributes and memberships, and owns the pack."""
    with (
        backend.clone(supabase_template_db, owner=SUPABASE_POSTGRES) as dsn,
        psycopg.connect(as_user(dsn, SUPABASE_POSTGRES)) as conn,
    ):
        row = conn.execute(
            """
            select r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication,
                   r.rolbypassrls, r.rolcanlogin, r.rolinherit,
                   array(select m.roleid::regrole::text from pg_auth_members m
                          where m.member = r.oid order by 1),
                   (select nspowner::regrole::text from pg_namespace
                     where nspname = 'pgshield'),
                   (select datdba::regrole::text from pg_database
                     where datname = current_database())
              from pg_roles r where r.rolname = current_user
            """
        ).fetchone()
    assert row == (
        False, True, True, True, True, True, True,
        ["anon", "authenticated", "service_role"],
        SUPABASE_POSTGRES, SUPABASE_POSTGRES,
    )  # fmt: skip


def test_supabase_test_db_invocation_as_supabase_postgres(
    backend: Backend, supabase_template_db: str
) -> None:
    """pg_prove over the whole directory in one database, as ``supabase test db`` runs it."""
    with backend.clone(supabase_template_db, owner=SUPABASE_POSTGRES) as dsn:
        proc = run_pg_prove(as_user(dsn, SUPABASE_POSTGRES), PGTAP_DIR)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert re.search(rf"^Files={len(FILES)}, ", proc.stdout, re.M), proc.stdout[-2000:]
    assert "Result: PASS" in proc.stdout


FAILING_FILE = """\
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(2);
select ok(true, 'this one passes');
select is(1 + 1, 3, 'arithmetic that is deliberately wrong');
select * from finish();
rollback;
"""


def test_failing_assertion_is_reported_with_its_description(
    tmp_path: Path, backend: Backend, template_db: str
) -> None:
    path = tmp_path / "99_deliberately_failing.sql"
    path.write_text(FAILING_FILE)
    with backend.clone(template_db) as dsn:
        result = run_pgtap_file(dsn, path)
    assert not result.ok
    assert [a.number for a in result.failures] == [2]
    report = result.report()
    assert "not ok 2 - arithmetic that is deliberately wrong" in report
    assert "have: 2" in report and "want: 3" in report


def test_failing_file_fails_its_pytest_item(
    pytester: pytest.Pytester, tmp_path: Path, backend: Backend, template_db: str
) -> None:
    """End to end: a pytest run over a failing pgTAP file reports a failed item."""
    pgtap = pytester.mkdir("pgtap")
    (pgtap / "99_deliberately_failing.sql").write_text(FAILING_FILE)
    tests_dir = Path(__file__).parent
    for name in ("support.py", "tap.py", "test_pgtap.py"):
        pytester.makepyfile(**{name[:-3]: (tests_dir / name).read_text()})
    pytester.makeconftest(
        "import pytest\n"
        "from support import Backend\n"
        "@pytest.fixture(scope='session')\ndef backend():\n"
        f"    return Backend({backend.admin_dsn!r})\n"
        f"@pytest.fixture(scope='session')\ndef template_db():\n    return {template_db!r}\n"
    )
    run = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-k", "test_pgtap[")
    run.assert_outcomes(failed=1)
    run.stdout.fnmatch_lines(["*not ok 2 - arithmetic that is deliberately wrong*"])


def test_plan_mismatch_and_sql_errors_fail() -> None:
    short = parse_tap(Path("x.sql"), 0, "1..3\nok 1 - a\nok 2 - b\n", "")
    assert not short.ok and "planned 3 assertions, ran 2" in short.report()
    broken = parse_tap(Path("x.sql"), 3, "1..1\n", "ERROR:  syntax error")
    assert not broken.ok and "syntax error" in broken.report()
    assert parse_tap(Path("x.sql"), 0, "1..1\nok 1 - fine\n", "").ok


# ------------------------------------------------------------ the shared helpers ----
def test_every_file_pulls_in_the_helpers() -> None:
    """``begin;``, then ``\\ir _helpers.psql``, then the plan; no file sets up a role by hand."""
    assert HELPERS.is_file()
    inline = re.compile(
        r"set\s+local\s+role\s+(anon|authenticated|service_role)\b|request\.jwt\.claim", re.I
    )
    for path in FILES:
        statements = [
            line.strip()
            for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("--")
        ]
        assert statements[:2] == ["begin;", r"\ir _helpers.psql"], path.name
        assert re.fullmatch(r"select plan\(\d+\);", statements[2]), path.name
        assert statements[-2:] == ["select * from finish();", "rollback;"], path.name
        found = [m.group(0) for m in inline.finditer(path.read_text())]
        assert not found, f"{path.name} acts as a role by hand ({found}): use pg_temp.act_as"


PACK_LIST = re.compile(
    r"-- pack entry points in public: begin\n(.*?)\n\s*-- pack entry points in public: end", re.S
)


def test_helpers_name_every_public_entry_point(conn: psycopg.Connection) -> None:
    """The helpers' list of the pack's functions in public is what the migrations create there."""
    match = PACK_LIST.search(HELPERS.read_text())
    assert match, "the list of entry points in _helpers.psql lost its markers"
    listed = re.findall(r"\('([^']+)'\)", match.group(1))
    created = conn.execute(
        """
        select format('%s.%s(%s)', n.nspname, p.proname, oidvectortypes(p.proargtypes))
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
         where n.nspname = 'public'
           and not exists (select 1 from pg_depend d
                            where d.classid = 'pg_proc'::regclass and d.objid = p.oid
                              and d.deptype = 'e')
        """
    ).fetchall()
    assert sorted(listed) == listed, "keep the list sorted"
    assert set(listed) == {r[0] for r in created}


CREATES = re.compile(
    r"\bcreate\s+(?:or\s+replace\s+)?(?P<temp>temp(?:orary)?\s+)?(?:unique\s+)?"
    r"(?P<kind>table|function|procedure|schema|type|domain|role|index|view|sequence|trigger)\s+"
    r"(?:if\s+not\s+exists\s+)?(?P<name>(?:\"[^\"]+\"|\w+)(?:\.(?:\"[^\"]+\"|\w+))?)",
    re.I,
)


def _unquote(part: str) -> str:
    return part[1:-1] if part.startswith('"') else part.lower()


def test_files_name_their_own_objects_pgshield_t() -> None:
    """What a file creates is temporary or named pgshield_t_*: no project would pick that name."""
    for path in [*FILES, HELPERS]:
        for m in CREATES.finditer(path.read_text()):
            parts = [_unquote(p) for p in re.findall(r"\"[^\"]+\"|\w+", m.group("name"))]
            if m.group("temp") or parts[0] == "pg_temp":
                continue
            *schema, name = parts
            assert name.startswith("pgshield_t_"), f"{path.name}: {m.group(0)}"
            assert schema in ([], ["public"]) or schema[0].startswith("pgshield_t_"), (
                f"{path.name}: {m.group(0)}"
            )

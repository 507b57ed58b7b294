"""Every ``tests/pgtap/*.sql`` file as one pytest item, run in a database of its own.

The files stay plain pgTAP (they also run under ``pg_prove`` and ``supabase test db``); here a
failure shows each failing assertion's description and diagnostics.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from support import Backend
from tap import parse_tap, run_pgtap_file

PGTAP_DIR = Path(__file__).parent / "pgtap"
FILES = sorted(PGTAP_DIR.glob("*.sql"))


def test_pgtap_files_exist() -> None:
    assert FILES, f"no pgTAP files in {PGTAP_DIR}"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_pgtap(path: Path, backend: Backend, template_db: str) -> None:
    with backend.clone(template_db) as dsn:
        result = run_pgtap_file(dsn, path)
    if not result.ok:
        pytest.fail(result.report(), pytrace=False)


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

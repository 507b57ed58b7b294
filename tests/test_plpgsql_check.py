"""Every PL/pgSQL function of the pack passes plpgsql_check, as ``supabase db lint`` runs it.

``supabase db lint`` calls ``plpgsql_check_function(oid, format := 'json')`` with the
extension's default flags (fatal errors, other and extra warnings; no performance, security or
compatibility warnings) on every plpgsql function that is not a trigger function, and
``--fail-on warning`` fails on every level that starts with ``warning`` (``warning extra``
too). This test applies the same flags to the pack's functions, and also checks trigger
functions against each relation a trigger attaches them to, which the CLI skips.

plpgsql_check comes from Debian's ``postgresql-<major>-plpgsql-check``, which
``scripts/ensure-system-packages.sh`` installs; ``plpgsql_check_function`` needs no preload.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import psycopg
import pytest

# The flags of ``supabase db lint`` (plpgsql_check's defaults), spelled out.
CHECK_FLAGS = (
    "fatal_errors := true, other_warnings := true, extra_warnings := true,"
    " performance_warnings := false, security_warnings := false,"
    " compatibility_warnings := false"
)

# The pack's plpgsql functions: all of schema pgshield and the pack's entry points in public.
# The compat stub lives in auth/extensions, and extension members (pgtap, plpgsql_check) are
# not the pack's.
PACK_FUNCTIONS_SQL = """
select p.oid,
       format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes)),
       p.prorettype = 'pg_catalog.trigger'::regtype
from pg_catalog.pg_proc p
join pg_catalog.pg_namespace n on n.oid = p.pronamespace
join pg_catalog.pg_language l on l.oid = p.prolang
where l.lanname = 'plpgsql'
  and n.nspname in ('pgshield', 'public')
  and not exists (
    select 1 from pg_catalog.pg_depend d
    where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e'
  )
order by 2
"""

TRIGGER_RELATIONS_SQL = """
select distinct t.tgrelid, t.tgrelid::regclass::text
from pg_catalog.pg_trigger t
where t.tgfoid = %(oid)s::oid and not t.tgisinternal
order by 2
"""

CHECK_SQL = f"""
select lineno, level, message, detail, hint, context
from extensions.plpgsql_check_function_tb(
  %(oid)s::oid::regprocedure, %(relid)s::oid::regclass, {CHECK_FLAGS}
)
"""


@dataclass(frozen=True)
class Finding:
    """One plpgsql_check report on one function (and relation, for a trigger function)."""

    function: str  # schema.name(argument types)
    relation: str | None  # the table a trigger function was checked against
    line: int | None
    level: str
    message: str
    detail: str | None
    hint: str | None
    context: str | None

    def __str__(self) -> str:
        where = self.function + (f" on {self.relation}" if self.relation else "")
        where += f" line {self.line if self.line is not None else '-'}"
        text = f"{where} [{self.level}] {self.message}"
        for label, value in (("detail", self.detail), ("context", self.context)):
            if value:
                text += f"; {label}: {value}"
        return text


@dataclass(frozen=True)
class LintRun:
    checked: list[str]
    findings: list[Finding]
    unchecked_triggers: list[str]


def _enable_plpgsql_check(conn: psycopg.Connection) -> None:
    available = conn.execute(
        "select 1 from pg_catalog.pg_available_extensions where name = 'plpgsql_check'"
    ).fetchone()
    if available is None:
        major = conn.execute("select current_setting('server_version_num')::int / 10000").fetchone()
        package = f"postgresql-{major[0] if major else 'NN'}-plpgsql-check"
        pytest.fail(
            f"the server has no plpgsql_check extension: install Debian's {package}"
            " (`make setup` runs scripts/ensure-system-packages.sh, which does)",
            pytrace=False,
        )
    conn.execute("create extension if not exists plpgsql_check with schema extensions")


def lint_pack(conn: psycopg.Connection) -> LintRun:
    """Run plpgsql_check over every pack function; trigger functions once per relation."""
    _enable_plpgsql_check(conn)
    checked: list[str] = []
    findings: list[Finding] = []
    unchecked: list[str] = []
    for oid, name, is_trigger in conn.execute(PACK_FUNCTIONS_SQL).fetchall():
        targets: list[tuple[int, str | None]] = [(0, None)]
        if is_trigger:
            targets = conn.execute(TRIGGER_RELATIONS_SQL, {"oid": oid}).fetchall()
            if not targets:
                unchecked.append(name)  # plpgsql_check needs the relation a trigger fires on
                continue
        for relid, relation in targets:
            checked.append(name + (f" on {relation}" if relation else ""))
            rows = conn.execute(CHECK_SQL, {"oid": oid, "relid": relid}).fetchall()
            findings.extend(Finding(name, relation, *row) for row in rows)
    return LintRun(checked, findings, unchecked)


def test_pack_functions_pass_plpgsql_check(conn: psycopg.Connection) -> None:
    run = lint_pack(conn)
    assert run.checked, "found no pack function to check: the selection query is broken"
    if run.unchecked_triggers:
        warnings.warn(
            "trigger functions attached to no table, not checked by plpgsql_check: "
            + ", ".join(run.unchecked_triggers),
            stacklevel=1,
        )
    if run.findings:
        report = "\n".join(f"  {f}" for f in run.findings)
        pytest.fail(
            f"plpgsql_check reports {len(run.findings)} finding(s) in"
            f" {len(run.checked)} checked function(s) ({CHECK_FLAGS}):\n{report}",
            pytrace=False,
        )


def test_plpgsql_check_catches_bad_functions(conn: psycopg.Connection) -> None:
    """The lint run sees a new pack function and a trigger function, and reports their faults."""
    conn.execute(
        """
        create function pgshield.zz_lint_probe(p_x integer) returns integer
        language plpgsql set search_path = pg_catalog, pg_temp as $$
        declare
          v_unused integer;
        begin
          return p_x;
        end
        $$;
        create table pgshield.zz_lint_probe_t (id integer primary key);
        create function pgshield.zz_lint_probe_trg() returns trigger
        language plpgsql set search_path = pg_catalog, pg_temp as $$
        begin
          new.no_such_column := 1;
          return new;
        end
        $$;
        create trigger zz_lint_probe before insert on pgshield.zz_lint_probe_t
          for each row execute function pgshield.zz_lint_probe_trg();
        create function pgshield.zz_lint_probe_unattached() returns trigger
        language plpgsql as $$ begin return new; end $$;
        """
    )
    run = lint_pack(conn)
    probe = [f for f in run.findings if f.function.startswith("pgshield.zz_lint_probe(")]
    assert [(f.line, f.level, f.message) for f in probe] == [
        (3, "warning", 'unused variable "v_unused"')
    ]
    trigger = [f for f in run.findings if f.function.startswith("pgshield.zz_lint_probe_trg(")]
    assert [(f.relation, f.level) for f in trigger] == [("pgshield.zz_lint_probe_t", "error")]
    assert "no_such_column" in trigger[0].message
    assert run.unchecked_triggers == ["pgshield.zz_lint_probe_unattached()"]
    assert not any("extensions." in name or "auth." in name for name in run.checked)


def test_generated_jsonb_fast_path_passes_plpgsql_check(conn: psycopg.Connection) -> None:
    """pgshield.jsonb_merge_fast is regenerated on every registration: lint what it becomes."""
    conn.execute(
        """
        create table public.zz_lint_docs (id bigint primary key, doc jsonb not null default '{}');
        create table public.zz_lint_notes (slug text primary key, body jsonb);
        select pgshield.register_jsonb_target('public.zz_lint_docs', 'doc');
        select pgshield.register_jsonb_target('public.zz_lint_notes', 'body', 'slug');
        """
    )
    run = lint_pack(conn)
    fast = [f for f in run.findings if f.function.startswith("pgshield.jsonb_merge_fast(")]
    if fast:
        report = "\n".join(f"  {f}" for f in fast)
        pytest.fail(
            f"the generated fast path (two targets) has plpgsql_check findings:\n{report}",
            pytrace=False,
        )

"""Supabase's Security Advisor rules, checked on the pack's own objects.

The dashboard's Security Advisor runs splinter's lints. Splinter cannot ship with the project,
so these are the same rules written here, over a freshly migrated database whose schema public
holds nothing but the pack (the compat stub lives in auth and extensions):

- 0028 / 0029: no security definer function in an exposed schema is executable by anon or
  authenticated;
- 0011: every function sets its search_path;
- 0013: row-level security is on for every table (pgshield's too, though it is not exposed);
- 0010: no view readable by anon or authenticated runs with its owner's rights.

Exposed schemas are PostgREST's ``db_schemas``; a Supabase project exposes ``public`` (and
``graphql_public``), and the pack's docs say to keep ``pgshield`` out of that list.
"""

from __future__ import annotations

import psycopg
import pytest

EXPOSED = ["public", "graphql_public"]
PACK = ["public", "pgshield"]

NOT_EXTENSION = """
  not exists (select 1 from pg_catalog.pg_depend d
               where d.classid = 'pg_catalog.pg_proc'::regclass and d.objid = p.oid
                 and d.deptype = 'e')"""

RULES: dict[str, str] = {
    "0028/0029 security definer function executable by an API role in an exposed schema": f"""
        select n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)
               || ') by ' || r.role
          from pg_catalog.pg_proc p
          join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         cross join unnest(array['anon', 'authenticated']) r(role)
         where p.prosecdef and n.nspname = any(%(exposed)s)
           and has_function_privilege(r.role, p.oid, 'EXECUTE') and {NOT_EXTENSION}""",
    "0011 function without a fixed search_path": f"""
        select n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)
               || ')'
          from pg_catalog.pg_proc p
          join pg_catalog.pg_namespace n on n.oid = p.pronamespace
         where n.nspname = any(%(pack)s) and {NOT_EXTENSION}
           and not exists (select 1 from unnest(coalesce(p.proconfig, '{{}}')) c
                            where c like 'search_path=%%')""",
    "0013 table without row-level security": """
        select n.nspname || '.' || c.relname
          from pg_catalog.pg_class c
          join pg_catalog.pg_namespace n on n.oid = c.relnamespace
         where c.relkind in ('r', 'p') and n.nspname = any(%(pack)s) and not c.relrowsecurity""",
    "0010 view readable by an API role that runs with its owner's rights": """
        select n.nspname || '.' || c.relname
          from pg_catalog.pg_class c
          join pg_catalog.pg_namespace n on n.oid = c.relnamespace
         where c.relkind = 'v' and n.nspname = any(%(pack)s)
           and (has_table_privilege('anon', c.oid, 'SELECT')
                or has_table_privilege('authenticated', c.oid, 'SELECT'))
           and not coalesce(c.reloptions, '{}') && array['security_invoker=true',
                 'security_invoker=on', 'security_invoker=1', 'security_invoker=yes']""",
}


def findings(conn: psycopg.Connection) -> dict[str, list[str]]:
    out = {}
    for rule, query in RULES.items():
        rows = [r[0] for r in conn.execute(query, {"exposed": EXPOSED, "pack": PACK})]
        if rows:
            out[rule] = sorted(rows)
    return out


def test_the_pack_raises_no_security_advisor_finding(conn: psycopg.Connection) -> None:
    functions = conn.execute(
        "select count(*) from pg_proc where pronamespace in ('public'::regnamespace,"
        " 'pgshield'::regnamespace)"
    ).fetchone()
    assert functions and functions[0] > 40, "the pack's functions are not there"
    assert findings(conn) == {}


@pytest.mark.parametrize(
    ("ddl", "rule"),
    [
        (
            "create function public.pgshield_t_bad() returns int language sql security definer"
            " set search_path = '' as 'select 1'; grant execute on function"
            " public.pgshield_t_bad() to authenticated",
            "0028/0029",
        ),
        (
            "create function pgshield.pgshield_t_bad() returns int language sql as 'select 1'",
            "0011",
        ),
        ("create table pgshield.pgshield_t_bad (id int)", "0013"),
        (
            "create view public.pgshield_t_bad as select 1 as one;"
            " grant select on public.pgshield_t_bad to anon",
            "0010",
        ),
    ],
)
def test_each_rule_catches_what_it_is_about(conn: psycopg.Connection, ddl: str, rule: str) -> None:
    with conn.transaction(force_rollback=True):
        for statement in ddl.split("; "):
            conn.execute(statement)
        found = findings(conn)
    assert [k for k in found if k.startswith(rule)], found
    assert any("pgshield_t_bad" in v for vs in found.values() for v in vs)

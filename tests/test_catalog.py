"""sql/ and migrations/ must build the same catalog."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgshield.migrations import migrate
from pgshield.resources import module_files
from support import Backend

SCHEMAS = ("pgshield", "public")

CATALOG_QUERIES: dict[str, str] = {
    "function": """
        select n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)
               || ')',
               jsonb_build_object('result', pg_get_function_result(p.oid), 'src', p.prosrc,
                 'config', p.proconfig, 'definer', p.prosecdef, 'volatile', p.provolatile,
                 'strict', p.proisstrict, 'parallel', p.proparallel, 'kind', p.prokind,
                 'lang', l.lanname, 'acl', p.proacl::text[], 'owner', p.proowner::regrole::text,
                 'comment', obj_description(p.oid, 'pg_proc'))
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
          join pg_language l on l.oid = p.prolang
         where n.nspname = any(%(schemas)s)""",
    "relation": """
        select n.nspname || '.' || c.relname,
               jsonb_build_object('kind', c.relkind, 'persistence', c.relpersistence,
                 'options', c.reloptions, 'rls', c.relrowsecurity, 'force_rls',
                 c.relforcerowsecurity, 'acl', c.relacl::text[],
                 'owner', c.relowner::regrole::text,
                 'view', case when c.relkind in ('v', 'm') then pg_get_viewdef(c.oid) end,
                 'comment', obj_description(c.oid, 'pg_class'))
          from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = any(%(schemas)s) and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f', 'c')""",
    "column": """
        select n.nspname || '.' || c.relname || '.' || a.attname,
               jsonb_build_object('type', format_type(a.atttypid, a.atttypmod),
                 'notnull', a.attnotnull, 'default', pg_get_expr(d.adbin, d.adrelid),
                 'position', a.attnum, 'acl', a.attacl::text[])
          from pg_attribute a join pg_class c on c.oid = a.attrelid
          join pg_namespace n on n.oid = c.relnamespace
          left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
         where n.nspname = any(%(schemas)s) and a.attnum > 0 and not a.attisdropped""",
    "index": """
        select n.nspname || '.' || c.relname, to_jsonb(pg_get_indexdef(c.oid))
          from pg_index i join pg_class c on c.oid = i.indexrelid
          join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = any(%(schemas)s)""",
    "constraint": """
        select n.nspname || '.' || coalesce(t.relname, y.typname, '') || '.' || k.conname,
               to_jsonb(pg_get_constraintdef(k.oid))
          from pg_constraint k join pg_namespace n on n.oid = k.connamespace
          left join pg_class t on t.oid = k.conrelid left join pg_type y on y.oid = k.contypid
         where n.nspname = any(%(schemas)s)""",
    "policy": """
        select schemaname || '.' || tablename || '.' || policyname,
               jsonb_build_object('permissive', permissive, 'roles', roles, 'cmd', cmd,
                 'qual', qual, 'with_check', with_check)
          from pg_policies where schemaname = any(%(schemas)s)""",
    "trigger": """
        select n.nspname || '.' || c.relname || '.' || t.tgname, to_jsonb(pg_get_triggerdef(t.oid))
          from pg_trigger t join pg_class c on c.oid = t.tgrelid
          join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = any(%(schemas)s) and not t.tgisinternal""",
    "type": """
        select n.nspname || '.' || t.typname,
               jsonb_build_object('kind', t.typtype, 'enum',
                 (select array_agg(e.enumlabel order by e.enumsortorder)
                    from pg_enum e where e.enumtypid = t.oid),
                 'domain', format_type(t.typbasetype, t.typtypmod), 'acl', t.typacl::text[])
          from pg_type t join pg_namespace n on n.oid = t.typnamespace
         where n.nspname = any(%(schemas)s) and t.typtype in ('e', 'd', 'c')
           and (t.typrelid = 0 or (select relkind from pg_class where oid = t.typrelid) = 'c')""",
    "schema": """
        select nspname, jsonb_build_object('acl', nspacl::text[],
                 'owner', nspowner::regrole::text, 'comment', obj_description(oid, 'pg_namespace'))
          from pg_namespace where nspname = any(%(schemas)s)""",
    "default_acl": """
        select coalesce(n.nspname, '*') || '.' || d.defaclobjtype::text || '.'
               || d.defaclrole::regrole::text, to_jsonb(d.defaclacl::text[])
          from pg_default_acl d left join pg_namespace n on n.oid = d.defaclnamespace""",
    "extension": "select extname, to_jsonb(extversion) from pg_extension",
}


def snapshot(dsn: str) -> dict[str, Any]:
    """Every catalog object the pack may create, keyed by kind and name."""
    out: dict[str, Any] = {}
    with psycopg.connect(dsn) as conn:
        for kind, query in CATALOG_QUERIES.items():
            for name, definition in conn.execute(query, {"schemas": list(SCHEMAS)}):
                if isinstance(definition, dict) and isinstance(definition.get("acl"), list):
                    # The order of ACL items follows the order of the grants, not their meaning.
                    definition["acl"] = sorted(definition["acl"])
                out[f"{kind} {name}"] = definition
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    diffs = [f"only in sql/: {k}" for k in sorted(a.keys() - b.keys())]
    diffs += [f"only in migrations/: {k}" for k in sorted(b.keys() - a.keys())]
    diffs += [f"differs: {k}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k]]
    return diffs


def build_from_sql(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for path in module_files():
            with conn.transaction():
                conn.execute(path.read_text())


def build_from_migrations(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate(conn)


@pytest.fixture
def two_builds(backend: Backend, bare_template_db: str) -> Iterator[tuple[str, str]]:
    with backend.clone(bare_template_db) as from_sql, backend.clone(bare_template_db) as from_mig:
        build_from_sql(from_sql)
        build_from_migrations(from_mig)
        yield from_sql, from_mig


def test_sql_and_migrations_build_the_same_catalog(two_builds: tuple[str, str]) -> None:
    from_sql, from_mig = two_builds
    a, b = snapshot(from_sql), snapshot(from_mig)
    assert any(k.startswith("function pgshield.") for k in a), "the snapshot saw no function"
    assert differences(a, b) == []


# Entry points called with default arguments on the request path: each call a client plans anew
# (no prepared statements) reads pg_proc.proargdefaults, and a compressed value is decompressed
# every time. A grant after the function is created leaves it compressed; both builds create
# increment_rate_limit again after its grants.
HOT_WITH_DEFAULTS = (
    "public.increment_rate_limit(text, integer, integer, integer, text)",
    "public.check_rate_limit(text, integer, text, text)",
    "public.peek_check_rate_limit(text, integer, text, text)",
    "public.peek_rate_limit(text, integer, integer, integer, text)",
)


def test_hot_entry_points_keep_their_defaults_uncompressed(two_builds: tuple[str, str]) -> None:
    for dsn in two_builds:
        with psycopg.connect(dsn) as conn:
            rows = conn.execute(
                "select p.oid::regprocedure::text, pg_column_compression(p.proargdefaults),"
                " p.proacl::text[], p.proconfig, p.prosecdef"
                " from unnest(%s::text[]) f(sig) join pg_proc p on p.oid = f.sig::regprocedure",
                (list(HOT_WITH_DEFAULTS),),
            ).fetchall()
            assert len(rows) == len(HOT_WITH_DEFAULTS)
            assert [(r[0], r[1]) for r in rows if r[1] is not None] == []
            inc = next(r for r in rows if r[0].startswith("increment_rate_limit"))
            # Created again from its own definition: the grants and settings are the ones it had.
            assert sorted(a.split("=")[0] for a in inc[2]) == ["postgres", "service_role"]
            assert inc[3] == ["search_path=pg_catalog, pg_temp"] and inc[4] is True
            assert conn.execute(
                "select allowed, cost, algorithm from public.increment_rate_limit('k', 5, 60)"
            ).fetchone() == (True, 1, "fixed_window")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            "create or replace function pgshield.version() returns text language sql immutable"
            " parallel safe set search_path = pg_catalog, pg_temp as $$ select '9.9.9'::text $$",
            "differs: function pgshield.version()",
        ),
        ("grant execute on function pgshield.version() to anon", "function pgshield.version()"),
        ("alter table pgshield.clock add column note text", "only in migrations/: column"),
        ("create index on pgshield.clock (frozen_at)", "only in migrations/: index"),
        (
            "create policy p on pgshield.clock for select to service_role using (true)",
            "only in migrations/: policy",
        ),
    ],
)
def test_a_change_on_one_side_alone_is_caught(
    two_builds: tuple[str, str], change: str, expected: str
) -> None:
    from_sql, from_mig = two_builds
    with psycopg.connect(from_mig, autocommit=True) as conn:
        conn.execute(change)
    diffs = differences(snapshot(from_sql), snapshot(from_mig))
    assert any(expected in d for d in diffs), diffs

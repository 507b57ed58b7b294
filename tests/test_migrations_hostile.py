"""The migration runner against a database where someone else prepared a trap."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from pgshield.errors import MigrationError
from pgshield.migrations import discover, migrate

ATTACKER = "pgshield_t_attacker"


@pytest.fixture
def trap(bare_db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute(
            f"do $$ begin if not exists (select 1 from pg_roles where rolname = '{ATTACKER}')"
            f" then create role {ATTACKER}; end if; end $$"
        )
        conn.execute(f"grant create on schema public to {ATTACKER}")
        conn.execute("create table public.pgshield_t_pwned (what text)")
        conn.execute(f"grant insert on public.pgshield_t_pwned to {ATTACKER}, public")
        yield conn
        conn.execute(f"drop owned by {ATTACKER}")


def test_a_look_alike_result_type_is_refused_before_anything_runs(
    trap: psycopg.Connection,
) -> None:
    trap.execute(f"set role {ATTACKER}")
    trap.execute(
        "create function public.pgshield_t_spy(integer) returns boolean language sql"
        " as $$ insert into public.pgshield_t_pwned values (current_user) returning true $$"
    )
    trap.execute(
        "create domain public.pgshield_t_int as integer check (public.pgshield_t_spy(value))"
    )
    trap.execute(
        "create type public.rate_limit_check_result"
        ' as (allowed boolean, "limit" public.pgshield_t_int)'
    )
    trap.execute("reset role")
    with pytest.raises(MigrationError) as caught:
        migrate(trap)
    assert "public.rate_limit_check_result" in str(caught.value)
    assert caught.value.sqlstate == "42501"
    assert trap.execute("select to_regnamespace('pgshield')").fetchone() == (None,)


def test_a_type_made_by_someone_else_is_also_caught_by_the_migrations(
    trap: psycopg.Connection,
) -> None:
    # supabase db push has no runner around it: the migrations check the fields themselves.
    released = [m for m in discover() if m.version < "20261201223000"]
    migrate(trap, migrations=released)
    trap.execute("drop type public.rate_limit_result cascade")
    trap.execute(f"set role {ATTACKER}")
    trap.execute("create type public.rate_limit_result as (allowed boolean)")
    trap.execute("reset role")
    with pytest.raises(MigrationError) as caught:
        migrate(trap)
    assert "public.rate_limit_result" in str(caught.value)


def test_migrations_resolve_nothing_through_a_writable_search_path(
    trap: psycopg.Connection,
) -> None:
    # CVE-2018-1058: format(text, text) in public is a better match than pg_catalog's variadic
    # format(text, "any"), and the 0.1.0 migrations call format() in DO blocks.
    trap.execute(f"set role {ATTACKER}")
    trap.execute(
        "create function public.format(text, text) returns text language sql"
        " as $$ insert into public.pgshield_t_pwned values (current_user);"
        " select pg_catalog.format($1, $2) $$"
    )
    trap.execute("reset role")
    assert trap.execute("select public.format('%s', 'x')").fetchone() == ("x",)
    trap.execute("delete from public.pgshield_t_pwned")
    migrate(trap)
    assert trap.execute("select pgshield.version()").fetchone() is not None
    assert trap.execute("select count(*) from public.pgshield_t_pwned").fetchone() == (0,)


def test_the_runner_itself_resolves_nothing_through_a_writable_search_path(
    trap: psycopg.Connection,
) -> None:
    # The runner's own queries ran before each migration pinned its path: exact-type
    # look-alikes of what they call beat pg_catalog's (which take int8, oid, anyarray).
    trap.execute(f"set role {ATTACKER}")
    for signature, returns, body in [
        ("hashtextextended(text, integer)", "bigint", "select 1::bigint"),
        ("unnest(text[])", "setof text", "select null::text where false"),
        ("has_schema_privilege(regnamespace, text)", "boolean", "select true"),
    ]:
        trap.execute(
            f"create function public.{signature} returns {returns} language sql as"
            f" $$ insert into public.pgshield_t_pwned values ('{signature.split('(')[0]}');"
            f" {body} $$"
        )
    trap.execute("reset role")
    trap.execute("set search_path = public, pg_catalog")  # a session that lists public first
    migrate(trap)
    assert trap.execute("select pgshield.version()").fetchone() is not None
    assert trap.execute("select what from public.pgshield_t_pwned").fetchall() == []
    assert trap.execute("show search_path").fetchone() == ("public, pg_catalog",)


def test_a_pgshield_schema_made_by_someone_else_is_refused_before_anything_runs(
    trap: psycopg.Connection,
) -> None:
    trap.execute(f"grant create on database {trap.info.dbname} to {ATTACKER}")
    trap.execute(f"set role {ATTACKER}")
    trap.execute("create schema pgshield")
    trap.execute("reset role")
    try:
        with pytest.raises(MigrationError) as caught:
            migrate(trap)
        assert caught.value.sqlstate == "42501"
        assert f"belongs to {ATTACKER}" in str(caught.value)
        applied = trap.execute(
            "select count(*) from pg_proc where pronamespace = 'pgshield'::regnamespace"
        ).fetchone()
        assert applied == (0,)
        recorded = trap.execute("select to_regclass('supabase_migrations.pgshield_checksums')")
        assert recorded.fetchone() == (None,), "nothing was applied, so nothing is recorded"
    finally:
        trap.execute("drop schema pgshield")
        trap.execute(f"revoke create on database {trap.info.dbname} from {ATTACKER}")

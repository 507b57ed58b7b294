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

"""The Supabase compat stub: what it provides, and its refusal to touch a real Supabase."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from pgshield.provision import prepare_database
from pgshield.resources import compat_sql
from support import Backend, act_as


def test_auth_functions_read_the_request_claims(bare_db: str) -> None:
    user = uuid.uuid4()
    with psycopg.connect(bare_db, autocommit=True) as conn:
        with act_as(conn, "authenticated", sub=user):
            row = conn.execute("select auth.uid(), auth.role(), auth.jwt() ->> 'sub'").fetchone()
            assert row == (user, "authenticated", str(user))
        with conn.transaction():
            conn.execute("select set_config('request.jwt.claims', '', true)")
            assert conn.execute("select auth.uid(), auth.jwt()").fetchone() == (None, None)
        roles = conn.execute(
            "select rolname, rolbypassrls from pg_roles"
            " where rolname in ('anon', 'authenticated', 'service_role', 'authenticator')"
            " order by rolname"
        ).fetchall()
    assert roles == [
        ("anon", False),
        ("authenticated", False),
        ("authenticator", False),
        ("service_role", True),
    ]


def test_applying_twice_is_harmless(bare_db: str) -> None:
    with psycopg.connect(bare_db, autocommit=True) as conn:
        conn.execute(compat_sql())
        conn.execute(compat_sql())
        assert conn.execute("select count(*) from auth.users").fetchone() == (0,)


def test_refuses_a_database_whose_auth_users_it_did_not_make(backend: Backend) -> None:
    name = f"pgshield_foreign_{uuid.uuid4().hex[:8]}"
    dsn = backend.create(name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("create schema auth; create table auth.users (id uuid primary key)")
        with pytest.raises(Exception, match="not created by the pgshield compat stub") as err:
            prepare_database(dsn)
        assert getattr(err.value, "sqlstate", None) == "55000"
        with psycopg.connect(dsn) as conn:
            leftovers = conn.execute(
                "select to_regnamespace('extensions'), to_regprocedure('auth.uid()'),"
                " to_regnamespace('pgshield')"
            ).fetchone()
        assert leftovers == (None, None, None), "nothing was written"
    finally:
        backend.drop(name)


def test_claims_json_is_what_postgrest_sends(bare_db: str) -> None:
    claims = {"sub": str(uuid.uuid4()), "role": "authenticated", "aal": "aal1"}
    with psycopg.connect(bare_db, autocommit=True) as conn, conn.transaction():
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        assert conn.execute("select auth.jwt()").fetchone() == (claims,)

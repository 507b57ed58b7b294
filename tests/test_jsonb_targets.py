"""merge_jsonb writes the row p_id names, in the table p_table names, whatever the key's type.

Key types whose name carries a modifier (char(n), bit(n)) once matched the wrong row: the
update cast p_id to `character`, which is character(1). A plain table's inheritance children
are other tables, with their own grants and policies: a merge through the parent never reaches
them. p_table is resolved through the catalog, the same way for a schema the caller may not use
as for one that does not exist.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from support import act_as

ALICE = uuid.UUID("5a0e0a52-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("5a0e0a52-0000-4000-8000-000000000b0b")


def merge(conn: psycopg.Connection, table: str, key: str, patch: str) -> object:
    row = conn.execute(
        "select public.merge_jsonb(%s, %s, %s::jsonb)", (table, key, patch)
    ).fetchone()
    return row[0] if row else None


def test_a_char_key_merges_the_row_it_names(conn: psycopg.Connection) -> None:
    conn.execute(
        "create table public.pgshield_t_vouchers ("
        " code char(6) primary key, owner_id uuid not null, doc jsonb not null default '{}');"
        " alter table public.pgshield_t_vouchers enable row level security;"
        " create policy own on public.pgshield_t_vouchers for all to authenticated"
        "  using (owner_id = auth.uid()) with check (owner_id = auth.uid());"
        " grant select, update on public.pgshield_t_vouchers to authenticated;"
        f" insert into public.pgshield_t_vouchers values ('X', '{BOB}', '{{}}'),"
        f"  ('XMAS24', '{ALICE}', '{{}}'), ('XY', '{ALICE}', '{{}}');"
        " select pgshield.register_jsonb_target('public.pgshield_t_vouchers', 'doc', 'code')"
    )
    with act_as(conn, "service_role") as c:
        merge(c, "pgshield_t_vouchers", "XMAS24", '{"fast": 1}')  # the fast path
        merge(c, "PUBLIC.PGSHIELD_T_VOUCHERS", "XY", '{"dynamic": 1}')  # the dynamic path
        answer = c.execute(
            "select public.merge_jsonb_if('pgshield_t_vouchers', 'XMAS24', '{\"if\": 1}',"
            " pgshield.jsonb_hash('{\"fast\": 1}'))"
        ).fetchone()
    assert answer == ({"fast": 1, "if": 1},)
    with act_as(conn, "authenticated", sub=ALICE) as c:
        assert merge(c, "pgshield_t_vouchers", "XMAS24", '{"mine": 1}') == {
            "fast": 1, "if": 1, "mine": 1,
        }  # fmt: skip
    with pytest.raises(psycopg.Error) as hidden, act_as(conn, "authenticated", sub=ALICE) as c:
        merge(c, "pgshield_t_vouchers", "X", '{"not": "mine"}')
    assert hidden.value.sqlstate == "PT404"
    rows = dict(conn.execute("select code, doc from public.pgshield_t_vouchers").fetchall())  # type: ignore[arg-type]
    assert rows == {
        "X     ": {},
        "XMAS24": {"fast": 1, "if": 1, "mine": 1},
        "XY    ": {"dynamic": 1},
    }


def test_a_bit_key_merges_the_row_it_names(conn: psycopg.Connection) -> None:
    conn.execute(
        "create table public.pgshield_t_flags (k bit(4) primary key,"
        " doc jsonb not null default '{}');"
        " insert into public.pgshield_t_flags values (B'1010', '{}'), (B'1000', '{}');"
        " select pgshield.register_jsonb_target('public.pgshield_t_flags', 'doc', 'k')"
    )
    with act_as(conn, "service_role") as c:
        assert merge(c, "pgshield_t_flags", "1010", '{"on": true}') == {"on": True}
    rows = dict(conn.execute("select k::text, doc from public.pgshield_t_flags").fetchall())  # type: ignore[arg-type]
    assert rows == {"1010": {"on": True}, "1000": {}}


def test_a_merge_through_a_parent_never_reaches_an_inheritance_child(
    conn: psycopg.Connection,
) -> None:
    conn.execute(
        "create table public.pgshield_t_profiles (id bigint primary key,"
        " doc jsonb not null default '{}');"
        " create table public.pgshield_t_profiles_archive () inherits (public.pgshield_t_profiles);"
        " alter table public.pgshield_t_profiles_archive add primary key (id);"
        " revoke all on public.pgshield_t_profiles_archive from authenticated, service_role;"
        " insert into public.pgshield_t_profiles values (1, '{}');"
        " insert into public.pgshield_t_profiles_archive values (1, '{\"kept\": true}'),"
        '  (2, \'{"ssn": "hidden"}\');'
        " grant select, update on public.pgshield_t_profiles to authenticated, service_role;"
        " select pgshield.register_jsonb_target('public.pgshield_t_profiles', 'doc')"
    )
    with act_as(conn, "service_role") as c:
        assert merge(c, "pgshield_t_profiles", "1", '{"new": 1}') == {"new": 1}  # one row only
    with pytest.raises(psycopg.Error) as child, act_as(conn, "service_role") as c:
        merge(c, "public.pgshield_t_profiles", "2", '{"defaced": true}')
    assert child.value.sqlstate == "PT404"
    with pytest.raises(psycopg.Error) as optimistic, act_as(conn, "service_role") as c:
        c.execute(
            "select public.merge_jsonb_if('pgshield_t_profiles', '2', '{\"x\": 1}',"
            ' pgshield.jsonb_hash(\'{"ssn": "hidden"}\'))'
        )
    assert optimistic.value.sqlstate == "PT404"
    archive = conn.execute(
        "select id, doc from public.pgshield_t_profiles_archive order by id"
    ).fetchall()
    assert archive == [(1, {"kept": True}), (2, {"ssn": "hidden"})]


def test_a_schema_the_caller_may_not_use_is_answered_as_a_missing_one(
    conn: psycopg.Connection,
) -> None:
    conn.execute(
        "create schema pgshield_t_internal;"
        " create table pgshield_t_internal.x (id bigint primary key, doc jsonb);"
        " revoke all on schema pgshield_t_internal from public"
    )
    answers = []
    for table in ("pgshield_t_internal.x", "pgshield_t_no_such_schema.x"):
        with (
            pytest.raises(psycopg.Error) as refused,
            act_as(conn, "authenticated", sub=ALICE) as c,
        ):
            merge(c, table, "1", "{}")
        answers.append(refused.value.sqlstate)
    assert answers == ["22023", "22023"]


@pytest.mark.parametrize(
    "table",
    ['"' + '""' * 200_000 + '"', "a" * 300, '"' + "x" * 127 + '"."' + "y" * 127 + '"'],
)
def test_a_p_table_longer_than_any_table_name_is_not_registered(
    conn: psycopg.Connection, table: str
) -> None:
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue, match="not a registered jsonb target"),
        act_as(conn, "authenticated", sub=ALICE) as c,
    ):
        merge(c, table, "1", "{}")


def test_the_longest_table_name_still_resolves(conn: psycopg.Connection) -> None:
    name = "t" + '"' * 62  # 63 characters, every quote doubled when quoted
    quoted = '"' + name.replace('"', '""') + '"'
    conn.execute(
        f"create table public.{quoted} (id bigint primary key, doc jsonb not null default '{{}}');"
        f" insert into public.{quoted} values (1, '{{}}')"
    )
    conn.execute(
        "select pgshield.register_jsonb_target(%s::regclass, 'doc')", (f"public.{quoted}",)
    )
    with act_as(conn, "service_role") as c:
        assert merge(c, f'"public".{quoted}', "1", '{"ok": 1}') == {"ok": 1}


def test_a_registered_table_in_a_schema_the_caller_may_not_use_is_no_target_to_them(
    conn: psycopg.Connection,
) -> None:
    conn.execute(
        "create schema pgshield_t_private;"
        " create table pgshield_t_private.docs (id int primary key, doc jsonb not null);"
        " insert into pgshield_t_private.docs values (1, '{}');"
        " grant select, update on pgshield_t_private.docs to authenticated;"
        " select pgshield.register_jsonb_target('pgshield_t_private.docs', 'doc');"
    )
    answers = []
    for table in (
        "pgshield_t_private.docs",
        'pgshield_t_private."docs"',
        "pgshield_t_private.nosuch",
    ):
        with (
            pytest.raises(psycopg.Error) as info,
            act_as(
                conn, "authenticated", sub=uuid.uuid4(), method="POST", path="/rpc/merge_jsonb"
            ) as c,
        ):
            c.execute("select public.merge_jsonb(%s, '1', '{\"a\": 1}')", (table,))
        answers.append((info.value.sqlstate, "is not a registered jsonb target" in str(info.value)))
    assert answers == [("22023", True)] * 3
    # With USAGE on the schema, the same caller merges.
    conn.execute("grant usage on schema pgshield_t_private to authenticated")
    with act_as(
        conn, "authenticated", sub=uuid.uuid4(), method="POST", path="/rpc/merge_jsonb"
    ) as c:
        doc = c.execute("select public.merge_jsonb('pgshield_t_private.docs', '1', '{\"a\": 1}')")
        assert doc.fetchone() == ({"a": 1},)

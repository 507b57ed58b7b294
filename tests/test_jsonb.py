"""The jsonb client: merges, paths, roles, optimistic merges, registration, errors, asyncio."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path

import psycopg
import pytest

from pgshield import (
    AsyncShield,
    Conflict,
    InvalidInput,
    JsonbTarget,
    NotAllowed,
    NotFound,
    Shield,
    ShieldError,
)
from support import act_as

ALICE = uuid.UUID("5a0e0a52-0000-4000-8000-00000000a11c")
BOB = uuid.UUID("5a0e0a52-0000-4000-8000-000000000b0b")

SETUP = f"""
create table public.assessments (
  id bigint primary key,
  owner_id uuid not null,
  responses jsonb not null default '{{}}'
);
alter table public.assessments enable row level security;
create policy assessments_own on public.assessments for all to authenticated
  using (owner_id = auth.uid()) with check (owner_id = auth.uid());
insert into public.assessments (id, owner_id) values (1, '{ALICE}'), (2, '{BOB}');
select pgshield.register_jsonb_target('public.assessments', 'responses');
"""


@pytest.fixture
def shield(conn: psycopg.Connection) -> Shield:
    conn.execute(SETUP)
    return Shield(conn)


def stored(conn: psycopg.Connection, id: int = 1) -> object:
    row = conn.execute("select responses from public.assessments where id = %s", (id,)).fetchone()
    assert row is not None
    return row[0]


# ------------------------------------------------------------------ merging --
def test_merge_returns_the_whole_document(shield: Shield, conn: psycopg.Connection) -> None:
    assert shield.jsonb.merge("assessments", 1, {"q1": {"answer": "yes"}}) == {
        "q1": {"answer": "yes"}
    }
    doc = shield.jsonb.merge("assessments", "1", {"q1": {"score": 3}, "q2": {"answer": "no"}})
    assert doc == {"q1": {"answer": "yes", "score": 3}, "q2": {"answer": "no"}}
    assert stored(conn) == doc


def test_merge_at_a_path_creates_missing_objects(shield: Shield) -> None:
    doc = shield.jsonb.merge(
        "assessments", 1, {"answer": "ja", "ключ": "😀"}, ["sections", "s1", "q7"]
    )
    assert doc == {"sections": {"s1": {"q7": {"answer": "ja", "ключ": "😀"}}}}
    doc = shield.jsonb.merge("assessments", 1, {"answer": None}, ("sections", "s1", "q7"))
    assert doc == {"sections": {"s1": {"q7": {"ключ": "😀"}}}}


def test_patch_none_is_json_null(shield: Shield) -> None:
    shield.jsonb.merge("assessments", 1, {"q1": {"a": 1}})
    assert shield.jsonb.merge("assessments", 1, None, ["q1"]) == {"q1": None}


def test_path_must_be_a_sequence_of_keys(shield: Shield) -> None:
    with pytest.raises(TypeError):
        shield.jsonb.merge("assessments", 1, {}, "q1")  # type: ignore[arg-type]


def test_merge_patch_is_the_databases_rfc_7396(shield: Shield) -> None:
    assert shield.jsonb.merge_patch({"a": [1], "b": {"c": 1}}, {"a": [2], "b": {"c": None}}) == {
        "a": [2],
        "b": {},
    }
    assert shield.jsonb.merge_patch({"a": 1}, ["x"]) == ["x"]
    assert shield.jsonb.merge_patch({"a": 1}, None) is None


def test_calls_join_the_callers_transaction(shield: Shield, db: str) -> None:
    with psycopg.connect(db) as own:
        with own.transaction(force_rollback=True):
            shield.jsonb.merge("assessments", 1, {"gone": True}, conn=own)
        assert Shield(own).jsonb.merge("assessments", 1, {"kept": True}) == {"kept": True}


# ------------------------------------------------------------------- errors --
def test_bad_input_is_invalid_input_and_writes_nothing(
    shield: Shield, conn: psycopg.Connection
) -> None:
    shield.jsonb.merge("assessments", 1, {"s": "text"})
    deep: object = 1
    for _ in range(33):
        deep = {"k": deep}
    cases = [
        (("no_such_table", 1, {}), "22023"),
        (("assessments; drop table public.assessments", 1, {}), "22023"),
        (("assessments", 1, {"x": 1}, ["s", "inner"]), "22023"),
        (("assessments", 1, deep), "22023"),
        (("assessments", 1, {}, [f"k{i}" for i in range(33)]), "22023"),
        (("assessments", "one", {}), "22P02"),
    ]
    for args, code in cases:
        with pytest.raises(InvalidInput) as info:
            shield.jsonb.merge(*args)  # type: ignore[arg-type]
        assert info.value.sqlstate == code, args
    # PostgREST reads the JSON string "[0:0]={q1}" for a text[] argument as an array numbered
    # from 0: refused for what it is, by both RPCs.
    for call in (
        "select public.merge_jsonb('assessments', '1', '{\"x\": 1}', '[0:0]={q1}')",
        "select public.merge_jsonb_if('assessments', '1', '{\"x\": 1}',"
        " pgshield.jsonb_hash('{\"s\": \"text\"}'), '[2:3]={a,b}')",
    ):
        with (
            pytest.raises(psycopg.errors.InvalidParameterValue, match="numbered from 1"),
            conn.transaction(),
        ):
            conn.execute(call)
    assert stored(conn) == {"s": "text"}


def test_missing_row_is_not_found(shield: Shield) -> None:
    with pytest.raises(NotFound) as info:
        shield.jsonb.merge("assessments", 99, {"a": 1})
    assert info.value.sqlstate == "PT404"
    assert info.value.hint and "row-level security" in info.value.hint


# -------------------------------------------------------------------- roles --
def test_rls_decides_who_merges_what(shield: Shield, conn: psycopg.Connection) -> None:
    with act_as(conn, "authenticated", sub=ALICE):
        assert shield.jsonb.merge("assessments", 1, {"q1": "alice"}, conn=conn) == {"q1": "alice"}
    with pytest.raises(NotFound), act_as(conn, "authenticated", sub=ALICE):
        shield.jsonb.merge("assessments", 2, {"q1": "alice was here"}, conn=conn)
    with pytest.raises(NotAllowed), act_as(conn, "anon"):
        shield.jsonb.merge("assessments", 1, {"q1": "anon"}, conn=conn)
    with act_as(conn, "service_role"):
        assert shield.jsonb.merge("assessments", 2, {"q9": "server"}, conn=conn) == {"q9": "server"}
    assert stored(conn, 1) == {"q1": "alice"}
    assert stored(conn, 2) == {"q9": "server"}


def test_no_update_grant_is_not_allowed(shield: Shield, conn: psycopg.Connection) -> None:
    conn.execute("revoke update on public.assessments from authenticated")
    with pytest.raises(NotAllowed), act_as(conn, "authenticated", sub=ALICE):
        shield.jsonb.merge("assessments", 1, {"q1": "x"}, conn=conn)


# --------------------------------------------------------------- optimistic --
def test_merge_if_checks_the_documents_hash(shield: Shield, conn: psycopg.Connection) -> None:
    doc = shield.jsonb.merge("assessments", 1, {"v": 1})
    digest = shield.jsonb.hash(doc)
    assert re.fullmatch(r"[0-9a-f]{32}", digest)
    row = conn.execute("select md5(responses::text) from public.assessments where id = 1")
    assert digest == row.fetchone()[0]  # type: ignore[index]
    doc = shield.jsonb.merge_if("assessments", 1, {"w": 2}, digest)
    assert doc == {"v": 1, "w": 2}
    with pytest.raises(Conflict) as info:
        shield.jsonb.merge_if("assessments", 1, {"x": 3}, digest)
    assert info.value.sqlstate == "PT409"
    assert stored(conn) == {"v": 1, "w": 2}
    with pytest.raises(NotFound):
        shield.jsonb.merge_if("assessments", 99, {"x": 3}, digest)
    with pytest.raises(InvalidInput):
        shield.jsonb.merge_if("assessments", 1, {"x": 3}, "not-a-hash")


def test_optimistic_read_modify_write_loop(shield: Shield, conn: psycopg.Connection) -> None:
    """The documented pattern: read, compute, merge_jsonb_if, on Conflict read again."""
    shield.jsonb.merge("assessments", 1, {"count": 0})
    attempts = 0
    for _ in range(5):
        attempts += 1
        doc = stored(conn)
        if attempts == 1:  # someone else writes between our read and our write
            shield.jsonb.merge("assessments", 1, {"count": 10})
        try:
            shield.jsonb.merge_if(
                "assessments", 1, {"count": doc["count"] + 1}, shield.jsonb.hash(doc)
            )
            break
        except Conflict:
            continue
    assert attempts == 2 and stored(conn) == {"count": 11}


# ------------------------------------------------------------- registration --
def test_registration(conn: psycopg.Connection) -> None:
    conn.execute(
        "create table public.notes (slug text primary key, body jsonb, title text unique);"
        "insert into public.notes values ('a', '{}', 't')"
    )
    shield = Shield(conn)
    assert shield.jsonb.register("notes", "body", "slug") is True
    assert shield.jsonb.register("public.notes", "body", "slug") is False
    [target] = [t for t in shield.jsonb.targets() if t.table == "public.notes"]
    assert isinstance(target, JsonbTarget)
    assert (target.column, target.key_column, target.problem) == ("body", "slug", None)
    assert shield.jsonb.merge("notes", "a", {"x": 1}) == {"x": 1}
    with pytest.raises(Conflict):
        shield.jsonb.register("notes", "body", "title")
    with pytest.raises(InvalidInput):
        shield.jsonb.register("notes", "title", "slug")
    with pytest.raises(ShieldError):
        shield.jsonb.register("no_such_table", "body")
    assert shield.jsonb.unregister("notes") is True
    assert shield.jsonb.unregister("notes") is False
    with pytest.raises(InvalidInput):
        shield.jsonb.merge("notes", "a", {"x": 2})


def test_registration_is_for_service_role(shield: Shield, conn: psycopg.Connection) -> None:
    with pytest.raises(NotAllowed), act_as(conn, "authenticated", sub=ALICE):
        shield.jsonb.register("assessments", "responses", conn=conn)
    with pytest.raises(NotAllowed), act_as(conn, "authenticated", sub=ALICE):
        shield.jsonb.targets(conn=conn)
    with act_as(conn, "service_role"):
        assert [t.table for t in shield.jsonb.targets(conn=conn)] == ["public.assessments"]


# ------------------------------------------------------------------ asyncio --
def test_async_client(db: str, conn: psycopg.Connection) -> None:
    conn.execute(SETUP)

    async def go() -> None:
        async with AsyncShield(db) as shield:
            assert await shield.jsonb.merge("assessments", 1, {"a": 1}, ["x"]) == {"x": {"a": 1}}
            doc = await shield.jsonb.merge("assessments", 1, {"b": 2})
            digest = await shield.jsonb.hash(doc)
            assert await shield.jsonb.merge_if("assessments", 1, {"c": 3}, digest) == {
                **doc,
                "c": 3,
            }
            with pytest.raises(Conflict):
                await shield.jsonb.merge_if("assessments", 1, {"d": 4}, digest)
            assert await shield.jsonb.merge_patch({"a": 1}, {"a": None}) == {}
            assert [t.table for t in await shield.jsonb.targets()] == ["public.assessments"]
            assert await shield.jsonb.unregister("assessments") is True
            assert await shield.jsonb.register("assessments", "responses") is True
            with pytest.raises(NotFound):
                await shield.jsonb.merge("assessments", 99, {})

    asyncio.run(go())


# ------------------------------------------------- the documented wrapper --
def test_the_documented_wrapper_works(conn: psycopg.Connection) -> None:
    """docs/jsonb.md's update_assessment_response migration, run as a user would."""
    text = (Path(__file__).parents[1] / "docs" / "jsonb.md").read_text()
    block = re.search(
        r"<!-- wrapper:start -->\s*```sql\n(.*?)```\s*<!-- wrapper:end -->", text, re.S
    )
    assert block, "docs/jsonb.md lost its wrapper example"
    conn.execute(block.group(1))
    user = uuid.uuid4()
    conn.execute("insert into auth.users (id) values (%s)", (user,))
    conn.execute(
        "insert into public.assessments (id, user_id) values"
        " ('11111111-1111-4111-8111-111111111111', %s)",
        (user,),
    )
    with act_as(conn, "authenticated", sub=user):
        doc = conn.execute(
            "select public.update_assessment_response(%s::uuid, %s::text, %s::jsonb)",
            ("11111111-1111-4111-8111-111111111111", "q1", '{"answer": "yes"}'),
        ).fetchone()[0]  # type: ignore[index]
    assert doc == {"q1": {"answer": "yes"}}
    with pytest.raises(psycopg.Error) as info, act_as(conn, "authenticated", sub=uuid.uuid4()):
        conn.execute(
            "select public.update_assessment_response(%s::uuid, %s::text, %s::jsonb)",
            ("11111111-1111-4111-8111-111111111111", "q1", '{"answer": "no"}'),
        )
    assert info.value.sqlstate == "PT404"

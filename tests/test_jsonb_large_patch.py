"""Large patches: 65,000 null members, values and objects give the exact RFC 7396 result.

A level of a patch with more than 16 null or object members is merged by one aggregate over a
join of the target's and the patch's members (Postgres's ``jsonb - text[]`` is quadratic);
these tests hold that branch to the reference, at the root, at a path, through the RPC as an
end user, and under the depth limit. Its cost is measured in bench/bench_jsonb.py (a test
never asserts a wall-clock limit).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from support import act_as
from test_jsonb_vectors import JSON, KEYS, merge_patch

MEMBERS = 65_000
ALICE = uuid.UUID("5a0e0a52-0000-4000-8000-00000000a11c")
SETUP = f"""
create table public.pgshield_t_big (
  id bigint primary key,
  owner_id uuid not null,
  doc jsonb not null default '{{}}'
);
alter table public.pgshield_t_big enable row level security;
create policy pgshield_t_big_own on public.pgshield_t_big for all to authenticated
  using (owner_id = auth.uid()) with check (owner_id = auth.uid());
grant select, update on public.pgshield_t_big to authenticated;
insert into public.pgshield_t_big (id, owner_id) values (1, '{ALICE}');
select pgshield.register_jsonb_target('public.pgshield_t_big', 'doc');
"""


def key(i: int) -> str:
    return f"k{i:05d}"


# The document: every other patched key exists (with a value or an object), plus keys the patch
# does not name. Stored, it is TOAST-compressed like a real large document.
DOCUMENT: dict[str, Any] = {
    **{key(i): (i if i % 4 else {"kept": i, "gone": True}) for i in range(0, MEMBERS, 2)},
    **{f"other{i}": {"v": i} for i in range(100)},
}
NULLS: dict[str, Any] = {key(i): None for i in range(MEMBERS)}
VALUES: dict[str, Any] = {key(i): i * 10 for i in range(MEMBERS)}
# Objects (with nulls) that merge into the target's objects, values, nulls, and arrays.
MIXED: dict[str, Any] = {
    key(i): ({"gone": None, "new": i}, -i, None, [None, {"a": None}])[i % 4] for i in range(MEMBERS)
}


@pytest.fixture
def big(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute(SETUP)
    conn.execute("update public.pgshield_t_big set doc = %s where id = 1", (Jsonb(DOCUMENT),))
    return conn


def merged(conn: psycopg.Connection, target: Any, patch: Any) -> Any:
    row = conn.execute(
        "select pgshield.jsonb_merge_patch(%s::jsonb, %s::jsonb)", (Jsonb(target), Jsonb(patch))
    ).fetchone()
    assert row is not None
    return row[0]


def stored(conn: psycopg.Connection) -> Any:
    row = conn.execute("select doc from public.pgshield_t_big where id = 1").fetchone()
    assert row is not None
    return row[0]


def rpc(conn: psycopg.Connection, patch: Any, path: list[str] | None = None) -> Any:
    """merge_jsonb as the row's owner, an authenticated end user (as PostgREST calls it)."""
    with act_as(conn, "authenticated", sub=ALICE):
        row = conn.execute(
            "select merge_jsonb('pgshield_t_big', '1', %s::jsonb, %s::text[])",
            (Jsonb(patch), path or []),
        ).fetchone()
    assert row is not None
    return row[0]


# ------------------------------------------------------------ merge_patch --
def test_a_patch_of_65000_nulls_removes_every_named_key(conn: psycopg.Connection) -> None:
    result = merged(conn, DOCUMENT, NULLS)
    assert result == {f"other{i}": {"v": i} for i in range(100)}
    assert merged(conn, {}, NULLS) == {}
    assert merged(conn, [1, 2], NULLS) == {}, "a non-object target counts as {}"


def test_a_patch_of_65000_values_sets_every_key(conn: psycopg.Connection) -> None:
    assert merged(conn, DOCUMENT, VALUES) == {**DOCUMENT, **VALUES}
    assert merged(conn, {}, VALUES) == VALUES


def test_a_mixed_patch_of_65000_members_matches_the_reference(conn: psycopg.Connection) -> None:
    result = merged(conn, DOCUMENT, MIXED)
    assert result == merge_patch(DOCUMENT, MIXED)
    assert result[key(0)] == {"kept": 0, "new": 0}, "an object merges into the target's object"
    assert result[key(3)] == [None, {"a": None}], "arrays replace, nulls inside them stay"
    assert key(2) not in result and key(6) not in result
    assert merged(conn, "text", MIXED) == merge_patch("text", MIXED)


def test_many_nulls_one_level_down(conn: psycopg.Connection) -> None:
    target = {"a": DOCUMENT, "b": 1}
    patch = {"a": NULLS, "c": {key(i): None for i in range(20)}}
    assert merged(conn, target, patch) == merge_patch(target, patch)


# ------------------------------------------------------------------- RPC --
def test_merge_jsonb_with_65000_nulls_then_values(big: psycopg.Connection) -> None:
    doc = rpc(big, NULLS)
    assert doc == {f"other{i}": {"v": i} for i in range(100)}
    assert stored(big) == doc
    doc = rpc(big, VALUES)
    assert doc == {f"other{i}": {"v": i} for i in range(100)} | VALUES
    assert stored(big) == doc


def test_merge_jsonb_with_a_mixed_patch_at_the_root_and_at_a_path(
    big: psycopg.Connection,
) -> None:
    assert rpc(big, MIXED) == merge_patch(DOCUMENT, MIXED)
    assert stored(big) == merge_patch(DOCUMENT, MIXED)
    big.execute("update public.pgshield_t_big set doc = %s where id = 1", (Jsonb({"d": DOCUMENT}),))
    assert rpc(big, NULLS, ["d"]) == {"d": {f"other{i}": {"v": i} for i in range(100)}}


def test_too_deep_a_member_of_a_large_patch_is_refused(big: psycopg.Connection) -> None:
    deep: Any = 1
    for _ in range(32):
        deep = {"k": deep}
    patch = {**{key(i): None for i in range(100)}, "deep": deep}  # nests 33 levels
    with pytest.raises(psycopg.errors.InvalidParameterValue) as caught:
        rpc(big, patch)
    assert caught.value.sqlstate == "22023"
    assert stored(big) == DOCUMENT, "nothing was written"
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        merged(big, {}, patch)
    accepted = {**{key(i): None for i in range(100)}, "deep": deep["k"]}  # 32 levels
    assert merged(big, {}, accepted) == {"deep": deep["k"]}


# ------------------------------------------------------------- generated --
# Patches with more than 16 null or object members (the aggregate branch), at two levels.
SPECIAL = st.one_of(st.none(), st.dictionaries(KEYS, JSON, max_size=4))
WIDE = st.builds(
    lambda plain, special: {**plain, **special},
    st.dictionaries(KEYS, JSON, max_size=10),
    st.dictionaries(KEYS, SPECIAL, min_size=17, max_size=30),
)
WIDE_PATCH = st.one_of(WIDE, st.builds(lambda outer, inner: {**outer, "w": inner}, WIDE, WIDE))
TARGETS = st.one_of(
    st.dictionaries(KEYS, JSON, max_size=40),
    st.builds(lambda t, w: {**t, "w": w}, st.dictionaries(KEYS, JSON, max_size=20), WIDE),
    JSON,
)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(target=TARGETS, patch=WIDE_PATCH)
def test_wide_patches_match_the_reference(
    conn: psycopg.Connection, target: Any, patch: Any
) -> None:
    assert merged(conn, target, patch) == merge_patch(target, patch)

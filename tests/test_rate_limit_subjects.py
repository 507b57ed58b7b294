"""Who a signed-in caller is limited as: the JWT's sub, also when it is not a UUID.

Supabase's third-party auth (Clerk, Firebase, Auth0, Cognito) issues ``authenticated`` tokens
whose ``sub`` is the provider's user id; ``auth.uid()`` casts it to uuid and fails (22P02).
``pgshield.caller_subject()`` keys such callers as ``sub:<sub>``; a UUID sub stays the user id
as ``auth.uid()::text`` gives it, so existing state keeps its keys. check_rate_limit, the Data
API guard and get_rate_limit_usage agree on the subject, so they share one quota.
"""

from __future__ import annotations

import hashlib
import json
import uuid

import psycopg
import pytest

from support import act_as
from test_guard import POLICY, owner, request  # noqa: F401  (owner is a fixture)

CLERK = "user_2NNEqL2nrIRdJ194ndJqAHwEfxC"


def subject(conn: psycopg.Connection, claims: dict) -> str | None:
    """caller_subject() (pack functions call it; the test calls it as the owner) for claims."""
    with conn.transaction():
        conn.execute("select set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        row = conn.execute("select pgshield.caller_subject()").fetchone()
    return row[0] if row else None


@pytest.mark.parametrize(
    ("sub", "expected"),
    [
        ("5A0E0A52-0000-4000-8000-00000000A11C", "5a0e0a52-0000-4000-8000-00000000a11c"),
        # any form the uuid type reads, as auth.uid()::text prints it
        ("{5A0E0A5200004000800000000000A11C}", "5a0e0a52-0000-4000-8000-00000000a11c"),
        ("5a0e0a52-0000-4000-8000-00000000a11", "sub:5a0e0a52-0000-4000-8000-00000000a11"),
        (CLERK, f"sub:{CLERK}"),
        ("anon:203.0.113.7", "sub:anon:203.0.113.7"),  # never another bucket's key
        ("service_role", "sub:service_role"),
        ("x" * 201, "subh:" + hashlib.md5(b"x" * 201).hexdigest()),
        # a short sub spelling a long one's hash is not in its bucket
        (
            "md5:" + hashlib.md5(b"x" * 201).hexdigest(),
            "sub:md5:" + hashlib.md5(b"x" * 201).hexdigest(),
        ),
        (
            "h:" + hashlib.md5(b"x" * 201).hexdigest(),
            "sub:h:" + hashlib.md5(b"x" * 201).hexdigest(),
        ),
        ("", None),
    ],
)
def test_the_subject_of_a_sub(conn: psycopg.Connection, sub: str, expected: str | None) -> None:
    assert subject(conn, {"sub": sub}) == expected


@pytest.mark.parametrize(
    "sub", ["5a0e0a52-0000-4000-8000-00000000a11c", "{5A0E0A5200004000800000000000A11C}"]
)
def test_a_uuid_sub_is_what_auth_uid_gives(conn: psycopg.Connection, sub: str) -> None:
    with act_as(conn, "authenticated", claims={"sub": sub}) as c:
        row = c.execute("select auth.uid()::text").fetchone()
    assert row is not None and subject(conn, {"sub": sub}) == row[0]
    assert subject(conn, {}) is None


def test_a_third_party_user_shares_one_quota_across_rpc_guard_and_usage(
    owner: psycopg.Connection,  # noqa: F811
) -> None:
    owner.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    claims = {"sub": CLERK}
    with act_as(owner, "authenticated", claims=claims) as c:
        row = c.execute(
            "select allowed, remaining from public.check_rate_limit(%s)", (POLICY,)
        ).fetchone()
        assert row == (True, 2)
        c.execute("select public.check_rate_limit(%s, p_subject => %s)", (POLICY, f"sub:{CLERK}"))
    with (
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        act_as(owner, "authenticated", claims=claims) as c,
    ):
        c.execute("select public.check_rate_limit(%s, p_subject => %s)", (POLICY, CLERK))
    with act_as(
        owner, "authenticated", claims=claims, method="POST", path="/pgshield_t_todos"
    ) as c:
        c.execute("select pgshield.request_guard()")
    answer = request(owner, sub=None)  # another caller without a sub: the address bucket
    assert answer.status == 200
    with act_as(owner, "authenticated", claims=claims) as c:
        usage = c.execute("select public.get_rate_limit_usage()").fetchone()[0]  # type: ignore[index]
        row = c.execute("select allowed from public.check_rate_limit(%s)", (POLICY,)).fetchone()
        assert row == (False,)
    counts = {(u["window_seconds"], u["used"]) for u in usage if u["policy"] == POLICY}
    assert counts == {(60, 3), (3600, 3)}, json.dumps(usage)
    keys = dict(
        owner.execute(  # type: ignore[arg-type]
            "select key, max(count) from pgshield.rate_limit_policy_state_windows"
            " where policy = %s group by key",
            (POLICY,),
        ).fetchall()
    )
    assert keys == {f"sub:{CLERK}": 3, "anon:unknown": 1}


def test_teams_still_need_a_supabase_auth_user(conn: psycopg.Connection) -> None:
    """Team members are auth.users ids: a third-party sub gets auth.uid()'s 22P02, no team."""
    slug = "pgshield-t-third-party-team"
    with (
        pytest.raises(psycopg.errors.InvalidTextRepresentation),
        act_as(conn, "authenticated", claims={"sub": CLERK}) as c,
    ):
        c.execute("select public.create_team_with_owner(%s, %s)", ("Third party", slug))
    assert conn.execute(
        "select count(*) from pgshield.teams where slug = %s", (slug,)
    ).fetchone() == (0,)


@pytest.mark.parametrize(
    "sub", ["{5A0E0A5200004000800000000000A11C}", CLERK, "y" * 201, "5a0e0a52-0000-4000-8000"]
)
def test_check_and_guard_key_a_sub_as_caller_subject_does(
    owner: psycopg.Connection,  # noqa: F811
    sub: str,
) -> None:
    """The inline copies in rate_limit_check and request_guard_decide agree with the function."""
    owner.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    claims = {"sub": sub}
    with act_as(owner, "authenticated", claims=claims) as c:
        c.execute("select public.check_rate_limit(%s)", (POLICY,))
    with act_as(
        owner, "authenticated", claims=claims, method="POST", path="/pgshield_t_todos"
    ) as c:
        c.execute("select pgshield.request_guard()")
    keys = owner.execute(
        "select key, max(count) from pgshield.rate_limit_policy_state_windows"
        " where policy = %s group by key",
        (POLICY,),
    ).fetchall()
    assert keys == [(subject(owner, claims), 2)]


def anonymous_user(n: int) -> dict:
    """The claims of the n-th Supabase anonymous sign-in: a fresh user id each time."""
    return {"sub": f"a0a0a0a0-0000-4000-8000-{n:012d}", "is_anonymous": True}


ADDRESS = {"x-forwarded-for": "198.51.100.23"}


def test_anonymous_sign_ins_share_their_addresss_quota(owner: psycopg.Connection) -> None:  # noqa: F811
    # Each anonymous sign-in is a new user id: keyed by it, a client would get a fresh quota
    # by signing in again. They are limited as anonymous callers from their address, the
    # same key in check_rate_limit, the guard and get_rate_limit_usage.
    owner.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    answers = []
    for n in range(4):
        with act_as(owner, "authenticated", claims=anonymous_user(n), headers=ADDRESS) as c:
            answers.append(
                c.execute(
                    "select allowed, subject from public.check_rate_limit(%s)", (POLICY,)
                ).fetchone()
            )
    assert answers == [(True, "anon:198.51.100.23")] * 3 + [(False, "anon:198.51.100.23")]
    with (
        act_as(
            owner,
            "authenticated",
            claims=anonymous_user(9),
            headers=ADDRESS,
            method="POST",
            path="/pgshield_t_todos",
        ) as c,
        pytest.raises(psycopg.Error) as refused,
    ):
        c.execute("select pgshield.request_guard()")
    assert refused.value.sqlstate == "PGRST"
    with act_as(owner, "authenticated", claims=anonymous_user(10), headers=ADDRESS) as c:
        usage = c.execute("select public.get_rate_limit_usage()").fetchone()[0]  # type: ignore[index]
    assert {(u["window_seconds"], u["used"]) for u in usage if u["policy"] == POLICY} == {
        (60, 3),
        (3600, 3),
    }
    # A permanent user from the same address keeps a quota of their own.
    with act_as(
        owner, "authenticated", claims={"sub": anonymous_user(0)["sub"]}, headers=ADDRESS
    ) as c:
        row = c.execute("select allowed, subject from public.check_rate_limit(%s)", (POLICY,))
        assert row.fetchone() == (True, anonymous_user(0)["sub"])
    # Without a client address they share 'anon:unknown', as anon callers do.
    with act_as(owner, "authenticated", claims=anonymous_user(11)) as c:
        row = c.execute("select subject from public.check_rate_limit(%s)", (POLICY,))
        assert row.fetchone() == ("anon:unknown",)


def test_a_project_may_key_anonymous_sign_ins_by_user(owner: psycopg.Connection) -> None:  # noqa: F811
    owner.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    with (
        act_as(owner, "authenticated", sub=uuid.uuid4()) as c,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        c.execute("select pgshield.set_anonymous_users('user')")
    with (
        act_as(owner, "anon", headers=ADDRESS) as c,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        c.execute("select pgshield.set_anonymous_users('user')")
    with (
        act_as(owner, "service_role") as c,
        pytest.raises(psycopg.errors.InvalidParameterValue),
    ):
        c.execute("select pgshield.set_anonymous_users('everyone')")
    assert owner.execute(
        "select pgshield.client_address_source() ->> 'anonymous_users'"
    ).fetchone() == ("address",)
    with act_as(owner, "service_role") as c:
        source = c.execute("select pgshield.set_anonymous_users('user')").fetchone()[0]  # type: ignore[index]
    assert source["anonymous_users"] == "user" and source["header"] == "x-forwarded-for"
    for n in range(2):
        with act_as(owner, "authenticated", claims=anonymous_user(n), headers=ADDRESS) as c:
            row = c.execute("select allowed, subject from public.check_rate_limit(%s)", (POLICY,))
            assert row.fetchone() == (True, anonymous_user(n)["sub"])
        with act_as(
            owner,
            "authenticated",
            claims=anonymous_user(n),
            headers=ADDRESS,
            method="POST",
            path="/pgshield_t_todos",
        ) as c:
            c.execute("select pgshield.request_guard()")
    keys = owner.execute(
        "select key, max(count) from pgshield.rate_limit_policy_state_windows"
        " where policy = %s group by key order by key",
        (POLICY,),
    ).fetchall()
    assert keys == [(anonymous_user(0)["sub"], 2), (anonymous_user(1)["sub"], 2)]
    assert subject(owner, anonymous_user(5)) == anonymous_user(5)["sub"]

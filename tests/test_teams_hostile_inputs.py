"""Teams: what a hostile member, a stale token or odd text cannot do.

Driven as PostgREST calls the entry points (one transaction, role authenticated, the JWT's
claims). Each refusal is checked for what it wrote: nothing for bad input (22023, raised), one
denied audit row for a refusal (answered).
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from pgshield import Shield
from pgshield.migrations import discover, migrate
from support import act_as
from test_teams import ANN, BOB, CID, audit_rows, owner  # noqa: F401  (owner is a fixture)


def team_of(conn: psycopg.Connection, slug: str) -> str:
    with act_as(conn, "service_role"):
        row = conn.execute(
            "select public.create_team_with_owner(%s, %s, %s)", ("Acme", slug, ANN)
        ).fetchone()
    assert row is not None
    return row[0]["id"]


def invitations(conn: psycopg.Connection, team: str) -> int:
    row = conn.execute(
        "select count(*) from pgshield.team_invitations where team_id = %s", (team,)
    ).fetchone()
    return row[0] if row else -1


@pytest.mark.parametrize(
    "expires_in",
    [
        "91 days",
        "3 months 1 day",
        "100 years -35910 days",
        "10000 years -3599910 days",
        "30 seconds",
        "300000 years",  # past the timestamp range: 22023, not 22008
        "300000 years -107999970 days",
        "-300000 years",
        "1 month -29 days",  # mixed signs: how long depends on the date
    ],
)
def test_an_invitation_lives_1_minute_to_90_days_on_the_clock(
    owner: psycopg.Connection,  # noqa: F811
    expires_in: str,
) -> None:
    team = team_of(owner, "pgshield-t-expiry")
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue, match="between 1 minute and 90 days"),
        act_as(owner, "authenticated", sub=ANN) as c,
    ):
        c.execute(
            "select public.create_team_invitation(%s, 'member', null, %s::interval)",
            (team, expires_in),
        )
    assert invitations(owner, team) == 0
    with act_as(owner, "authenticated", sub=ANN) as c:
        row = c.execute(
            "select public.create_team_invitation(%s, 'member', null, '90 days')", (team,)
        ).fetchone()
    assert row is not None and "token" in row[0]


def test_a_deleted_users_token_is_refused_and_audited(owner: psycopg.Connection) -> None:  # noqa: F811
    team = team_of(owner, "pgshield-t-deleted")
    with act_as(owner, "authenticated", sub=ANN) as c:
        token = c.execute("select public.create_team_invitation(%s, 'member')", (team,)).fetchone()[
            0
        ]["token"]  # type: ignore[index]
    owner.execute("delete from auth.users where id = %s", (CID,))
    with act_as(owner, "authenticated", sub=CID) as c:
        answer, status = c.execute(
            "select public.accept_team_invitation(%s), current_setting('response.status', true)",
            (token,),
        ).fetchone()  # type: ignore[misc]
        created = c.execute(
            "select public.create_team_with_owner('Ghost', 'pgshield-t-ghost')"
        ).fetchone()[0]  # type: ignore[index]
    assert (answer["code"], answer["message"], status) == (
        "42501",
        "this user no longer exists",
        "403",
    )
    assert created["code"] == "42501"
    assert audit_rows(owner, "denied") == [("accept_invitation", "42501"), ("create_team", "42501")]
    members = owner.execute(
        "select count(*) from pgshield.team_members where user_id = %s", (CID,)
    ).fetchone()
    assert members == (0,)


def test_a_direct_call_cannot_plant_a_team_target_or_note_in_the_audit(
    owner: psycopg.Connection,  # noqa: F811
) -> None:
    team = team_of(owner, "pgshield-t-plant")
    with act_as(owner, "service_role"):
        owner.execute("select public.add_team_member(%s, %s, 'viewer')", (team, BOB))
    planted = {"team_id": team, "user_id": str(ANN), "note": "SECURITY: ann tried to delete it"}
    with act_as(owner, "authenticated", sub=BOB) as c:
        # list_my_teams takes user_id only: another user's id is refused, and the audit row
        # keeps that argument alone, with no team.
        answer = c.execute(
            "select pgshield.teams_call('list_my_teams', %s)", (json.dumps(planted),)
        ).fetchone()[0]  # type: ignore[index]
    assert answer["code"] == "42501"
    row = owner.execute(
        "select team_id, target_user_id, details from pgshield.team_audit"
        " where outcome = 'denied' and actor_id = %s",
        (BOB,),
    ).fetchone()
    assert row == (None, ANN, {"user_id": str(ANN)})
    with act_as(owner, "authenticated", sub=ANN) as c:
        seen = c.execute("select public.get_team_audit(%s, 100, true)", (team,)).fetchone()[0]  # type: ignore[index]
    assert seen == []


@pytest.mark.parametrize(
    "name",
    ["\u200b", "Acme\u202egnp.exe", "A\u2066b\u2069", "\ufeffAcme", "Ac\u00adme", "x\u200dy"],
)
def test_a_name_with_invisible_format_characters_is_refused(
    owner: psycopg.Connection,  # noqa: F811
    name: str,
) -> None:
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue, match="invisible format"),
        act_as(owner, "authenticated", sub=ANN) as c,
    ):
        c.execute("select public.create_team_with_owner(%s, 'pgshield-t-format')", (name,))
    assert owner.execute(
        "select count(*) from pgshield.teams where slug = 'pgshield-t-format'"
    ).fetchone() == (0,)


@pytest.mark.parametrize(
    "email", ["a\x1b[2J@evil.example.com", "x\x07@b.co", "a@b\u202e.co", "a\u200b@b.co"]
)
def test_an_email_with_control_or_format_characters_is_refused(
    owner: psycopg.Connection,  # noqa: F811
    email: str,
) -> None:
    team = team_of(owner, "pgshield-t-email")
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue, match="p_email must be an email"),
        act_as(owner, "authenticated", sub=ANN) as c,
    ):
        c.execute("select public.create_team_invitation(%s, 'member', %s)", (team, email))
    assert invitations(owner, team) == 0


def test_my_teams_show_only_name_where_i_may_not_read(owner: psycopg.Connection) -> None:  # noqa: F811
    with act_as(owner, "service_role"):
        team = owner.execute(
            "select public.create_team_with_owner('Acme', 'pgshield-t-read', %s,"
            " 'billing@acme.test')",
            (ANN,),
        ).fetchone()[0]["id"]  # type: ignore[index]
        owner.execute("select public.add_team_member(%s, %s, 'viewer')", (team, BOB))
    owner.execute("select pgshield.set_team_role_permissions('viewer', '{}')")
    with act_as(owner, "authenticated", sub=BOB) as c:
        [mine] = c.execute("select public.list_my_teams()").fetchone()[0]  # type: ignore[index]
        refused = c.execute("select public.get_team(%s)", (team,)).fetchone()[0]  # type: ignore[index]
    assert refused["code"] == "42501"
    assert set(mine) == {"id", "slug", "name", "created_at", "updated_at", "role", "permissions"}
    assert mine["permissions"] == []
    with act_as(owner, "authenticated", sub=BOB) as c:
        [through_client] = Shield(c).teams.mine()
    assert (through_client.name, through_client.billing_email) == ("Acme", None)
    with act_as(owner, "authenticated", sub=ANN) as c:
        [full] = c.execute("select public.list_my_teams()").fetchone()[0]  # type: ignore[index]
    assert full["billing_email"] == "billing@acme.test"


def test_an_admin_cannot_learn_a_users_email_by_adding_their_id(owner: psycopg.Connection) -> None:  # noqa: F811
    # Anyone signed in is an admin of a team they create; adding a user id there must not
    # answer with that user's address. A member who joined by their own act is shown.
    with act_as(owner, "authenticated", sub=ANN) as c:
        team = c.execute(
            "select public.create_team_with_owner('Mine', 'pgshield-t-oracle')"
        ).fetchone()[0]["id"]  # type: ignore[index]
        added = c.execute(
            "select public.add_team_member(%s, %s, 'viewer')", (team, BOB)
        ).fetchone()[0]  # type: ignore[index]
        invitation = c.execute(
            "select public.create_team_invitation(%s, 'viewer')", (team,)
        ).fetchone()[0]  # type: ignore[index]
    assert added["user_id"] == str(BOB) and added["email"] is None
    with act_as(owner, "authenticated", sub=CID) as c:
        joined = c.execute(
            "select public.accept_team_invitation(%s)", (invitation["token"],)
        ).fetchone()[0]  # type: ignore[index]
    assert joined["email"] == "cid@example.com"

    def emails(role: str, sub: object = None) -> dict[str, str | None]:
        with act_as(owner, role, sub=sub) as c:
            members = c.execute("select public.list_team_members(%s)", (team,)).fetchone()[0]  # type: ignore[index]
        return {m["user_id"]: m["email"] for m in members}

    assert emails("authenticated", ANN) == {
        str(ANN): "ann@example.com",  # created the team
        str(BOB): None,  # added unasked
        str(CID): "cid@example.com",  # accepted an invitation
    }
    assert emails("authenticated", BOB)[str(BOB)] == "bob@example.com"  # oneself
    assert emails("service_role")[str(BOB)] == "bob@example.com"
    recorded = owner.execute(
        "select user_id::text, joined_via from pgshield.team_members where team_id = %s",
        (team,),
    ).fetchall()
    assert dict(recorded) == {str(ANN): "created", str(BOB): "added", str(CID): "invitation"}


def test_nobody_is_made_owner_unasked(owner: psycopg.Connection) -> None:  # noqa: F811
    # An owner cannot be deleted from auth while they are a team's last owner: a user who made
    # a stranger owner and left would block that account's deletion. Each way in is refused,
    # writes nothing but its denied audit row, and the stranger's consent opens it.
    with act_as(owner, "authenticated", sub=ANN) as c:
        team = c.execute(
            "select public.create_team_with_owner('Plant', 'pgshield-t-plant')"
        ).fetchone()[0]["id"]  # type: ignore[index]
        as_owner = c.execute(
            "select public.add_team_member(%s, %s, 'owner')", (team, BOB)
        ).fetchone()[0]  # type: ignore[index]
        c.execute("select public.add_team_member(%s, %s, 'admin')", (team, BOB))
        promoted = c.execute(
            "select public.set_team_member_role(%s, %s, 'owner')", (team, BOB)
        ).fetchone()[0]  # type: ignore[index]
        transferred = c.execute(
            "select public.transfer_team_ownership(%s, %s)", (team, BOB)
        ).fetchone()[0]  # type: ignore[index]
        invitation = c.execute(
            "select public.create_team_invitation(%s, 'owner')", (team,)
        ).fetchone()[0]  # type: ignore[index]
    for answer in (as_owner, promoted, transferred):
        assert answer["code"] == "42501" and "unasked" in answer["message"], answer

    def roles() -> dict[str, tuple[str, str]]:
        rows = owner.execute(
            "select user_id::text, role, joined_via from pgshield.team_members where team_id = %s",
            (team,),
        ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    assert roles() == {str(ANN): ("owner", "created"), str(BOB): ("admin", "added")}
    denied = owner.execute(
        "select action from pgshield.team_audit where team_id = %s and outcome = 'denied'"
        " order by id",
        (team,),
    ).fetchall()
    assert [d[0] for d in denied] == ["add_member", "set_member_role", "transfer_ownership"]
    with act_as(owner, "authenticated", sub=BOB) as c:
        joined = c.execute(
            "select public.accept_team_invitation(%s)", (invitation["token"],)
        ).fetchone()[0]  # type: ignore[index]
    assert joined["role"] == "owner" and joined["email"] == "bob@example.com"
    assert roles() == {str(ANN): ("owner", "created"), str(BOB): ("owner", "invitation")}
    # A trusted caller (the project's server) still adds owners directly.
    with act_as(owner, "service_role") as c:
        added = c.execute("select public.add_team_member(%s, %s, 'owner')", (team, CID)).fetchone()[
            0
        ]  # type: ignore[index]
    assert added["role"] == "owner"
    assert roles()[str(CID)] == ("owner", "service")


def test_the_upgrade_classifies_each_membership_by_what_made_it(bare_db: str) -> None:
    """Rows from before joined_via: in doubt 'added' (the email hidden, not promotable)."""
    users = {
        n: uuid.UUID(f"7ea40000-0000-4000-8000-0000000001{i:02x}") for i, n in enumerate("abcdef")
    }
    with psycopg.connect(bare_db, autocommit=True) as conn:
        migrate(conn, migrations=[m for m in discover() if m.version <= "20261203220000"])
        for n, u in users.items():
            conn.execute(
                "insert into auth.users (id, email, email_confirmed_at) values (%s, %s, now())",
                (u, f"{n}@example.com"),
            )

        def call(user: str | None, query: str, *args: object) -> dict:
            role, sub = ("service_role", None) if user is None else ("authenticated", users[user])
            with act_as(conn, role, sub=sub) as c:
                return c.execute(query, args).fetchone()[0]  # type: ignore[index]

        one = call("a", "select public.create_team_with_owner('One', 'pgshield-t-up-one')")["id"]
        # b: added by a, role later changed by the server (granted_by is null since)
        call("a", "select public.add_team_member(%s, %s, 'viewer')", one, users["b"])
        call(None, "select public.set_team_member_role(%s, %s, 'member')", one, users["b"])
        # c: accepted an invitation, left, re-added by a unasked
        token = call("a", "select public.create_team_invitation(%s, 'viewer')", one)["token"]
        call("c", "select public.accept_team_invitation(%s)", token)
        call("c", "select public.leave_team(%s)", one)
        call("a", "select public.add_team_member(%s, %s, 'admin')", one, users["c"])
        # d: added by the server; e: accepted an invitation; f: created team two, left it,
        # re-added by a unasked
        call(None, "select public.add_team_member(%s, %s, 'viewer')", one, users["d"])
        token = call("a", "select public.create_team_invitation(%s, 'member')", one)["token"]
        call("e", "select public.accept_team_invitation(%s)", token)
        two = call("f", "select public.create_team_with_owner('Two', 'pgshield-t-up-two')")["id"]
        token = call("f", "select public.create_team_invitation(%s, 'owner')", two)["token"]
        call("a", "select public.accept_team_invitation(%s)", token)
        call("f", "select public.leave_team(%s)", two)
        call("a", "select public.add_team_member(%s, %s, 'viewer')", two, users["f"])
        migrate(conn)
        rows = conn.execute(
            "select t.slug, m.user_id, m.joined_via from pgshield.team_members m"
            " join pgshield.teams t on t.id = m.team_id where t.slug like 'pgshield-t-up-%'"
        ).fetchall()
        names = {u: n for n, u in users.items()}
        assert {(slug[-3:], names[u]): via for slug, u, via in rows} == {
            ("one", "a"): "created",
            ("one", "b"): "added",
            ("one", "c"): "added",
            ("one", "d"): "service",
            ("one", "e"): "invitation",
            ("two", "a"): "invitation",
            ("two", "f"): "added",
        }
        refused = call("a", "select public.transfer_team_ownership(%s, %s)", one, users["c"])
        assert refused["code"] == "42501"

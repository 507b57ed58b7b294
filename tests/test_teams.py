"""The teams client (sync, async), the CLI, and refused calls audited via PostgREST and psycopg."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid

import psycopg
import pytest
from click.testing import CliRunner

from pgshield import (
    AsyncShield,
    AuditEntry,
    Conflict,
    InvalidInput,
    Invitation,
    Member,
    NotAllowed,
    NotFound,
    Shield,
    Team,
)
from pgshield.cli import main
from pgshield.teams.results import is_refusal, timestamp
from support import act_as

ANN = uuid.UUID("7ea40000-0000-4000-8000-0000000000a1")
BOB = uuid.UUID("7ea40000-0000-4000-8000-0000000000b2")
CID = uuid.UUID("7ea40000-0000-4000-8000-0000000000c3")
USERS = {ANN: "ann@example.com", BOB: "bob@example.com", CID: "cid@example.com"}


@pytest.fixture
def owner(conn: psycopg.Connection) -> psycopg.Connection:
    for user_id, email in USERS.items():
        conn.execute(
            "insert into auth.users (id, email, email_confirmed_at) values (%s, %s, now())",
            (user_id, email),
        )
    return conn


def as_user(dsn: str, user: uuid.UUID) -> psycopg.Connection:
    """An autocommit connection acting as ``user`` for its whole session (as psycopg apps do)."""
    c = psycopg.connect(dsn, autocommit=True)
    c.execute("set role authenticated")
    claims = json.dumps({"role": "authenticated", "sub": str(user), "email": USERS.get(user)})
    c.execute("select set_config('request.jwt.claims', %s, false)", (claims,))
    return c


def audit_rows(conn: psycopg.Connection, outcome: str) -> list[tuple[str, str | None]]:
    return [
        (r[0], r[1])
        for r in conn.execute(
            "select action, sqlstate from pgshield.team_audit where outcome = %s order by id",
            (outcome,),
        )
    ]


# ------------------------------------------------------------------- client --
def test_a_team_is_created_with_its_owner(owner: psycopg.Connection) -> None:
    shield = Shield(owner)
    team = shield.teams.create("Acme Corp", " Acme_Corp ", owner_id=ANN, billing_email="B@x.io")
    assert isinstance(team, Team) and team.slug == "acme-corp" and team.billing_email == "b@x.io"
    assert team.created_by == ANN and team.created_at.tzinfo is not None
    [member] = shield.teams.members(team.id)
    assert isinstance(member, Member)
    assert (member.user_id, member.role, member.email) == (ANN, "owner", USERS[ANN])
    assert member.permissions == ("read", "write", "delete", "admin")
    got = shield.teams.get(slug="ACME-CORP")
    assert (got.id, got.members, got.owners) == (team.id, 1, 1)
    assert [t.slug for t in shield.teams.mine(ANN)] == ["acme-corp"]
    with pytest.raises(Conflict, match="acme-corp") as caught:
        shield.teams.create("Again", "acme-corp", owner_id=BOB)
    assert caught.value.sqlstate == "23505"
    with pytest.raises(InvalidInput):
        shield.teams.create("Bad", "-bad-", owner_id=BOB)
    with pytest.raises(InvalidInput):
        shield.teams.create("Nobody", "nobody", owner_id=uuid.uuid4())
    assert owner.execute("select count(*) from pgshield.teams").fetchone() == (1,)


def test_roles_members_and_invitations_through_the_client(
    db: str, owner: psycopg.Connection
) -> None:
    team = Shield(owner).teams.create("Acme", "acme", owner_id=ANN)
    with as_user(db, ANN) as ann_conn, as_user(db, BOB) as bob_conn, as_user(db, CID) as cid_conn:
        ann, bob, cid = Shield(ann_conn), Shield(bob_conn), Shield(cid_conn)
        assert ann.teams.add_member(team.id, BOB, "admin").role == "admin"
        invitation = bob.teams.invite(team.id, "viewer", email="CID@example.com")
        assert (
            isinstance(invitation, Invitation)
            and invitation.token
            and invitation.status == "pending"
        )
        assert [i.token for i in bob.teams.invitations(team.id)] == [None]
        with pytest.raises(NotAllowed):
            bob.teams.invite(team.id, "owner")  # above bob's own role
        joined = cid.teams.accept(invitation.token)
        assert (joined.role, joined.permissions) == ("viewer", ("read",))
        with pytest.raises(Conflict):
            cid.teams.accept(invitation.token)  # single use
        assert cid.teams.has_permission(team.id, "read")
        assert not cid.teams.has_permission(team.id, "write")
        with pytest.raises(NotAllowed):
            cid.teams.update(team.id, name="Mine now")
        assert bob.teams.set_role(team.id, CID, "member").permissions == ("read", "write")
        assert cid.teams.update(team.id, name="Acme 2").name == "Acme 2"
        with pytest.raises(Conflict, match="must keep an owner"):
            ann.teams.leave(team.id)
        with pytest.raises(NotAllowed, match="unasked"):
            ann.teams.transfer_ownership(team.id, BOB)  # added, never asked
        bob.teams.accept(ann.teams.invite(team.id, "admin").token)  # now bob agreed
        owners = ann.teams.transfer_ownership(team.id, BOB)
        assert [m.user_id for m in owners] == [BOB]
        assert ann.teams.leave(team.id).removed
        with pytest.raises(NotFound):
            ann.teams.members(team.id)
        assert [t.role for t in cid.teams.mine()] == ["member"]
        with pytest.raises(NotAllowed):
            cid.teams.mine(BOB)
        assert bob.teams.remove_member(team.id, CID).removed
        assert bob.teams.delete(team.id).id == team.id


def test_audit_cleanup_and_status_through_the_client(owner: psycopg.Connection) -> None:
    shield = Shield(owner)
    team = shield.teams.create("Acme", "acme", owner_id=ANN)
    shield.teams.add_member(team.id, BOB)
    entries = shield.teams.audit(team.id)
    assert all(isinstance(e, AuditEntry) for e in entries)
    assert [(e.action, e.outcome, e.actor_role) for e in entries] == [
        ("add_member", "ok", "postgres"),
        ("create_team", "ok", "postgres"),
    ]
    shield.teams.invite(team.id, expires_in=dt.timedelta(minutes=5))
    status = shield.teams.status()
    assert (status.teams, status.memberships, status.teams_without_owner) == (1, 2, 0)
    assert status.pending_invitations == 1 and status.audit_retention == dt.timedelta(days=180)
    owner.execute("select pgshield.set_clock(now() + interval '1 hour')")
    assert shield.teams.cleanup() == 1
    assert shield.teams.set_role_permissions("viewer", ["read", "write"]) == ("read", "write")


def test_refusal_objects_and_timestamps_parse() -> None:
    assert is_refusal({"code": "42501", "message": "no", "details": None, "hint": None})
    assert not is_refusal({"code": "x", "id": 1})
    assert timestamp("2026-12-01T21:55:00.9549+00:00") == dt.datetime(
        2026, 12, 1, 21, 55, 0, 954900, tzinfo=dt.timezone.utc
    )


# ------------------------------------------------------- denied, audited --
def test_psycopg_refusal_raises_after_its_audit_row_committed(
    db: str, owner: psycopg.Connection
) -> None:
    team = Shield(owner).teams.create("Acme", "acme", owner_id=ANN)
    with as_user(db, BOB) as bob_conn:
        with pytest.raises(NotFound) as caught:
            Shield(bob_conn).teams.add_member(team.id, BOB, "owner")  # not a member of it
        assert caught.value.sqlstate == "PT404"
    # Another connection sees the denied attempt: it committed although the call failed.
    assert audit_rows(owner, "denied") == [("add_member", "PT404")]
    # Bob is not a member: the row is not the team's (its admins never see strangers' probes).
    assert owner.execute(
        "select actor_id, team_id from pgshield.team_audit where outcome = 'denied'"
    ).fetchone() == (BOB, None)
    assert owner.execute("select count(*) from pgshield.team_members").fetchone() == (1,)


def test_postgrest_style_refusal_commits_its_audit_row(owner: psycopg.Connection) -> None:
    team = Shield(owner).teams.create("Acme", "acme", owner_id=ANN)
    Shield(owner).teams.add_member(team.id, BOB, "member")
    # What PostgREST does for POST /rpc/add_team_member: one transaction, committed when the
    # function returns; response.status becomes the HTTP status, the object the error body.
    with act_as(owner, "authenticated", sub=BOB):
        row = owner.execute(
            "select public.add_team_member(%s, %s, 'admin'),"
            " current_setting('response.status', true)",
            (team.id, CID),
        ).fetchone()
    assert row is not None
    body, status = row
    assert status == "403" and body["code"] == "42501" and set(body) == {
        "code", "message", "details", "hint"
    }  # fmt: skip
    assert audit_rows(owner, "denied") == [("add_member", "42501")]
    # A raised error (bad input) rolls back like any other: nothing is written, nothing audited.
    with (
        pytest.raises(psycopg.errors.InvalidParameterValue),
        act_as(owner, "authenticated", sub=BOB),
    ):
        owner.execute("select public.add_team_member(%s, %s, 'boss')", (team.id, CID))
    assert audit_rows(owner, "denied") == [("add_member", "42501")]
    # The team's admins (the owner) read the denied attempts of their team.
    with act_as(owner, "authenticated", sub=ANN):
        rows = owner.execute("select public.get_team_audit(%s, 100, true)", (team.id,)).fetchone()
    assert rows is not None and [r["actor_id"] for r in rows[0]] == [str(BOB)]


def test_a_caller_transaction_rolled_back_takes_the_audit_row_along(
    db: str, owner: psycopg.Connection
) -> None:
    """With ``conn=`` in the caller's own transaction, the caller decides (documented)."""
    team = Shield(owner).teams.create("Acme", "acme", owner_id=ANN)
    with as_user(db, BOB) as bob_conn:
        shield = Shield(bob_conn)
        with pytest.raises(NotFound), bob_conn.transaction(force_rollback=True):
            shield.teams.delete(team.id, conn=bob_conn)
    assert audit_rows(owner, "denied") == []


# ------------------------------------------------------------------ asyncio --
def test_async_client(db: str, owner: psycopg.Connection) -> None:
    async def go() -> None:
        async with AsyncShield(db) as shield:
            team = await shield.teams.create("Async", "async-team", owner_id=ANN)
            await shield.teams.add_member(team.id, BOB, "viewer")
            members = await shield.teams.members(team.id)
            assert [(m.user_id, m.role) for m in members] == [(ANN, "owner"), (BOB, "viewer")]
            with pytest.raises(Conflict):
                await shield.teams.create("Async", "ASYNC-team", owner_id=BOB)
            with pytest.raises(Conflict):
                await shield.teams.remove_member(team.id, ANN)
            assert len(await shield.teams.audit(denied_only=True)) == 2

    asyncio.run(go())


# ---------------------------------------------------------------------- CLI --
def run(db: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["teams", *args, "--dsn", db])
    return result.exit_code, result.output


def test_cli(db: str, owner: psycopg.Connection) -> None:
    code, out = run(db, "create", "Acme Corp", "acme-corp", "--owner", str(ANN))
    assert code == 0 and out.startswith("created team acme-corp"), out
    code, out = run(db, "create", "Again", "ACME-CORP", "--owner", str(BOB))
    assert code == 1 and out.strip().startswith("Error: ") and len(out.strip().splitlines()) == 1
    code, out = run(db, "show", "acme-corp", "--json")
    shown = json.loads(out)
    assert code == 0 and shown["slug"] == "acme-corp" and shown["owners"] == 1
    code, out = run(db, "show", shown["id"])
    assert code == 0 and "acme-corp" in out and "owners" in out
    code, out = run(db, "members", "acme-corp")
    assert code == 0 and "ann@example.com" in out and "owner" in out
    code, out = run(db, "invite", "acme-corp", "--role", "admin", "--email", "bob@example.com")
    assert code == 0 and "token: " in out
    code, out = run(db, "invite", "acme-corp", "--json")
    assert code == 0 and len(json.loads(out)["token"]) == 64
    code, out = run(db, "audit", "acme-corp", "--json")
    assert code == 0 and [e["action"] for e in json.loads(out)][-1] == "create_team"
    code, out = run(db, "audit", "--denied")
    assert code == 0 and "create_team" in out and "denied" in out
    code, out = run(db, "show", "no-such-team")
    assert code == 1 and "Error: no team" in out
    code, out = run(db, "members", "acme-corp", "--json")
    assert code == 0 and json.loads(out)[0]["role"] == "owner"

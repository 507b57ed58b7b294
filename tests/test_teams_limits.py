"""Teams: what one signed-in user may create is bounded, exactly, on many real connections.

A hostile signed-up user could otherwise create teams and invitations without end. The limits
(``pgshield.set_teams_limits``) are counted under a lock (per user for teams, the team's row for
invitations), so concurrent calls cannot pass them; a refusal is PT409, answered and audited;
service_role is not limited. A stranger's call on a team is refused before it locks the team.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import psycopg
import pytest

from pgshield import Conflict, InvalidInput, NotAllowed, NotFound, Shield
from support import act_as, run_threads
from test_teams_concurrency import as_user, users

CALLS = 32


def test_concurrent_creations_by_one_user_stop_exactly_at_the_limit(
    db: str, conn: psycopg.Connection
) -> None:
    (alice,) = users(conn, 1)
    assert Shield(conn).teams.set_limits(teams_per_user=5) == {
        "max_teams_per_user": 5,
        "max_open_invitations_per_team": 1000,
    }
    made: list[uuid.UUID] = []
    refused: list[str] = []
    lock = threading.Lock()

    def work(i: int, barrier: threading.Barrier) -> None:
        with as_user(db, alice) as c:
            barrier.wait()
            try:
                team = Shield(c).teams.create(f"Team {i}", f"pgshield-t-limit-{i}")
            except Conflict as exc:
                with lock:
                    refused.append(exc.sqlstate or "")
            else:
                with lock:
                    made.append(team.id)

    run_threads(CALLS, work)
    assert len(made) == 5 and refused == ["PT409"] * (CALLS - 5)
    count = conn.execute(
        "select count(*) from pgshield.teams where created_by = %s", (alice,)
    ).fetchone()
    assert count == (5,)
    denied = conn.execute(
        "select count(*) from pgshield.team_audit where action = 'create_team'"
        " and outcome = 'denied' and sqlstate = 'PT409' and actor_id = %s",
        (alice,),
    ).fetchone()
    assert denied == (CALLS - 5,)
    # Deleting one makes room for exactly one more; service_role is not limited.
    with as_user(db, alice) as c:
        shield = Shield(c)
        shield.teams.delete(made[0])
        shield.teams.create("Again", "pgshield-t-limit-again")
        with pytest.raises(Conflict, match="the most one user may"):
            shield.teams.create("Once more", "pgshield-t-limit-more")
    with act_as(conn, "service_role"):
        Shield(conn).teams.create("For alice", "pgshield-t-limit-server", owner_id=alice, conn=conn)


def test_concurrent_invitations_stop_exactly_at_the_team_limit(
    db: str, conn: psycopg.Connection
) -> None:
    (owner,) = users(conn, 1)
    Shield(conn).teams.set_limits(open_invitations_per_team=3)
    with as_user(db, owner) as c:
        team = Shield(c).teams.create("Invites", "pgshield-t-invites")
    made: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def work(i: int, barrier: threading.Barrier) -> None:
        with as_user(db, owner) as c:
            barrier.wait()
            try:
                inv = Shield(c).teams.invite(team.id)
            except Conflict as exc:
                with lock:
                    refused.append(exc.sqlstate or "")
            else:
                with lock:
                    made.append(inv.id)

    run_threads(16, work)
    assert len(made) == 3 and refused == ["PT409"] * 13
    with as_user(db, owner) as c:
        shield = Shield(c)
        # A revoked (or accepted, or expired) invitation is no longer open.
        shield.teams.revoke_invitation(made[0])
        shield.teams.invite(team.id)
        with pytest.raises(Conflict, match="open invitations"):
            shield.teams.invite(team.id)
        assert len(shield.teams.invitations(team.id)) == 4


def test_a_strangers_call_does_not_wait_for_or_take_the_team_lock(
    db: str, conn: psycopg.Connection
) -> None:
    owner, stranger = users(conn, 2)
    with as_user(db, owner) as c:
        team = Shield(c).teams.create("Locked", "pgshield-t-locked")
    revision = conn.execute("select revision from pgshield.teams where id = %s", (team.id,))
    before = revision.fetchone()
    with psycopg.connect(db) as holder, as_user(db, stranger) as c:
        holder.execute("select 1 from pgshield.teams where id = %s for update", (team.id,))
        c.execute("set lock_timeout = '1s'")  # 55P03, not NotFound, if it waited for the lock
        with pytest.raises(NotFound):
            Shield(c).teams.set_role(team.id, stranger, "admin")
        with pytest.raises(NotFound):
            Shield(c).teams.invite(team.id)
        holder.rollback()
    after = conn.execute("select revision from pgshield.teams where id = %s", (team.id,))
    assert after.fetchone() == before


def test_who_may_set_the_limits_and_bad_values(conn: psycopg.Connection) -> None:
    shield = Shield(conn)
    for bad in ({"teams_per_user": 0}, {"open_invitations_per_team": 1_000_001}):
        with pytest.raises(InvalidInput):
            shield.teams.set_limits(**bad)  # type: ignore[arg-type]
    for role in ("anon", "authenticated"):
        with act_as(conn, role), pytest.raises((NotAllowed, psycopg.errors.InsufficientPrivilege)):
            Shield(conn).teams.set_limits(teams_per_user=1, conn=conn)
    assert shield.teams.set_limits() == {
        "max_teams_per_user": 100,
        "max_open_invitations_per_team": 1000,
    }


def test_an_expired_invitation_is_no_longer_open(db: str, conn: psycopg.Connection) -> None:
    (owner,) = users(conn, 1)
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:00+00')")
    Shield(conn).teams.set_limits(open_invitations_per_team=2)
    with as_user(db, owner) as c:
        shield = Shield(c)
        team = shield.teams.create("Expiry", "pgshield-t-expiry")
        for _ in range(2):
            shield.teams.invite(team.id, expires_in=dt.timedelta(minutes=1))
        with pytest.raises(Conflict):
            shield.teams.invite(team.id)
        conn.execute("select pgshield.advance_clock(interval '59 seconds')")
        with pytest.raises(Conflict):
            shield.teams.invite(team.id)
        conn.execute("select pgshield.advance_clock(interval '1 second')")
        shield.teams.invite(team.id)

"""Teams under REPEATABLE READ, and changes dated when the team's lock is got.

PostgREST honours a role's ``default_transaction_isolation``, and server code or Supabase Auth
may delete users at any level. Under REPEATABLE READ a transaction's snapshot is older than the
lock it waited for: the last-owner rule and the per-user teams limit must then fail with 40001,
never count from that snapshot. A change that waited for the team's lock is dated, and counted,
at the time it got it (real clock).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import psycopg
import pytest

from pgshield import Conflict, Shield
from support import run_threads, wait_for_lock_wait
from test_teams_concurrency import as_user, no_team_without_owner, owners, users


def _team_with_two_owners(
    db: str, conn: psycopg.Connection
) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    ann, bob = users(conn, 2)
    with as_user(db, ann) as a:
        shield = Shield(a)
        team = shield.teams.create("Two owners", "pgshield-t-rr-owners")
        invitation = shield.teams.invite(team.id, role="owner")
    with as_user(db, bob) as b:
        Shield(b).teams.accept(invitation.token)  # type: ignore[arg-type]
    assert owners(conn, team.id) == 2
    return team.id, ann, bob


def _repeatable_read(db: str) -> psycopg.Connection:
    c = psycopg.connect(db)
    c.execute("set transaction isolation level repeatable read")
    c.execute("select 1")  # the transaction's snapshot, taken now
    return c


@pytest.mark.parametrize("second", ["delete_auth_user", "leave_team"])
def test_at_repeatable_read_the_second_owner_to_go_fails_and_the_team_keeps_one(
    db: str, conn: psycopg.Connection, second: str
) -> None:
    team, ann, bob = _team_with_two_owners(db, conn)
    first = _repeatable_read(db)
    other = _repeatable_read(db)
    if second == "leave_team":
        other.execute("set local role authenticated")
        other.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (f'{{"role": "authenticated", "sub": "{bob}"}}',),
        )
    # ann's account goes first: the cascade's owner trigger locks the team.
    first.execute("delete from auth.users where id = %s", (ann,))
    outcome: dict[str, str] = {}

    def go() -> None:
        try:
            if second == "leave_team":
                other.execute("select public.leave_team(%s)", (team,))
            else:
                other.execute("delete from auth.users where id = %s", (bob,))
            other.commit()
            outcome["second"] = "committed"
        except psycopg.Error as exc:
            other.rollback()
            outcome["second"] = exc.sqlstate or ""

    pid = other.info.backend_pid
    worker = threading.Thread(target=go)
    worker.start()
    wait_for_lock_wait(conn, pid)
    first.commit()
    worker.join(10)
    first.close()
    other.close()
    assert outcome == {"second": "40001"}
    assert owners(conn, team) == 1
    assert conn.execute(
        "select user_id from pgshield.team_members where team_id = %s and role = 'owner'", (team,)
    ).fetchall() == [(bob,)]
    assert no_team_without_owner(conn)


def test_at_repeatable_read_concurrent_creations_never_pass_the_teams_limit(
    db: str, conn: psycopg.Connection
) -> None:
    (alice,) = users(conn, 1)
    Shield(conn).teams.set_limits(teams_per_user=2)
    calls = 16
    outcomes: list[str] = []
    lock = threading.Lock()

    def work(i: int, barrier: threading.Barrier) -> None:
        with psycopg.connect(db) as c:
            c.execute("set transaction isolation level repeatable read")
            c.execute("set local role authenticated")
            c.execute(
                "select set_config('request.jwt.claims', %s, true)",
                (f'{{"role": "authenticated", "sub": "{alice}"}}',),
            )
            barrier.wait()
            try:
                answer = c.execute(
                    "select public.create_team_with_owner(%s, %s)",
                    (f"Team {i}", f"pgshield-t-rr-limit-{i}"),
                ).fetchone()
                c.commit()
            except psycopg.Error as exc:
                c.rollback()
                result = exc.sqlstate or ""
            else:
                assert answer is not None
                result = answer[0].get("code") or "created"
        with lock:
            outcomes.append(result)

    run_threads(calls, work)
    made = conn.execute(
        "select count(*) from pgshield.teams where created_by = %s", (alice,)
    ).fetchone()
    assert made is not None and 1 <= made[0] <= 2
    assert outcomes.count("created") == made[0]
    assert set(outcomes) <= {"created", "PT409", "40001"}
    assert outcomes.count("40001") >= 1  # the snapshots were taken before the others committed
    assert conn.execute(
        "select creations from pgshield.team_creators where user_id = %s", (alice,)
    ).fetchone() == (made[0],), "a refused creation's write of the row is rolled back"
    # Read committed, one after another: exactly up to the limit.
    with as_user(db, alice) as c:
        shield = Shield(c)
        for i in range(2 - made[0]):
            shield.teams.create(f"Later {i}", f"pgshield-t-rr-later-{i}")
        with pytest.raises(Conflict, match="the most one user may"):
            shield.teams.create("One too many", "pgshield-t-rr-too-many")


def test_an_invitation_made_after_waiting_for_the_team_is_dated_when_the_lock_was_got(
    db: str, conn: psycopg.Connection
) -> None:
    (owner,) = users(conn, 1)
    with as_user(db, owner) as c:
        team = Shield(c).teams.create("Waits", "pgshield-t-dated")
    trials = 0
    for _ in range(3):
        blocker = psycopg.connect(db)
        blocker.execute("update pgshield.teams set revision = revision where id = %s", (team.id,))
        answer: dict[str, object] = {}

        def invite(into: dict[str, object]) -> None:
            with as_user(db, owner) as c:
                into["inv"] = Shield(c).teams.invite(team.id, role="member")

        worker = threading.Thread(target=invite, args=(answer,))
        worker.start()
        # The invitation's call is waiting for the team; hold the lock for a while on the real
        # clock, then note the time just before releasing it.
        deadline = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=10)
        while dt.datetime.now(dt.timezone.utc) < deadline:
            waiting = conn.execute(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                " and query like '%create_team_invitation%'"
            ).fetchone()
            if waiting and waiting[0] == 1:
                break
            threading.Event().wait(0.01)
        else:
            raise AssertionError("the invitation never waited for the team")
        threading.Event().wait(0.3)
        released = blocker.execute("select clock_timestamp()").fetchone()
        assert released is not None
        blocker.commit()
        blocker.close()
        worker.join(10)
        inv = answer["inv"]
        assert inv.created_at >= released[0], (inv.created_at, released[0])  # type: ignore[attr-defined]
        assert inv.expires_at - inv.created_at == dt.timedelta(days=7)  # type: ignore[attr-defined]
        trials += 1
    assert trials == 3


def test_a_creation_racing_its_users_account_deletion_never_deadlocks(
    db: str, conn: psycopg.Connection
) -> None:
    """The deletion holds the user's auth.users row and waits in its cascade (here for an
    admin's change to the user's membership); the user's own creation meanwhile must wait for
    the deletion, not take the team_creators row the cascade needs next (40P01)."""
    alice, olga = users(conn, 2)
    with as_user(db, alice) as a:
        shield = Shield(a)
        shield.teams.delete(shield.teams.create("Once", "pgshield-t-once").id)  # her row stays
    with as_user(db, olga) as o:
        team = Shield(o).teams.create("Olga's", "pgshield-t-olgas")
    conn.execute(
        "insert into pgshield.team_members (team_id, user_id, role) values (%s, %s, 'member')",
        (team.id, alice),
    )
    outcome: dict[str, str] = {}
    blocker = psycopg.connect(db)
    blocker.execute(
        "select 1 from pgshield.team_members where team_id = %s and user_id = %s for update",
        (team.id, alice),
    )
    deleter = psycopg.connect(db)
    creator = psycopg.connect(db)

    def delete_user() -> None:
        try:
            deleter.execute("delete from auth.users where id = %s", (alice,))
            deleter.commit()
            outcome["delete"] = "committed"
        except psycopg.Error as exc:
            deleter.rollback()
            outcome["delete"] = exc.sqlstate or ""

    def create() -> None:
        try:
            creator.execute("set local role authenticated")
            creator.execute(
                "select set_config('request.jwt.claims', %s, true)",
                (f'{{"role": "authenticated", "sub": "{alice}"}}',),
            )
            creator.execute("select public.create_team_with_owner('Two', 'pgshield-t-two')")
            creator.commit()
            outcome["create"] = "committed"
        except psycopg.Error as exc:
            creator.rollback()
            outcome["create"] = exc.sqlstate or ""

    deleting = threading.Thread(target=delete_user)
    deleting.start()
    wait_for_lock_wait(conn, deleter.info.backend_pid)
    creating = threading.Thread(target=create)
    creating.start()
    wait_for_lock_wait(conn, creator.info.backend_pid)
    blocker.commit()
    deleting.join(15)
    creating.join(15)
    for c in (blocker, deleter, creator):
        c.close()
    assert outcome == {"delete": "committed", "create": "23503"}
    assert conn.execute("select count(*) from auth.users where id = %s", (alice,)).fetchone() == (
        0,
    )

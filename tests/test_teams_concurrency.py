"""Teams on many real connections: one slug, the last owner, killed backends, RLS helpers."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid

import psycopg
import pytest

from pgshield import Conflict, NotAllowed, NotFound, Shield
from support import run_threads, wait_for_lock_wait

CREATORS = 64
ROUNDS = 10


def users(conn: psycopg.Connection, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    with conn.cursor() as cur:
        cur.executemany(
            "insert into auth.users (id, email) values (%s, %s)",
            [(i, f"{i}@example.com") for i in ids],
        )
    return ids


def as_user(dsn: str, user: uuid.UUID) -> psycopg.Connection:
    c = psycopg.connect(dsn, autocommit=True)
    c.execute("set role authenticated")
    claims = json.dumps({"role": "authenticated", "sub": str(user)})
    c.execute("select set_config('request.jwt.claims', %s, false)", (claims,))
    return c


def owners(conn: psycopg.Connection, team_id: uuid.UUID) -> int:
    row = conn.execute(
        "select count(*) from pgshield.team_members where team_id = %s and role = 'owner'",
        (team_id,),
    ).fetchone()
    return int(row[0]) if row else -1


def no_team_without_owner(conn: psycopg.Connection) -> bool:
    return conn.execute("select teams_without_owner from pgshield.teams_status").fetchone() == (0,)


def test_64_concurrent_creations_with_one_slug_make_one_team(
    db: str, conn: psycopg.Connection
) -> None:
    people = users(conn, CREATORS)
    made: list[uuid.UUID] = []
    conflicts: list[int] = []
    lock = threading.Lock()

    def work(i: int, barrier: threading.Barrier) -> None:
        with as_user(db, people[i]) as c:
            barrier.wait()
            try:
                team = Shield(c).teams.create(f"Team {i}", "One-Slug")
            except Conflict:
                with lock:
                    conflicts.append(i)
            else:
                with lock:
                    made.append(team.id)

    run_threads(CREATORS, work)
    assert len(made) == 1 and len(conflicts) == CREATORS - 1
    assert conn.execute("select count(*) from pgshield.teams").fetchone() == (1,)
    assert owners(conn, made[0]) == 1
    denied = conn.execute(
        "select count(*) from pgshield.team_audit where action = 'create_team'"
        " and outcome = 'denied' and sqlstate = '23505'"
    ).fetchone()
    assert denied == (CREATORS - 1,)


@pytest.mark.parametrize("move", ["demote", "remove", "leave"])
def test_two_owners_removing_each_other_at_once_leave_exactly_one(
    db: str, conn: psycopg.Connection, move: str
) -> None:
    a, b = users(conn, 2)
    shield = Shield(conn)
    outcomes = {"ok": 0, "conflict": 0}
    lock = threading.Lock()
    for r in range(ROUNDS):
        team = shield.teams.create(f"Pair {r}", f"pair-{move}-{r}", owner_id=a)
        shield.teams.add_member(team.id, b, "owner")

        def work(i: int, barrier: threading.Barrier, team_id: uuid.UUID = team.id) -> None:
            me, other = [(a, b), (b, a)][i]
            with as_user(db, me) as c:
                teams = Shield(c).teams
                barrier.wait()
                try:
                    if move == "demote":
                        teams.set_role(team_id, other, "admin")
                    elif move == "remove":
                        teams.remove_member(team_id, other)
                    else:
                        teams.leave(team_id)
                except (Conflict, NotAllowed, NotFound) as exc:  # the other one went first
                    with lock:
                        outcomes["conflict"] += 1
                    assert exc.sqlstate in {"PT409", "42501", "PT404"}
                else:
                    with lock:
                        outcomes["ok"] += 1

        run_threads(2, work)
        assert owners(conn, team.id) == 1, f"round {r}"
    assert outcomes == {"ok": ROUNDS, "conflict": ROUNDS}
    assert no_team_without_owner(conn)


def test_a_backend_killed_mid_creation_leaves_no_ownerless_team(
    db: str, conn: psycopg.Connection
) -> None:
    a, b = users(conn, 2)
    # 1. Killed inside its transaction, after the creation ran and while it holds its locks.
    victim = psycopg.connect(db)
    pid = victim.info.backend_pid
    victim.execute("select public.create_team_with_owner('Killed', 'killed', %s)", (a,))
    conn.execute("select pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        victim.execute("select 1")
    assert conn.execute("select count(*) from pgshield.teams").fetchone() == (0,)

    # 2. A creator waiting on the killed one's slug then succeeds, with its owner.
    holder = psycopg.connect(db)
    holder.execute("select public.create_team_with_owner('Held', 'held', %s)", (a,))
    result: list[object] = []
    waiter_pid: list[int] = []

    def waiter() -> None:
        with psycopg.connect(db, autocommit=True) as w:
            waiter_pid.append(w.info.backend_pid)
            result.append(Shield(w).teams.create("Waiter", "held", owner_id=b))

    t = threading.Thread(target=waiter)
    t.start()
    while not waiter_pid:
        time.sleep(0.01)
    wait_for_lock_wait(conn, waiter_pid[0])
    conn.execute("select pg_terminate_backend(%s)", (holder.info.backend_pid,))
    t.join(30)
    holder.close()
    [team] = result
    assert owners(conn, team.id) == 1  # type: ignore[attr-defined]

    # 3. A demotion killed while it waits for the team lock changes nothing.
    shield = Shield(conn)
    shield.teams.add_member(team.id, a, "owner")  # type: ignore[attr-defined]
    locker = psycopg.connect(db)
    locker.execute("update pgshield.teams set revision = revision where id = %s", (team.id,))  # type: ignore[attr-defined]
    blocked = as_user(db, b)
    done = threading.Event()

    def demote() -> None:
        with contextlib.suppress(Exception):  # killed: the connection is gone
            Shield(blocked).teams.set_role(team.id, b, "viewer")  # type: ignore[attr-defined]
        done.set()

    t = threading.Thread(target=demote)
    t.start()
    wait_for_lock_wait(conn, blocked.info.backend_pid)
    conn.execute("select pg_terminate_backend(%s)", (blocked.info.backend_pid,))
    assert done.wait(30)
    locker.rollback()
    locker.close()
    blocked.close()
    assert owners(conn, team.id) == 2  # type: ignore[attr-defined]
    assert no_team_without_owner(conn)


def test_an_invitation_deleted_while_its_acceptor_waits_is_not_found(
    db: str, conn: psycopg.Connection
) -> None:
    ann, bob = users(conn, 2)
    shield = Shield(conn)
    team = shield.teams.create("Gone", "gone", owner_id=ann)
    invitation = shield.teams.invite(team.id, "member")
    assert invitation.token
    # Hold the team lock; the acceptor finds the invitation, then waits for the team.
    locker = psycopg.connect(db)
    locker.execute("update pgshield.teams set revision = revision where id = %s", (team.id,))
    acceptor = as_user(db, bob)
    caught: list[Exception] = []

    def accept() -> None:
        try:
            Shield(acceptor).teams.accept(invitation.token or "")
        except Exception as exc:  # asserted below
            caught.append(exc)

    t = threading.Thread(target=accept)
    t.start()
    wait_for_lock_wait(conn, acceptor.info.backend_pid)
    locker.execute("delete from pgshield.team_invitations where id = %s", (invitation.id,))
    locker.commit()
    t.join(30)
    locker.close()
    acceptor.close()
    [exc] = caught
    assert isinstance(exc, NotFound) and exc.sqlstate == "PT404", exc  # not a raw 23502
    assert conn.execute(
        "select count(*) from pgshield.team_members where team_id = %s", (team.id,)
    ).fetchone() == (1,)
    assert conn.execute(
        "select action, sqlstate, actor_id from pgshield.team_audit where outcome = 'denied'"
    ).fetchall() == [("accept_invitation", "PT404", bob)]


APP = """
create table public.docs (id bigint primary key, team_id uuid not null, body text not null);
alter table public.docs enable row level security;
create policy docs_read on public.docs for select to authenticated
  using (team_id in (select pgshield.teams_with_permission('read')));
create policy docs_write on public.docs for insert to authenticated
  with check (pgshield.has_team_permission(team_id, 'write'));
grant select, insert on public.docs to authenticated;
"""


def test_rls_helpers_guard_an_app_table_for_several_users(
    db: str, conn: psycopg.Connection
) -> None:
    conn.execute(APP)
    ann, bob, cid = users(conn, 3)
    shield = Shield(conn)
    red = shield.teams.create("Red", "red", owner_id=ann)
    blue = shield.teams.create("Blue", "blue", owner_id=bob)
    shield.teams.add_member(blue.id, cid, "viewer")
    with conn.cursor() as cur:
        cur.executemany(
            "insert into public.docs values (%s, %s, %s)",
            [(i, (red.id if i % 2 else blue.id), f"doc {i}") for i in range(1, 101)],
        )
    seen: dict[uuid.UUID, int] = {}

    def reader(i: int, barrier: threading.Barrier) -> None:
        user = [ann, bob, cid][i % 3]
        with as_user(db, user) as c:
            barrier.wait()
            for _ in range(5):
                row = c.execute("select count(*) from public.docs").fetchone()
                seen[user] = int(row[0]) if row else -1

    run_threads(9, reader)
    assert seen == {ann: 50, bob: 50, cid: 50}
    with as_user(db, cid) as c, pytest.raises(psycopg.errors.InsufficientPrivilege):
        c.execute("insert into public.docs values (1000, %s, 'viewer write')", (blue.id,))
    with as_user(db, bob) as c:
        c.execute("insert into public.docs values (1000, %s, 'owner write')", (blue.id,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("insert into public.docs values (1001, %s, 'not my team')", (red.id,))
    shield.teams.remove_member(blue.id, cid)
    with as_user(db, cid) as c:
        assert c.execute("select count(*) from public.docs").fetchone() == (0,)

"""Demo section: the orphaned team of a two-call creation, beside create_team_with_owner."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import psycopg

from pgshield.client import connect
from pgshield.errors import ShieldError
from pgshield.shield import Shield
from pgshield.text import heading, table

TEAMS = "public.pgshield_demo_teams"
MEMBERS = "public.pgshield_demo_team_members"
OWNER = uuid.UUID("5a0e0a52-de30-4000-8000-00000000d3e0")
SLUG = "pgshield-demo-team"


def _two_calls(conn: psycopg.Connection) -> tuple[int, int, str]:
    """What many apps do: insert the team, then (in a second call) its owner membership."""
    conn.execute(f"create table if not exists {TEAMS} (id bigint primary key, slug text unique)")
    conn.execute(
        f"create table if not exists {MEMBERS} (team_id bigint references {TEAMS},"
        " user_id uuid not null references auth.users (id), role text not null)"
    )
    conn.execute(f"insert into {TEAMS} (id, slug) values (1, %s)", (SLUG,))  # call 1: committed
    error = ""
    try:  # call 2 fails: here a stale user id; elsewhere a timeout, a crash, a deploy ...
        conn.execute(
            f"insert into {MEMBERS} (team_id, user_id, role) values (1, %s, 'owner')",
            (uuid.uuid4(),),
        )
    except psycopg.Error as exc:
        error = (exc.diag.message_primary or str(exc)).split("\n")[0]
    row = conn.execute(
        f"select count(*), count(*) filter (where not exists"
        f" (select 1 from {MEMBERS} m where m.team_id = t.id and m.role = 'owner'))"
        f" from {TEAMS} t"
    ).fetchone()
    assert row is not None
    return row[0], row[1], error


def run(dsn: str, echo: Callable[[str], None]) -> None:
    echo(heading("teams: a team and its owner, in one transaction"))
    with connect(dsn) as conn:
        conn.execute(
            "insert into auth.users (id, email) values (%s, 'pgshield_demo@example.com')"
            " on conflict (id) do nothing",
            (OWNER,),
        )
        shield = Shield(conn)
        try:
            teams, orphans, error = _two_calls(conn)
            echo("Two calls: insert the team, then its owner membership; the second fails:")
            echo(f"  {error}")
            refused = ""
            try:
                shield.teams.create("Demo", SLUG, owner_id=uuid.uuid4())
            except ShieldError as exc:
                refused = str(exc)
            made = shield.teams.create("Demo", SLUG, owner_id=OWNER)
            owners = [m for m in shield.teams.members(made.id) if m.role == "owner"]
            rows = [
                {"approach": "two calls from the app", "teams": teams, "without owner": orphans},
                {
                    "approach": "create_team_with_owner, bad owner",
                    "teams": 0,
                    "without owner": 0,
                },
                {
                    "approach": "create_team_with_owner",
                    "teams": 1,
                    "without owner": 0 if owners else 1,
                },
            ]
            echo(table(rows, ["approach", "teams", "without owner"]))
            echo(f"The bad owner was refused and nothing was written: {refused}")
            echo(
                "One call, one transaction: select create_team_with_owner('Demo',"
                f" '{SLUG}'); as a user it makes auth.uid() the owner."
            )
            shield.teams.delete(made.id)
        finally:
            conn.execute(f"drop table if exists {MEMBERS}")
            conn.execute(f"drop table if exists {TEAMS}")
            conn.execute("delete from auth.users where id = %s", (OWNER,))
    echo("")

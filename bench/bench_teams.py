"""Teams: a policy built on the pack's RLS helpers on a 100,000-row app table.

1,000 teams of 10 members (1,000 users, each in 10 teams), 100 rows per team. One user selects
every row they may read (1,000 of 100,000) through four versions of the same table:

- no RLS: the same query with the membership filter written into it, on a table without RLS;
- hand-written: ``team_id in (select team_id from members where user_id = (select auth.uid()))``
  on the app's own membership table (the optimal policy);
- ``teams_with_permission``: ``team_id in (select pgshield.teams_with_permission('read'))``,
  the policy docs/teams.md recommends;
- ``has_team_permission``: ``pgshield.has_team_permission(team_id, 'read')``, evaluated per row.

Target (issue 11): the recommended policy within 1.5x of the hand-written one. Median of timed
runs on one connection acting as ``authenticated``. ``python bench/bench_teams.py`` prints the
table (``make bench`` runs it through bench/run.py).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from harness import bench_cluster, machine

TARGET = 1.5
SETUP = """
insert into auth.users (id, email)
select ('00000000-0000-4000-8000-' || lpad(u::text, 12, '0'))::uuid, 'u' || u || '@example.com'
  from generate_series(0, 999) u;
insert into pgshield.teams (id, name, slug)
select ('10000000-0000-4000-8000-' || lpad(t::text, 12, '0'))::uuid, 'Team ' || t, 'bench-' || t
  from generate_series(0, 999) t;
-- user u is in teams (u + 100 k) mod 1000, k = 0..9; the first member of each team owns it
insert into pgshield.team_members (team_id, user_id, role)
select ('10000000-0000-4000-8000-' || lpad(((u + 100 * k) % 1000)::text, 12, '0'))::uuid,
       ('00000000-0000-4000-8000-' || lpad(u::text, 12, '0'))::uuid,
       case when k = 0 then 'owner' else 'member' end
  from generate_series(0, 999) u, generate_series(0, 9) k;
create table public.bench_members as
  select team_id, user_id from pgshield.team_members;
create index on public.bench_members (user_id, team_id);
grant select on public.bench_members to authenticated;
create table public.bench_plain as
  select i as id, ('10000000-0000-4000-8000-' || lpad((i % 1000)::text, 12, '0'))::uuid as team_id,
         md5(i::text) as body
    from generate_series(1, 100000) i;
create index on public.bench_plain (team_id);
grant select on public.bench_plain to authenticated;
"""
VARIANTS = {
    "hand-written": "team_id in (select m.team_id from public.bench_members m"
    " where m.user_id = (select auth.uid()))",
    "teams_with_permission": "team_id in (select pgshield.teams_with_permission('read'))",
    "has_team_permission": "pgshield.has_team_permission(team_id, 'read')",
}
USER = "00000000-0000-4000-8000-000000000042"


def table_name(variant: str) -> str:
    return "public.bench_" + variant.replace("-", "_")


def setup(conn: psycopg.Connection) -> None:
    conn.execute(SETUP)
    for variant, using in VARIANTS.items():
        t = table_name(variant)
        conn.execute(f"create table {t} as select * from public.bench_plain")
        conn.execute(f"create index on {t} (team_id)")
        conn.execute(f"alter table {t} enable row level security")
        conn.execute(f"create policy read on {t} for select to authenticated using ({using})")
        conn.execute(f"grant select on {t} to authenticated")
    conn.execute("analyze")


def timed(conn: psycopg.Connection, sql: str, runs: int) -> tuple[float, int]:
    rows = 0
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        row = conn.execute(sql).fetchone()
        times.append(time.perf_counter() - start)
        rows = int(row[0]) if row else -1
    return statistics.median(times) * 1000, rows


def measure(dsn: str, runs: int = 50) -> list[tuple[str, float, int]]:
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        setup(conn)
        conn.execute("set role authenticated")
        claims = json.dumps({"role": "authenticated", "sub": USER})
        conn.execute("select set_config('request.jwt.claims', %s, false)", (claims,))
        out = []
        query = "select count(*), max(body) from {t}"
        plain = (
            "select count(*), max(body) from public.bench_plain where team_id in"
            f" (select m.team_id from public.bench_members m where m.user_id = '{USER}')"
        )
        ms, rows = timed(conn, plain, runs)
        out.append(("no RLS (filter in the query)", ms, rows))
        for variant in VARIANTS:
            n = runs if variant != "has_team_permission" else max(3, runs // 10)
            ms, rows = timed(conn, query.format(t=table_name(variant)), n)
            out.append((f"policy: {variant}", ms, rows))
    return out


def report(results: list[tuple[str, float, int]]) -> str:
    hand = next(ms for name, ms, _ in results if name == "policy: hand-written")
    lines = [
        f"Teams RLS helpers ({machine()}): one user's rows of 100,000 (1,000 teams x 10 members)",
        "",
        "| table / policy | median ms | rows | vs hand-written |",
        "|---|---|---|---|",
    ]
    for name, ms, rows in results:
        lines.append(f"| {name} | {ms:.2f} | {rows} | {ms / hand:.2f}x |")
    srf = next(ms for name, ms, _ in results if name == "policy: teams_with_permission")
    verdict = "meets" if srf / hand <= TARGET else "misses"
    lines += ["", f"teams_with_permission {verdict} the target ({srf / hand:.2f}x <= {TARGET}x)"]
    return "\n".join(lines)


def main() -> str:
    with bench_cluster() as (_cluster, dsn):
        text = report(measure(dsn))
    print(text)
    return text


if __name__ == "__main__":
    main()

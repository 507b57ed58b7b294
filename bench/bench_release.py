"""The cost of the unreleased changes: the hot paths at the last release against the working tree.

Two databases in one durable cluster: one built from the last release's migration files
(``pgshield/releases.json``), one from every migration. The same pgbench workloads run on both,
interleaved round by round, and the table gives each side's decisions per second and the ratio
head / release. Written to the ``release`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg

from harness import Result, bench_cluster, machine, pgbench, write_section
from pgshield.client import connect
from pgshield.migrations import discover, migrate
from pgshield.provision import prepare_database
from pgshield.resources import releases

HERE = Path(__file__).resolve().parent

CLIENTS = 8
SECONDS = 2
ROUNDS = 3
KEYSPACE = 20_000
BIG = 2_000_000_000  # every call fits: the allowed path is what is measured

WORKLOADS: list[tuple[str, str, str]] = []  # (name, keys, pgbench script)
for _alg in ("fixed_window", "sliding_window", "token_bucket"):
    _p = _alg[0]
    WORKLOADS.append(
        (
            f"increment_rate_limit {_alg}",
            "distinct",
            f"\\set k random(1, {KEYSPACE})\n"
            f"select * from public.increment_rate_limit('{_p}' || :k, {BIG}, 60, 1, '{_alg}');\n",
        )
    )
    WORKLOADS.append(
        (
            f"increment_rate_limit {_alg}",
            "hot",
            f"select * from public.increment_rate_limit('hot-{_p}', {BIG}, 60, 1, '{_alg}');\n",
        )
    )
for _alg in ("fixed_window", "sliding_window", "token_bucket"):
    _pol = f"bench_{_alg}"
    WORKLOADS.append(
        (
            f"check_rate_limit {_alg}, 3 windows",
            "distinct",
            f"\\set k random(1, {KEYSPACE})\n"
            f"select * from public.check_rate_limit('{_pol}', 1, null, 's' || :k);\n",
        )
    )
    WORKLOADS.append(
        (
            f"check_rate_limit {_alg}, 3 windows",
            "hot",
            f"select * from public.check_rate_limit('{_pol}', 1, null, 'hot');\n",
        )
    )


def build(admin_dsn: str, name: str, files: set[str] | None) -> str:
    with connect(admin_dsn) as conn:
        conn.execute(f'create database "{name}"')
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=name)
    prepare_database(dsn, apply_migrations=False)
    with connect(dsn) as conn:
        chosen = [m for m in discover() if files is None or m.filename in files]
        migrate(conn, migrations=chosen)
        for alg in ("fixed_window", "sliding_window", "token_bucket"):
            conn.execute(
                "select public.define_rate_limit_policy(%s, %s::jsonb, p_algorithm => %s,"
                " p_default_tier => 't')",
                (f"bench_{alg}", json.dumps({"t": {"60": BIG, "3600": BIG, "86400": BIG}}), alg),
            )
            conn.execute(
                "select count(*) from generate_series(1, %s) g"
                " cross join lateral public.increment_rate_limit(%s || g, %s, 60, 1, %s)",
                (KEYSPACE, alg[0], BIG, alg),
            )
            conn.execute(
                "select count(*) from generate_series(1, %s) g"
                " cross join lateral public.check_rate_limit(%s, 1, null, 's' || g)",
                (KEYSPACE, f"bench_{alg}"),
            )
        conn.execute("vacuum analyze pgshield.rate_limit_state")
        conn.execute("checkpoint")
    return dsn


OTHER_ROWS = 100_000


def usage_read(dsn: str) -> Result:
    """One subject's usage next to OTHER_ROWS rows of other subjects (0.1.0 scanned them all)."""
    with connect(dsn) as conn:
        conn.execute(
            "insert into pgshield.rate_limit_state"
            " (key, policy, window_seconds, algorithm, limit_value, window_start, count,"
            "  expires_at)"
            " select 'other-' || g, 'bench_fixed_window', 60, 'fixed_window', 100, now(), 1,"
            "        now() + interval '1 day'"
            " from generate_series(1, %s) g on conflict do nothing",
            (OTHER_ROWS,),
        )
        conn.execute("vacuum analyze pgshield.rate_limit_state")
    script = "select public.get_rate_limit_usage('s1');\n"
    return pgbench(dsn, "usage", script, clients=1, seconds=3)


def main() -> None:
    started = time.monotonic()
    last = releases()[-1]
    with bench_cluster(durable=True) as (_cluster, admin):
        sides = {
            last.version: build(admin, "at_release", set(last.migrations)),
            "head": build(admin, "at_head", None),
        }
        best: dict[tuple[str, str, str], Result] = {}
        for rnd in range(ROUNDS):
            for name, keys, script in WORKLOADS:
                order = list(sides) if rnd % 2 == 0 else list(reversed(sides))
                for side in order:
                    r = pgbench(sides[side], name, script, clients=CLIENTS, seconds=SECONDS)
                    k = (name, keys, side)
                    if k not in best or r.ops_per_s > best[k].ops_per_s:
                        best[k] = r
            print(f"  release: round {rnd + 1}/{ROUNDS} done", flush=True)
        usage = {side: usage_read(dsn) for side, dsn in sides.items()}
    lines = [
        f"Head (the working tree's migrations) against release {last.version}, {CLIENTS} clients,"
        f" durable cluster, unlogged state (the default); best of {ROUNDS} interleaved"
        f" {SECONDS} s runs per cell. {machine()}",
        "",
        f"| workload | keys | {last.version} /s | head /s | head / {last.version} |"
        f" p99 {last.version} | p99 head |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, keys, _ in WORKLOADS:
        a, b = best[(name, keys, last.version)], best[(name, keys, "head")]
        lines.append(
            f"| {name} | {keys} | {a.ops_per_s:,.0f} | {b.ops_per_s:,.0f} |"
            f" {b.ops_per_s / a.ops_per_s:.2f} | {a.p99_ms:.2f} ms | {b.p99_ms:.2f} ms |"
        )
    a, b = usage[last.version], usage["head"]
    lines += [
        "",
        f"Reading one subject's usage (`get_rate_limit_usage`, 1 client) with {OTHER_ROWS:,}"
        " rows of other subjects in the table:",
        "",
        f"| | {last.version} | head | head / {last.version} |",
        "|---|---|---|---|",
        f"| calls/s | {a.ops_per_s:,.1f} | {b.ops_per_s:,.1f}"
        f" | {b.ops_per_s / max(a.ops_per_s, 0.001):,.0f}x |",
        f"| p50 per call | {a.p50_ms:.2f} ms | {b.p50_ms:.3f} ms | |",
    ]
    lines += ["", f"_Release comparison: {time.monotonic() - started:.0f} s._"]
    text = "\n".join(lines)
    print(text)
    write_section("release", text, "Head against the last release")


if __name__ == "__main__":
    main()

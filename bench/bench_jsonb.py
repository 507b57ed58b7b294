"""JSONB merges: a hot row under 1, 8 and 32 clients, lost updates, merge cost, large patches.

Workloads on one row (pgbench, extended protocol without prepared statements, which is how
pgshield's client and Supavisor transaction mode talk to Postgres):

- ``update ... doc || $1``: the bare single-statement update (shallow, keeps nulls), the baseline;
- ``merge_jsonb``: the RPC (its table's static update in the generated fast path, RFC 7396);
- ``read-merge-write``: the application-side merge (select, then update with the merged copy).

Lost updates are counted exactly in separate fixed-count runs (``pgbench -t``): every transaction
increments its client's own counter key, so the counters must add up to the transactions run.

``python bench/bench_jsonb.py large-patches`` measures only the large-patch table (a few
seconds) and prints it, without writing docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).parent))

from harness import Result, bench_cluster, format_table, machine, pgbench, write_section
from pgshield.embedded import find_bindir

CLIENTS = (1, 8, 32)
SECONDS = 3
ROUNDS = 2
LOST_TX_PER_CLIENT = 150
BARE_NAME = "update doc = doc \\|\\| $1 (bare)"
TARGET_RATIO = 0.8  # merge_jsonb vs the bare update at 8 clients (issue 4)

SETUP = """
drop table if exists public.bench_hot;
create table public.bench_hot (id int primary key, doc jsonb not null default '{}');
insert into public.bench_hot (id) values (1);
select pgshield.register_jsonb_target('public.bench_hot', 'doc');
"""
RESET = ("update public.bench_hot set doc = '{}' where id = 1", "vacuum public.bench_hot")

BARE = r"""
\set n random(1, 1000000)
update public.bench_hot
   set doc = doc || jsonb_build_object('c' || :client_id::text, :n::int)
 where id = 1;
"""
MERGE = r"""
\set n random(1, 1000000)
select merge_jsonb('bench_hot', '1', jsonb_build_object('c' || :client_id::text, :n::int));
"""
NAIVE = r"""
\set n random(1, 1000000)
select doc from public.bench_hot where id = 1 \gset
update public.bench_hot
   set doc = :doc::jsonb || jsonb_build_object('c' || :client_id::text, :n::int)
 where id = 1;
"""
# Counter forms for the lost-update count: each client increments its own key.
NAIVE_COUNT = r"""
select doc from public.bench_hot where id = 1 \gset
update public.bench_hot
   set doc = :doc::jsonb || jsonb_build_object(
         'c' || :client_id::text,
         coalesce((:doc::jsonb ->> ('c' || :client_id::text))::int, 0) + 1)
 where id = 1;
"""
MERGE_COUNT = r"""
select merge_jsonb('bench_hot', '1', jsonb_build_object(
         'c' || :client_id::text,
         coalesce((select (doc ->> ('c' || :client_id::text))::int
                     from public.bench_hot where id = 1), 0) + 1));
"""

WORKLOADS = [
    (BARE_NAME, BARE),
    ("merge_jsonb", MERGE),
    ("read-merge-write (app side)", NAIVE),
]

COST_SETUP = """
drop table if exists public.bench_docs;
create table public.bench_docs (name text primary key, doc jsonb not null);
insert into public.bench_docs
select 'small', jsonb_object_agg('key' || g, jsonb_build_object('v', g, 'name', repeat('x', 30)))
  from generate_series(1, 18) g;
insert into public.bench_docs
select 'large', jsonb_object_agg('key' || g, jsonb_build_object('v', g, 'name', repeat('x', 30)))
  from generate_series(1, 1700) g;
drop table if exists public.bench_patches;
create table public.bench_patches (name text primary key, patch jsonb not null);
insert into public.bench_patches values
  ('flat', '{"key5": "replaced", "new": 1}'),
  ('nested', '{"key5": {"v": null, "w": 2}, "key7": null, "new": {"a": 1}}');
"""


def pgbench_count(dsn: str, script: str, clients: int, transactions: int) -> None:
    """Run exactly ``transactions`` per client (pgbench -t)."""
    with tempfile.TemporaryDirectory(prefix="pgshield-pgbench-") as tmp:
        path = Path(tmp) / "script.sql"
        path.write_text(script)
        args = [
            str(find_bindir() / "pgbench"), "-n", "-f", str(path), "-c", str(clients),
            "-j", str(min(clients, 2)), "-t", str(transactions), "-M", "extended", dsn,
        ]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed: {proc.stderr.strip()[-1500:]}")


def reset(conn: psycopg.Connection) -> None:
    for sql in RESET:
        conn.execute(sql)


def counted(conn: psycopg.Connection) -> int:
    row = conn.execute("select doc from public.bench_hot where id = 1").fetchone()
    return sum(int(v) for v in row[0].values()) if row else 0


def lost_updates(dsn: str, conn: psycopg.Connection, script: str, clients: int) -> tuple[int, int]:
    reset(conn)
    pgbench_count(dsn, script, clients, LOST_TX_PER_CLIENT)
    run = clients * LOST_TX_PER_CLIENT
    return run - counted(conn), run


def hot_row(durable: bool) -> tuple[str, dict[tuple[str, int], str]]:
    results: list[Result] = []
    notes: dict[tuple[str, int], str] = {}
    with (
        bench_cluster(durable=durable) as (_cluster, dsn),
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        conn.execute(SETUP)
        for clients in CLIENTS:
            naive_lost, naive_run = lost_updates(dsn, conn, NAIVE_COUNT, clients)
            merge_lost, merge_run = lost_updates(dsn, conn, MERGE_COUNT, clients)
            best: dict[str, Result] = {}
            for _ in range(ROUNDS):  # interleaved, best of: other load on the box hurts less
                for name, script in WORKLOADS:
                    reset(conn)
                    run = pgbench(
                        dsn, name, script, clients=clients, seconds=SECONDS, protocol="extended"
                    )
                    if name not in best or run.ops_per_s > best[name].ops_per_s:
                        best[name] = run
            for name, _script in WORKLOADS:
                r = best[name]
                if name.startswith("read-merge-write"):
                    note = f"lost {naive_lost} of {naive_run} updates"
                elif name == "merge_jsonb":
                    note = f"lost {merge_lost} of {merge_run} updates"
                else:
                    note = "shallow `\\|\\|`, not RFC 7396"
                results.append(Result(r.name, r.clients, r.ops_per_s, r.p50_ms, r.p99_ms, note))
                notes[(name, clients)] = f"{r.ops_per_s:.0f}"
    table = format_table(results, baselines={"vs bare update": BARE_NAME})
    return table, notes


def merge_patch_cost() -> str:
    """Microseconds per call, server side, on stored (TOASTed) 1 KB and 100 KB documents."""
    lines = [
        "| document | patch | `jsonb_merge_patch` µs | `doc \\|\\| patch` µs | ratio |",
        "|---|---|---|---|---|",
    ]
    with bench_cluster(durable=False) as (_cluster, dsn), psycopg.connect(dsn) as conn:
        conn.execute(COST_SETUP)
        conn.commit()
        sizes = dict(
            conn.execute("select name, length(doc::text) from public.bench_docs").fetchall()
        )
        for doc, loops in (("small", 20000), ("large", 400)):
            for patch in ("flat", "nested"):
                timings = {}
                for label, expr in (
                    ("merge", "pgshield.jsonb_merge_patch(d.doc, p.patch)"),
                    ("concat", "d.doc || p.patch"),
                ):
                    sql = (
                        f"select count({expr}) from public.bench_docs d, public.bench_patches p,"
                        " generate_series(1, %s) where d.name = %s and p.name = %s"
                    )
                    conn.execute(sql, (10, doc, patch))  # warm up
                    best = min(_timed(conn, sql, (loops, doc, patch)) for _ in range(3))
                    timings[label] = best / loops * 1e6
                lines.append(
                    f"| {sizes[doc] / 1024:.1f} KB | {patch} | {timings['merge']:.1f} |"
                    f" {timings['concat']:.1f} | {timings['merge'] / timings['concat']:.2f}x |"
                )
    return "\n".join(lines)


LARGE_SIZES = (6_500, 65_000)
LARGE_KINDS = {  # label: the value of every member of the patch
    "nulls": None,
    "values": 7,
    "empty objects": {},
}
LARGE_CALLS = 3  # timed calls per cell, after one untimed; the best is reported
LARGE_SETUP = """
drop table if exists public.bench_big;
create table public.bench_big (id int primary key, doc jsonb not null default '{}');
insert into public.bench_big (id) values (1);
select pgshield.register_jsonb_target('public.bench_big', 'doc');
drop table if exists public.bench_big_docs;
create table public.bench_big_docs (members int primary key, doc jsonb not null);
"""


def _large_key(i: int) -> str:
    return f"k{i:05d}"


def large_patch_cost() -> str:
    """Milliseconds per call for patches of thousands of members into a stored document.

    The document holds the patched keys with numbers (stored, so TOAST-compressed), the patch
    names every one of them: nulls remove all, values replace all, empty objects merge into
    each. Each call sends the patch from psycopg as a parameter, as a client does; merge_jsonb
    runs in its own transaction on a row reset beforehand (untimed).
    """
    merge_sql = "select merge_jsonb('bench_big', '1', %s::jsonb) is not null"
    patch_sql = (
        "select pgshield.jsonb_merge_patch(d.doc, %s::jsonb) is not null"
        " from public.bench_big_docs d where d.members = %s"
    )
    reset_sql = (
        "update public.bench_big set doc ="
        " (select d.doc from public.bench_big_docs d where d.members = %s) where id = 1"
    )
    ms: dict[tuple[str, int], tuple[float, float]] = {}
    with bench_cluster(durable=False) as (_cluster, dsn), psycopg.connect(dsn) as conn:
        conn.autocommit = True
        conn.execute(LARGE_SETUP)
        for size in LARGE_SIZES:
            doc = json.dumps({_large_key(i): i for i in range(size)})
            conn.execute("insert into public.bench_big_docs values (%s, %s::jsonb)", (size, doc))
        for size in LARGE_SIZES:
            for kind, value in LARGE_KINDS.items():
                patch = json.dumps({_large_key(i): value for i in range(size)})
                merge, direct = float("inf"), float("inf")
                for call in range(LARGE_CALLS + 1):
                    conn.execute(reset_sql, (size,))
                    m = _timed(conn, merge_sql, (patch,))
                    d = _timed(conn, patch_sql, (patch, size))
                    if call:  # the first call of each cell warms up
                        merge, direct = min(merge, m), min(direct, d)
                ms[(kind, size)] = (direct * 1e3, merge * 1e3)
    lines = [
        "| patch: every member | members | `jsonb_merge_patch` ms | `merge_jsonb` ms"
        " | vs values (`merge_jsonb`) | vs 10x fewer members (`merge_jsonb`) |",
        "|---|---|---|---|---|---|",
    ]
    small, large = LARGE_SIZES
    for size in LARGE_SIZES:
        for kind in LARGE_KINDS:
            direct, merge = ms[(kind, size)]
            vs_values = "-" if kind == "values" else f"{merge / ms[('values', size)][1]:.1f}x"
            vs_fewer = f"{merge / ms[(kind, small)][1]:.1f}x" if size == large else "-"
            lines.append(
                f"| {kind} | {size:,} | {direct:.0f} | {merge:.0f} | {vs_values} | {vs_fewer} |"
            )
    return "\n".join(lines)


CPU_LOOPS = [
    (
        "update doc = doc \\|\\| $1 (bare, planned per call)",
        "execute 'update public.bench_hot set doc = doc || $2 where id = $1'"
        " using 1, jsonb_build_object('c' || (i % 32), i)",
    ),
    (
        "merge_jsonb",
        "perform merge_jsonb('bench_hot', '1', jsonb_build_object('c' || (i % 32), i))",
    ),
    (
        "merge_jsonb, its `select` planned per call (as a client calls it)",
        "execute 'select merge_jsonb($1, $2, $3)'"
        " using 'bench_hot', '1', jsonb_build_object('c' || (i % 32), i)",
    ),
    (
        "merge_jsonb at a 1-key path",
        "perform merge_jsonb('bench_hot', '1', jsonb_build_object('a', i), array['q' || (i % 32)])",
    ),
    (
        "merge_jsonb at a 2-key path",
        "perform merge_jsonb('bench_hot', '1', jsonb_build_object('a', i),"
        " array['answers', 'q' || (i % 32)])",
    ),
    (
        "merge_jsonb, dynamic path (table spelled 'PUBLIC.BENCH_HOT')",
        "perform merge_jsonb('PUBLIC.BENCH_HOT', '1', jsonb_build_object('c' || (i % 32), i))",
    ),
    (
        "merge_jsonb_if (hash read first)",
        "perform merge_jsonb_if('bench_hot', '1', jsonb_build_object('c' || (i % 32), i),"
        " (select pgshield.jsonb_hash(doc) from public.bench_hot where id = 1))",
    ),
]


def _backend_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu() -> str:
    """Server CPU per call, from the backend's own CPU counters (other load hardly matters).

    Each call is its own transaction (a loop that commits), like one RPC per request.
    """
    loops = 3000
    lines = ["| call | server CPU µs per call | vs bare update |", "|---|---|---|"]
    with bench_cluster(durable=False) as (_cluster, dsn), psycopg.connect(dsn) as conn:
        conn.autocommit = True
        conn.execute(SETUP)
        pid = conn.info.backend_pid
        if not Path(f"/proc/{pid}/stat").exists():
            return "(the server's process is not visible here: not measured)"
        costs: dict[str, float] = {}
        for name, body in CPU_LOOPS:
            sql = f"do $$ begin for i in 1..{{n}} loop {body}; commit; end loop; end $$"
            conn.execute(sql.format(n=200))  # warm up
            best = float("inf")
            for _ in range(3):
                reset(conn)
                start = _backend_cpu(pid)
                conn.execute(sql.format(n=loops))
                best = min(best, _backend_cpu(pid) - start)
            costs[name] = best / loops * 1e6
        base = costs[CPU_LOOPS[0][0]]
        for name, _body in CPU_LOOPS:
            lines.append(f"| {name} | {costs[name]:.0f} | {base / costs[name]:.2f}x |")
    return "\n".join(lines)


def _timed(conn: psycopg.Connection, sql: str, params: tuple[object, ...]) -> float:
    start = time.perf_counter()
    conn.execute(sql, params)
    return time.perf_counter() - start


def ratio_line(notes: dict[tuple[str, int], str], label: str) -> str:
    bare = float(notes[(BARE_NAME, 8)])
    merge = float(notes[("merge_jsonb", 8)])
    verdict = "meets" if merge / bare >= TARGET_RATIO else "misses"
    return (
        f"{label}: merge_jsonb at 8 clients = {merge / bare:.2f}x the bare update"
        f" ({verdict} the {TARGET_RATIO}x target)."
    )


def main() -> None:
    load = os.getloadavg()[0]
    durable_table, durable_notes = hot_row(durable=True)
    fast_table, fast_notes = hot_row(durable=False)
    cost = merge_patch_cost()
    large = large_patch_cost()
    cpu = server_cpu()
    section = "\n".join(
        [
            "### JSONB merges (`jsonb`)",
            "",
            f"Machine: {machine()}. pgbench, extended protocol without prepared statements (as"
            " pgshield's client and Supavisor transaction mode); each row is the best of"
            f" {ROUNDS} interleaved runs of {SECONDS} s. Load average when it started:"
            f" {load:.1f} (anything near or above the core count makes every row noisy).",
            "Every row merges into **one hot row**; each client writes its own key.",
            "The lost-update counts come from separate runs of"
            f" {LOST_TX_PER_CLIENT} counter increments per client (`pgbench -t`).",
            "",
            "**Durable cluster** (fsync and synchronous_commit on, the production setting):",
            "",
            durable_table,
            "",
            ratio_line(durable_notes, "Durable"),
            "",
            "**Fast cluster** (fsync off: commits are free, so this shows CPU cost per merge):",
            "",
            fast_table,
            "",
            ratio_line(fast_notes, "Fast"),
            "",
            "**Server CPU per call**, read from the backend's own CPU counters, so other load"
            " on the box hardly changes it (each call its own transaction, no client round"
            " trip). A client's call also has its `select merge_jsonb(...)` parsed and planned"
            " (second row); the round trip and the protocol add the same to both, so hot-row"
            " throughput ratios lie between that row's ratio (CPU-bound box) and 1 (commits"
            " waiting for the disk).",
            "",
            cpu,
            "",
            "**Cost of `pgshield.jsonb_merge_patch`** per call, server side, on a stored document"
            " (TOAST-compressed at 100 KB) against Postgres's shallow `||` on the same data."
            " *flat*: two top-level keys; *nested*: a nested merge, a delete and a new object.",
            "",
            cost,
            "",
            "**Large patches**: milliseconds per call (best of"
            f" {LARGE_CALLS}, wall time from psycopg, the patch sent as a parameter) for a patch"
            " naming every key of a stored document of as many keys; *nulls* remove them all"
            " (the 1 MB patch of issue 9), *values* replace them, *empty objects* merge into"
            " each. A linear cost shows as about 10x for 10x the members (a quadratic one as"
            " 100x); *values* is a single `||`, Postgres's own cost, for reference.",
            "",
            large,
        ]
    )
    print(section)
    write_section("jsonb", section)


if __name__ == "__main__":
    if sys.argv[1:] == ["large-patches"]:
        print(large_patch_cost())
    else:
        main()

"""Server instructions per PostgREST-shaped request, counted by callgrind: load cannot move it.

Throughput on a shared 2-core machine moves with whatever else runs; the number of instructions
the server executes for one request does not. This benchmark builds the guard benchmark's
database (bench_guard.prepare), stops the server and replays the same request shape in
single-user mode (``postgres --single``) under ``valgrind --tool=callgrind``: ``begin``, the
``set_config`` select, the work, ``commit``, for a fixed list of subjects. Each workload runs twice
(N/3 and N requests); the difference divided by the extra requests is the cost of one request,
without start-up. It runs each workload in two ways: as simple queries, parsed and planned each
time (a client without prepared statements, a pooler in transaction mode), and prepared once
(``PREPARE`` then ``EXECUTE``: what PostgREST and ``pgbench -M prepared`` do), where the bare work
no longer pays for its parse and plan. Each run first makes all its requests once (the same in
both runs, so they cancel out): every subject's state is then current, as under steady traffic.
Client and protocol costs are not in it (pgbench's figures include them, and at 8 clients on 2
cores they weigh alike on both sides of a ratio), so ratios here are lower than the throughput
ratios of bench_guard. Skipped without valgrind.

    .venv/bin/python bench/bench_instructions.py
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import psycopg

import bench_guard
from harness import bench_cluster, machine, write_section

HERE = Path(__file__).resolve().parent
REQUESTS = 150

WORKLOADS: list[tuple[str, str, str]] = [
    ("the request shape alone (`select 1`)", "authenticated", "select 1;"),
    (
        "bare 1-row unlogged upsert",
        "service_role",
        "insert into bench.c1 as c values ({s}, 1) on conflict (k) do update set n = c.n + 1;",
    ),
    (
        "increment_rate_limit (service_role)",
        "service_role",
        "select allowed from public.increment_rate_limit({s}, 2000000000, 60);",
    ),
    (
        bench_guard.INCREMENT_FLOOR,
        "service_role",
        "select allowed from bench.increment_floor({s});",
    ),
    (
        "bare 3-row unlogged upsert",
        "authenticated",
        "insert into bench.c3 as c select {s}, w, 1 from unnest(array[60, 3600, 86400]) w"
        " on conflict (k, w) do update set n = c.n + 1;",
    ),
    (
        "check_rate_limit, 3 windows (authenticated)",
        "authenticated",
        "select allowed from public.check_rate_limit('bench_api');",
    ),
    ("guard on a POST, 3-window policy", "authenticated", "select pgshield.request_guard();"),
    (bench_guard.POLICY_FLOOR, "authenticated", "select bench.policy_row_floor();"),
    ("calibration: a PL/pgSQL function that only returns", "authenticated", "select bench.e0();"),
    (
        "calibration: the same with 40 trivial assignments before the return",
        "authenticated",
        "select bench.e40();",
    ),
]
RATIOS = [
    ("increment_rate_limit (service_role)", "bare 1-row unlogged upsert"),
    ("check_rate_limit, 3 windows (authenticated)", "bare 3-row unlogged upsert"),
    ("guard on a POST, 3-window policy", "bare 3-row unlogged upsert"),
    (bench_guard.INCREMENT_FLOOR, "bare 1-row unlogged upsert"),
    (bench_guard.POLICY_FLOOR, "bare 3-row unlogged upsert"),
]


def script(role: str, work: str, n: int, *, prepared: bool = False) -> str:
    """n requests; prepared: the set_config select and the work prepared once, then executed."""
    uses = "{s}" in work
    lines = []
    if prepared:
        lines += [
            "prepare shape(text, text) as select set_config('role', $1, true),"
            " set_config('request.jwt.claims', $2, true),"
            " set_config('request.headers', '{\"x-forwarded-for\": \"203.0.113.7\"}', true),"
            " set_config('request.method', 'POST', true),"
            " set_config('request.path', '/bench', true);",
            f"prepare work{'(text)' if uses else ''} as {work.replace('{s}', '$1')}",
        ]
    for i in range(n):
        subject = f"00000000-0000-4000-8000-{(i * 7919) % bench_guard.USERS + 1:012d}"
        claims = f'{{"role": "{role}", "sub": "{subject}"}}'
        if prepared:
            lines += [
                "begin;",
                f"execute shape('{role}', '{claims}');",
                f"execute work('{subject}');" if uses else "execute work;",
                "commit;",
            ]
            continue
        lines += [
            "begin;",
            f"select set_config('role', '{role}', true),"
            f" set_config('request.jwt.claims', '{claims}', true),"
            " set_config('request.headers', '{\"x-forwarded-for\": \"203.0.113.7\"}', true),"
            " set_config('request.method', 'POST', true),"
            " set_config('request.path', '/bench', true);",
            work.replace("{s}", f"'{subject}'"),
            "commit;",
        ]
    return "\n".join(lines) + "\n"


def warmed(role: str, work: str, n: int, *, prepared: bool = False) -> str:
    """All REQUESTS requests once, unmeasured in effect (both runs have them), then n of them.

    Every subject's state is then current, as under steady traffic (pgbench hits each subject
    many times per window), whenever the runs start: without it, whether a call finds its
    window current would depend on the minute the benchmark was started in.
    """
    first = script(role, work, REQUESTS, prepared=prepared)
    again = script(role, work, n, prepared=prepared)
    if prepared:  # the statements are prepared once, by the first pass
        again = again.split("\n", 2)[2]
    return first + again


def instructions(cluster, role: str, work: str, n: int, *, prepared: bool = False) -> int:
    out = cluster._cmd(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            str(cluster.bindir / "postgres"),
            "--single",
            "-D",
            str(cluster.data),
            "-c",
            "autovacuum=off",
            "postgres",
        ],
        input=warmed(role, work, n, prepared=prepared),
    )
    found = re.search(r"Collected : (\d+)", out.stderr)
    # Single-user mode prints a failed statement's ERROR on stderr, with the server's log.
    if found is None or "ERROR" in out.stdout or "ERROR:" in out.stderr:
        raise RuntimeError(f"callgrind run failed: {out.stderr[-500:]} {out.stdout[:500]}")
    return int(found.group(1))


def pair(cluster, role: str, work: str, *, prepared: bool) -> tuple[int, int]:
    """The runs of N/3 and N requests, after an unmeasured one, all three within one minute.

    Every window of the benchmark's limits (60 s, 1 h, 1 day) starts on a minute. The first run
    in a minute pays for every subject's first call in the new window (for the first workload,
    in the window after the one the benchmark's data was written in): the unmeasured run takes
    that, so the difference between the two measured runs is the cost of one steady request. A
    minute that begins during the three is run again.
    """
    for _ in range(5):
        began = time.time()
        instructions(cluster, role, work, REQUESTS // 3, prepared=prepared)
        low = instructions(cluster, role, work, REQUESTS // 3, prepared=prepared)
        high = instructions(cluster, role, work, REQUESTS, prepared=prepared)
        if int(began // 60) == int(time.time() // 60):
            break
        print("  (a minute began during the runs: running them again)", flush=True)
    return low, high


def main() -> str:
    started = time.monotonic()
    if shutil.which("valgrind") is None:
        text = "valgrind is not installed: instruction counts skipped."
    else:
        per: dict[tuple[str, bool], float] = {}
        with bench_cluster(durable=True) as (cluster, dsn):
            bench_guard.prepare(dsn)
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(bench_guard.CALIBRATION)
            cluster.stop()
            for prepared in (False, True):
                for name, role, work in WORKLOADS:
                    low, high = pair(cluster, role, work, prepared=prepared)
                    per[name, prepared] = (high - low) / (REQUESTS - REQUESTS // 3)
                    print(
                        f"  instructions ({'prepared' if prepared else 'simple'}): {name}:"
                        f" {per[name, prepared] / 1000:,.0f}k",
                        flush=True,
                    )
        lines = [
            f"Server instructions per request (callgrind, single-user mode, {REQUESTS} requests"
            f" minus {REQUESTS // 3}), on the guard benchmark's database, as simple queries"
            " (parsed and planned each time) and prepared once (as PostgREST and"
            f" `pgbench -M prepared` run them). {machine()}",
            "",
            "| workload | simple queries | prepared |",
            "|---|---|---|",
        ]
        lines += [
            f"| {name} | {per[name, False] / 1000:,.0f}k | {per[name, True] / 1000:,.0f}k |"
            for name, _, _ in WORKLOADS
        ]
        lines += [
            "",
            "| ratio (bare work / pgshield) | simple queries | prepared |",
            "|---|---|---|",
        ]
        lines += [
            f"| {a} vs {b} | {per[b, False] / per[a, False]:.2f}x"
            f" | {per[b, True] / per[a, True]:.2f}x |"
            for a, b in RATIOS
        ]
        e0, e40 = (per[name, False] for name, _, _ in WORKLOADS[-2:])
        bare3 = per["bare 3-row unlogged upsert", False]
        bare3p = per["bare 3-row unlogged upsert", True]
        bare1 = per["bare 1-row unlogged upsert", False]
        bare1p = per["bare 1-row unlogged upsert", True]
        lines += [
            "",
            f"One PL/pgSQL statement costs {(e40 - e0) / 40 / 1000:.1f}k instructions the"
            " first time it runs in a transaction, and a PostgREST request is a new"
            " transaction: a decision pays for every statement and expression it runs, each"
            " time (it is prepared once per session, but its executor state is built again in"
            " every transaction, in proportion to the size of the expressions run)."
            f" As simple queries, at 0.7x of the bare 3-row upsert a request may cost"
            f" {bare3 / 0.7 / 1000:,.0f}k in all; the floor above leaves"
            f" {(bare3 / 0.7 - per[WORKLOADS[-3][0], False]) / 1000:,.0f}k of that for the"
            " decision itself. Prepared, the bare upsert no longer parses and plans: the"
            f" same 0.7x allows {bare3p / 0.7 / 1000:,.0f}k, and leaves"
            f" {(bare3p / 0.7 - per[WORKLOADS[-3][0], True]) / 1000:,.0f}k above the floor."
            f" increment_rate_limit's 0.9x of the bare 1-row upsert allows"
            f" {bare1 / 0.9 / 1000:,.0f}k as simple queries and {bare1p / 0.9 / 1000:,.0f}k"
            " prepared; the bare upsert alone in a function that returns the API's row costs"
            f" {per[bench_guard.INCREMENT_FLOOR, False] / 1000:,.0f}k and"
            f" {per[bench_guard.INCREMENT_FLOOR, True] / 1000:,.0f}k.",
        ]
        lines += ["", f"_Instruction benchmark: {time.monotonic() - started:.0f} s._"]
        text = "\n".join(lines)
    print(text)
    write_section("instructions", text, "Instructions per request")
    return text


if __name__ == "__main__":
    main()

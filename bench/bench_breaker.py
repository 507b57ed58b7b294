"""Circuit breakers (`breaker`): acquire + release pairs per second in the closed state.

pgbench at 1 / 8 / 32 clients on one breaker, against two `select 1` round trips (the floor of
any two-call protocol), plus lock waits seen at 32 clients; then the same state machine done
read-then-write from Python (read the row, decide, write it back) and the failures it loses.
``python bench/bench_breaker.py [seconds]``; ``make bench`` runs it with the rest.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path

import psycopg

from harness import Result, bench_cluster, format_table, machine, pgbench

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
START, END = "<!-- bench:breaker:start -->", "<!-- bench:breaker:end -->"
CLIENTS = (1, 8, 32)
PAIR = """\\set outcome 1
select permit from public.acquire_breaker('bench') \\gset
select state from public.release_breaker('bench', :permit, 'success', 5);
"""
BASELINE = "select 1;\nselect 1;\n"
NAIVE_WORKERS, NAIVE_FAILURES = 16, 50


def lock_waits(dsn: str, seconds: float) -> int:
    """Samples of backends waiting on a lock while 32 clients run pairs."""
    stop = threading.Event()
    seen = [0]

    def sample() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            while not stop.is_set():
                row = c.execute(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                ).fetchone()
                seen[0] += row[0] if row else 0
                stop.wait(0.01)

    t = threading.Thread(target=sample)
    t.start()
    try:
        pgbench(dsn, "pairs", PAIR, clients=32, seconds=seconds, protocol="extended")
    finally:
        stop.set()
        t.join()
    return seen[0]


def naive_lost_failures(dsn: str) -> tuple[int, int]:
    """A breaker row read, changed in Python and written back: how many failures it loses."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("create table if not exists bench_naive (name text primary key, failures int)")
        c.execute(
            "insert into bench_naive values ('x', 0) on conflict (name) do update set failures = 0"
        )

    def work() -> None:
        with psycopg.connect(dsn, autocommit=True) as c:
            for _ in range(NAIVE_FAILURES):
                row = c.execute("select failures from bench_naive where name = 'x'").fetchone()
                assert row is not None
                c.execute("update bench_naive set failures = %s where name = 'x'", (row[0] + 1,))

    threads = [threading.Thread(target=work) for _ in range(NAIVE_WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with psycopg.connect(dsn, autocommit=True) as c:
        row = c.execute("select failures from bench_naive where name = 'x'").fetchone()
    total = NAIVE_WORKERS * NAIVE_FAILURES
    return total, total - (row[0] if row else 0)


def main(seconds: float = 5.0) -> str:
    load = os.getloadavg()[0]
    results: list[Result] = []
    notes: list[str] = []
    with bench_cluster(durable=False) as (_cluster, dsn):
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("select public.configure_breaker('bench', 100000)")
        for n in CLIENTS:
            base = pgbench(dsn, "two `select 1`", BASELINE, clients=n, seconds=seconds,
                           protocol="extended")  # fmt: skip
            pair = pgbench(dsn, "acquire + release (closed)", PAIR, clients=n, seconds=seconds,
                           protocol="extended")  # fmt: skip
            results += [base, pair]
            notes.append(f"{n} clients: {pair.ops_per_s / base.ops_per_s:.2f}x of two `select 1`")
        waits = lock_waits(dsn, seconds)
        total, lost = naive_lost_failures(dsn)
    section = "\n".join(
        [
            "### Circuit breakers (`breaker`)",
            "",
            f"Machine: {machine()}. Fast cluster (fsync off), pgbench extended protocol,"
            f" {seconds:g} s per row, load average at start {load:.1f}. One breaker, closed,"
            " every pair a success (one transaction per call).",
            "",
            format_table(results),
            "",
            "; ".join(notes) + ".",
            f"Lock waits sampled every 10 ms at 32 clients: {waits}.",
            f"Read-then-write from Python ({NAIVE_WORKERS} workers x {NAIVE_FAILURES} failures"
            f" on one row): {lost} of {total} failures lost; pgshield loses none"
            " (tests/test_breaker_concurrency.py).",
        ]
    )
    print(section)
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    block = f"{START}\n{section}\n{END}"
    if START in text and END in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text)
    return section


if __name__ == "__main__":
    main(float(sys.argv[1]) if sys.argv[1:] else 5.0)

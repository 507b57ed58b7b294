"""The maintenance benchmark: cleanup of expired rate limit state while increments continue.

One durable cluster. ROWS expired rows wait in the state table; pgbench (8 clients) increments
live keys, first alone (baseline), then while ``pgshield.run_maintenance()`` runs back to back
until every expired row is gone. Reports the increments' p50/p99 in both phases (target: p99
during cleanup at most 2x the baseline) and the rows cleanup removed per second.

    .venv/bin/python bench/bench_maintenance.py [--rows N]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from harness import Result, bench_cluster, machine, pgbench
from pgshield.client import connect

ROWS = 1_000_000
CLIENTS = 8
LIVE_KEYS = 10_000
BUDGET = "1 second"
PAUSE = 0.0  # seconds between runs: 0 is cleanup back to back
INCREMENT = (
    "\\set id random(1, {keys})\n"
    "select allowed from public.increment_rate_limit('live-' || :id, 2000000000, 60);\n"
)


def fill(dsn: str, rows: int) -> None:
    with connect(dsn) as conn:
        conn.execute(
            "insert into pgshield.rate_limit_state"
            " (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)"
            " select 'expired-' || g, 60, 'fixed_window', 10, now() - interval '2 hours', 1,"
            "        now() - interval '1 hour' from generate_series(1, %s) g",
            (rows,),
        )
        conn.execute("vacuum analyze pgshield.rate_limit_state")


def run(rows: int, budget: str = BUDGET, pause: float = PAUSE) -> str:
    script = INCREMENT.format(keys=LIVE_KEYS)
    with bench_cluster() as (_cluster, dsn):
        with connect(dsn) as conn:  # warm the live keys: increments update, not insert
            conn.execute(
                "select public.increment_rate_limit('live-' || g, 2000000000, 60)"
                " from generate_series(1, %s) g",
                (LIVE_KEYS,),
            )
        fill(dsn, rows)
        baseline = pgbench(dsn, "increments alone", script, clients=CLIENTS, seconds=6)
        cleaned: dict[str, float] = {}

        def cleanup() -> None:
            time.sleep(0.5)  # pgbench is connected and running
            started = time.perf_counter()
            deleted, runs = 0, 0
            with connect(dsn) as conn:
                while True:
                    row = conn.execute(
                        "select pgshield.run_maintenance(%s::interval)", (budget,)
                    ).fetchone()
                    assert row is not None
                    task = next(t for t in row[0]["tasks"] if t["task"] == "rate_limit")
                    deleted += task["deleted"]
                    runs += 1
                    if task["status"] == "done":
                        break
                    time.sleep(pause)
            cleaned.update(seconds=time.perf_counter() - started, deleted=deleted, runs=runs)

        worker = threading.Thread(target=cleanup)
        worker.start()
        seconds = max(6, int(rows / 60_000) + 2)
        during = pgbench(dsn, "increments during cleanup", script, clients=CLIENTS, seconds=seconds)
        worker.join()
    rate = cleaned["deleted"] / cleaned["seconds"]
    ratio = during.p99_ms / baseline.p99_ms if baseline.p99_ms else float("inf")
    lines = [
        f"## maintenance ({machine()})",
        "",
        f"{rows:,} expired rows; {CLIENTS} pgbench clients increment {LIVE_KEYS:,} live keys;"
        f" run_maintenance('{budget}') every {budget} + {pause:g} s until done.",
        "",
        "| phase | increments/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *(_row(r) for r in (baseline, during)),
        "",
        f"cleanup: {int(cleaned['deleted']):,} rows in {cleaned['seconds']:.1f} s over"
        f" {int(cleaned['runs'])} runs = {rate:,.0f} rows/s (pgbench ran {seconds} s)",
        f"p99 during cleanup / baseline p99 = {ratio:.2f} (target <= 2):"
        f" {'met' if ratio <= 2 else 'MISSED'}",
    ]
    return "\n".join(lines)


def _row(r: Result) -> str:
    return f"| {r.name} | {r.ops_per_s:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} |"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--budget", default=BUDGET, help="run_maintenance's time budget")
    parser.add_argument("--pause", type=float, default=PAUSE, help="seconds between runs")
    args = parser.parse_args(argv if argv is not None else [])
    text = run(args.rows, args.budget, args.pause)
    print(text)
    return text


if __name__ == "__main__":
    main(sys.argv[1:])

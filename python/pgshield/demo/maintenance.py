"""Demo section: expired rate limit state cleaned by one maintenance run, then the metrics."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pgshield.client import connect
from pgshield.errors import ShieldError
from pgshield.shield import Shield
from pgshield.text import heading, table

NOW = dt.datetime(2030, 1, 1, 0, 0, 5, tzinfo=dt.timezone.utc)


def run(dsn: str, echo: Callable[[str], None]) -> None:
    echo(heading("maintenance"))
    echo("Every module owns its cleanup; run_maintenance calls each one in batches, within a")
    echo("time budget. The pg_cron job does the same every minute, committing every 100 ms.\n")
    # One rolled-back transaction: the moved clock and the demo's state are never seen by others.
    with connect(dsn) as conn, conn.transaction(force_rollback=True):
        conn.execute("select pgshield.set_clock(%s)", (NOW,))
        shield = Shield(conn)
        for i in range(20):
            shield.rate_limits.hit(f"demo:maintenance:{i}", limit=5, window=60)
        echo("20 keys with a 60 s window; the clock moves 2 minutes on, and maintenance runs:")
        conn.execute("select pgshield.advance_clock(interval '2 minutes')")
        result = shield.maintenance.run(time_budget=5)
        echo(table([vars(t) for t in result.tasks], ["task", "status", "deleted", "batches"]))
        echo(f"{result.deleted} row(s) deleted in {result.duration_ms} ms\n")
        lines = [
            line
            for line in shield.maintenance.metrics().splitlines()
            if line.startswith(("pgshield_rate_limit_state_rows", "pgshield_maintenance_runs"))
        ]
        echo("A few lines of `pgshield metrics` (Prometheus text):")
        echo("\n".join(f"  {line}" for line in lines))
        try:
            job = shield.maintenance.schedule()
            echo(f"\nScheduled {job.job_name} on {job.schedule!r} (rolled back with the demo).")
        except ShieldError as exc:
            echo(f"\nScheduling from this database: {exc}")
    echo("")

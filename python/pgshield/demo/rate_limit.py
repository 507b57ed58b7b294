"""Demo section: a burst of 8 requests against a limit of 5, with each algorithm, then a policy."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from pgshield.client import connect
from pgshield.rate_limit import ALGORITHMS, Decision
from pgshield.shield import Shield
from pgshield.text import heading, table

BURST = 8
LIMIT = 5
WINDOW = 10
NOW = dt.datetime(2030, 1, 1, 0, 0, 2, tzinfo=dt.timezone.utc)


def _cell(d: Decision) -> str:
    if d.allowed:
        return f"ok, {d.remaining} left"
    return f"DENIED, retry {d.retry_after_ms} ms"


def run(dsn: str, echo: Callable[[str], None]) -> None:
    echo(heading("rate limiting"))
    echo(f"A burst of {BURST} requests against {LIMIT} per {WINDOW} s, one key per algorithm.")
    echo("Every instance of an application asking the same database gets the same answers.\n")
    # Everything runs in one transaction that is rolled back: the frozen clock is never seen by
    # anyone else and the demo leaves no state behind (only the decision counters move).
    with connect(dsn) as conn, conn.transaction(force_rollback=True):
        conn.execute("select pgshield.set_clock(%s)", (NOW,))
        shield = Shield(conn)
        rows = []
        for i in range(1, BURST + 1):
            row: dict[str, str | int] = {"request": i}
            for algorithm in ALGORITHMS:
                d = shield.rate_limits.hit(
                    f"demo:{algorithm}", limit=LIMIT, window=WINDOW, algorithm=algorithm
                )
                row[algorithm] = _cell(d)
            rows.append(row)
        echo(table(rows, ["request", *ALGORITHMS]))
        echo("")
        echo("The same subject under the shipped 'api' policy (free tier: 10/minute,")
        echo("100/hour, 500/day), asking for 4 at a time; a denial consumes nothing:\n")
        rows = []
        for i in range(1, 5):
            d = shield.rate_limits.check("api", cost=4, subject="demo-user")
            rows.append(
                {
                    "call": i,
                    "allowed": d.allowed,
                    "remaining": d.remaining,
                    "retry_after_ms": d.retry_after_ms,
                    "used (minute/hour/day)": "/".join(str(w.used) for w in d.windows),
                    "violated": ", ".join(d.violated) or "-",
                }
            )
        echo(table(rows))
        echo("")
        echo("Headers for the last answer:")
        for name, value in d.headers(now=NOW).items():
            echo(f"  {name}: {value}")
        echo("")

"""Rate windows of any length: a window holds at most 61 bucket rows per backend.

Outcomes are counted per step of the window (1 s up to a minute, ceil(window / 60) s beyond),
so the trip check a failure runs under the breaker's row lock sums a bounded number of rows
however long the window: a one-hour window counts by the minute. The clock is moved here to
prove the arithmetic (which calls are in the window); tests/test_breaker_concurrency.py holds
the exact counts under many connections and on the real clock.
"""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

T0 = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


def at(conn: psycopg.Connection, seconds: float) -> None:
    conn.execute("select pgshield.set_clock(%s)", (T0 + dt.timedelta(seconds=seconds),))


def outcome(conn: psycopg.Connection, name: str, result: str) -> tuple:
    permit = conn.execute("select permit from public.acquire_breaker(%s)", (name,)).fetchone()[0]  # type: ignore[index]
    row = conn.execute(
        "select state, changed from public.release_breaker(%s, %s, %s)", (name, permit, result)
    ).fetchone()
    assert row is not None
    return row


def rate_breaker(conn: psycopg.Connection, name: str, window: int, min_calls: int) -> None:
    conn.execute(
        "select public.configure_breaker(%s, p_failure_threshold => null, p_failure_rate => 0.5,"
        " p_min_calls => %s, p_window_seconds => %s)",
        (name, min_calls, window),
    )


@pytest.mark.parametrize(("window", "step"), [(60, 1), (61, 2), (3600, 60), (86400, 1440)])
def test_a_window_holds_at_most_61_rows_per_backend(
    conn: psycopg.Connection, window: int, step: int
) -> None:
    name = f"pgshield_t_window_{window}"
    at(conn, 0)
    rate_breaker(conn, name, window, 1_000_000)
    calls = 300
    for i in range(calls):  # 300 successes spread evenly over two windows
        at(conn, i * 2 * window / calls)
        assert outcome(conn, name, "success") == ("closed", False)
    steps = conn.execute(
        "select count(*), count(distinct second),"
        " count(*) filter (where second > pgshield.now() - %s * interval '1 second'),"
        " sum(calls), bool_and(extract(epoch from second)::bigint %% %s = 0)"
        " from pgshield.breaker_buckets where name = %s",
        (window, step, name),
    ).fetchone()
    assert steps is not None
    rows, distinct, in_window, counted, aligned = steps
    assert counted == calls and aligned
    assert rows == distinct  # one backend: one row per step
    assert in_window <= 61 and rows <= min(calls, 2 * window // step + 1)
    status = conn.execute(
        "select calls from pgshield.breaker_status where name = %s", (name,)
    ).fetchone()
    assert status is not None and status[0] <= calls // 2 + 3


def test_a_one_hour_window_trips_on_the_calls_in_it_and_forgets_older_ones(
    conn: psycopg.Connection,
) -> None:
    # In the window: 10 successes, then failures; the 10th failure makes 50% and trips it.
    at(conn, 0)
    rate_breaker(conn, "pgshield_t_hour", 3600, 4)
    for _ in range(10):
        outcome(conn, "pgshield_t_hour", "success")
    at(conn, 3000)
    answers = [outcome(conn, "pgshield_t_hour", "failure") for _ in range(10)]
    assert answers == [("closed", False)] * 9 + [("open", True)]
    # Out of the window: successes counted more than an hour (and a step) before the failures
    # weigh nothing, so the 4th failure (min_calls) trips it at 4 of 4.
    at(conn, 0)
    rate_breaker(conn, "pgshield_t_hour_old", 3600, 4)
    for _ in range(10):
        outcome(conn, "pgshield_t_hour_old", "success")
    at(conn, 3600 + 60)
    answers = [outcome(conn, "pgshield_t_hour_old", "failure") for _ in range(4)]
    assert answers == [("closed", False)] * 3 + [("open", True)]

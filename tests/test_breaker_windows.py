"""Rate windows of any length: a window holds at most 61 bucket rows per backend.

Outcomes are counted per step of the window (1 s up to a minute, ceil(window / 60) s beyond),
so the trip check a failure runs under the breaker's row lock sums a bounded number of rows
however long the window: a one-hour window counts by the minute. The clock is moved here to
prove the arithmetic (which calls are in the window); tests/test_breaker_concurrency.py holds
the exact counts under many connections and on the real clock.
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import psycopg
import pytest

from support import run_threads

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


def _step_trial(db: str, name: str, clients: int) -> None:
    """Successes just before a 2 s step boundary, failures just after it, on the real clock."""
    conns = [psycopg.connect(db, autocommit=True) for _ in range(clients)]
    counted: list[tuple] = []
    lock = threading.Lock()
    try:
        conns[0].execute(
            "select public.configure_breaker(%s, null, p_failure_rate => 0.5,"
            " p_min_calls => 10, p_open_ms => 600000, p_window_seconds => 120)",
            (name,),
        )
        time.sleep((2 - time.time() % 2 - 0.5) % 2)  # 0.5 s before an epoch-aligned boundary
        boundary = (time.time() // 2 + 1) * 2

        def call(c: psycopg.Connection, outcome: str) -> None:
            allowed, permit = c.execute(
                "select allowed, permit from public.acquire_breaker(%s)", (name,)
            ).fetchone()  # type: ignore[misc]
            if allowed:
                r = c.execute(
                    "select state, changed, counted from public.release_breaker(%s, %s, %s)",
                    (name, permit, outcome),
                ).fetchone()
                with lock:
                    counted.append((outcome, *r, time.time()))  # type: ignore[misc]

        def work(i: int, barrier: threading.Barrier) -> None:
            barrier.wait()
            for _ in range(10):
                call(conns[i], "success")
            time.sleep(max(boundary - time.time() + 0.05, 0))
            for _ in range(11):
                call(conns[i], "failure")

        run_threads(clients, work)
        steps = (
            conns[0]
            .execute(
                "select count(distinct second),"
                " bool_and(extract(epoch from second)::bigint %% 2 = 0), sum(calls), sum(failures)"
                " from pgshield.breaker_buckets where name = %s",
                (name,),
            )
            .fetchone()
        )
    finally:
        for c in conns:
            c.close()
    assert steps is not None
    distinct, aligned, calls, failures = steps
    successes = [r for r in counted if r[0] == "success" and r[3]]
    failed = [r for r in counted if r[0] == "failure" and r[3]]
    assert len(successes) == clients * 10 and max(r[4] for r in successes) < boundary, name
    assert aligned and distinct == 2, (name, distinct)  # both steps are in the window
    trips = [r for r in counted if r[2]]
    assert len(trips) == 1 and trips[0][0] == "failure", name
    # The trip comes at the failure that makes failures >= 50 % of the window's calls, summed
    # over both steps, and nothing is counted after it.
    assert (calls, failures) == (len(successes) + len(failed), len(failed)), name
    assert len(failed) == len(successes), (name, calls, len(failed))


@pytest.mark.slow
def test_a_burst_across_a_step_boundary_on_the_real_clock_trips_exactly(db: str) -> None:
    """16 backends on the real clock, a 120 s window counted in 2 s steps: successes in one
    step, failures in the next; the trip sums both and comes exactly at 50 %, once. Three
    trials."""
    for trial in range(3):
        _step_trial(db, f"pgshield_t_step_burst_{trial}", 16)

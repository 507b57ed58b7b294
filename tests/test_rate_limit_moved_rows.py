"""Calls that wait for a row while it moves under them: the row changes, or the window ends.

A compare-and-set write of a policy check, when the subject's row moves under it:

check_rate_limit decides from one plain read of the subject's row (every window in one row),
then writes it only if it is still the version that was read. Here a second connection holds
the row locked while the check runs, changes the hour window and commits: the check's write
then finds another version, so it must lock the row and decide again on the locked state.
Both outcomes are tested with exact counts: the moved row still leaves room (every window is
counted once, the hour on top of what the other transaction set), and the moved row is full
(denied, and every window holds exactly what it held).

A fixed-window increment that is refused at its clock reading but whose window ends while it
waits for the row: it is decided again at the later time, and counted in the new window.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

POLICY = "pgshield_t_cas"
SUBJECT = "pgshield_t_cas_subject"
WINDOWS = (60, 3600, 86400)


def connect(db: str) -> psycopg.Connection:
    return psycopg.connect(db, autocommit=True, prepare_threshold=None)


def counts(conn: psycopg.Connection) -> dict[int, int]:
    rows = conn.execute(
        "select u.w, u.c from pgshield.rate_limit_policy_state s,"
        " unnest(s.windows, s.counts) as u(w, c) where s.subject = %s and s.policy = %s",
        (SUBJECT, POLICY),
    ).fetchall()
    return {w: n for w, n in rows}


def wait_until_blocked(conn: psycopg.Connection, function: str) -> None:
    """Until a call of ``function`` waits for a lock. Polled from ``conn``, not from the holder:
    inside the holder's transaction pg_stat_activity is a snapshot."""
    for _ in range(1500):
        waiting = conn.execute(
            "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
            " and query like %s",
            (f"%{function}%",),
        ).fetchone()
        if waiting and waiting[0]:
            return
        time.sleep(0.02)
    pytest.fail(f"{function} never waited for the held row")


def check_while_hour_row_moves(
    db: str, conn: psycopg.Connection, hour_count_after: int
) -> tuple[bool, list[str]]:
    """Run one check of cost 2 while another transaction sets the hour row's count."""
    result: dict[str, object] = {}
    with connect(db) as holder:
        holder.execute("begin")
        holder.execute(
            "select 1 from pgshield.rate_limit_policy_state"
            " where subject = %s and policy = %s for update",
            (SUBJECT, POLICY),
        )

        def check() -> None:
            with connect(db) as c:
                row = c.execute(
                    "select allowed, violated from public.check_rate_limit(%s, 2, null, %s)",
                    (POLICY, SUBJECT),
                ).fetchone()
                result["row"] = row

        worker = threading.Thread(target=check)
        worker.start()
        wait_until_blocked(conn, "check_rate_limit")
        holder.execute(
            "update pgshield.rate_limit_policy_state"
            " set counts[array_position(windows, 3600)] = %s where subject = %s and policy = %s",
            (hour_count_after, SUBJECT, POLICY),
        )
        holder.execute("commit")
        worker.join(30)
        assert not worker.is_alive()
    allowed, violated = result["row"]  # type: ignore[misc]
    return allowed, violated


@pytest.fixture
def policy(conn: psycopg.Connection) -> None:
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    conn.execute(
        "select public.define_rate_limit_policy(%s, %s::jsonb, 'fixed_window')",
        (POLICY, '{"free": {"60": 100, "3600": 10, "86400": 100}}'),
    )
    # Every window has a row: 3 consumed in each.
    conn.execute("select public.check_rate_limit(%s, 3, null, %s)", (POLICY, SUBJECT))
    assert counts(conn) == {60: 3, 3600: 3, 86400: 3}


@pytest.mark.usefixtures("policy")
def test_a_moved_row_with_room_is_counted_once_in_every_window(
    db: str, conn: psycopg.Connection
) -> None:
    allowed, violated = check_while_hour_row_moves(db, conn, hour_count_after=5)
    assert (allowed, violated) == (True, [])
    # minute and day: 3 + 2, counted once (by the decision on the locked row); hour: 5 + 2.
    assert counts(conn) == {60: 5, 3600: 7, 86400: 5}


@pytest.mark.usefixtures("policy")
def test_a_moved_row_that_is_full_denies_and_changes_no_window(
    db: str, conn: psycopg.Connection
) -> None:
    allowed, violated = check_while_hour_row_moves(db, conn, hour_count_after=9)
    assert (allowed, violated) == (False, ["hour"])
    # Nothing consumed: minute and day hold what they held, hour what the other transaction set.
    assert counts(conn) == {60: 3, 3600: 9, 86400: 3}
    allowed_n, denied_n = conn.execute(
        "select allowed, denied from pgshield.rate_limit_counters where policy = %s", (POLICY,)
    ).fetchone()  # type: ignore[misc]
    assert (allowed_n, denied_n) == (1, 1)


def test_a_fixed_window_refusal_across_a_rollover_is_decided_again(
    db: str, conn: psycopg.Connection
) -> None:
    key, limit = "pgshield_t_rollover", 3
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")
    for _ in range(limit):
        conn.execute("select public.increment_rate_limit(%s, %s, 60)", (key, limit))
    result: dict[str, object] = {}
    with connect(db) as holder:
        holder.execute("begin")
        holder.execute(
            "select 1 from pgshield.rate_limit_state where key = %s and policy = '' for update",
            (key,),
        )

        def increment() -> None:
            with connect(db) as c:
                result["row"] = c.execute(
                    "select allowed, reset_at, remaining"
                    " from public.increment_rate_limit(%s, %s, 60)",
                    (key, limit),
                ).fetchone()

        worker = threading.Thread(target=increment)
        worker.start()
        wait_until_blocked(conn, "increment_rate_limit")
        # The window ends while the increment waits (the clock moves in the holder's transaction).
        holder.execute("select pgshield.advance_clock('60 seconds')")
        holder.execute("commit")
        worker.join(30)
        assert not worker.is_alive()
    allowed, reset_at, remaining = result["row"]  # type: ignore[misc]
    assert (allowed, remaining) == (True, limit - 1)
    assert reset_at.isoformat() == "2030-01-01T00:02:00+00:00"
    row = conn.execute(
        "select window_start, count from pgshield.rate_limit_state where key = %s and policy = ''",
        (key,),
    ).fetchone()
    assert row is not None and (row[0].isoformat(), row[1]) == ("2030-01-01T00:01:00+00:00", 1)


@pytest.mark.usefixtures("policy")
def test_a_reset_committed_while_a_check_waits_is_not_undone(
    db: str, conn: psycopg.Connection
) -> None:
    # The check reads the row (3 in each window), then its write waits on the row a reset is
    # deleting. Once the reset commits, the row it read is gone: the check must count from
    # nothing, not write back what it computed from its read.
    result: dict[str, object] = {}
    with connect(db) as holder:
        holder.execute("begin")
        holder.execute("select public.reset_rate_limit_subject(%s, %s)", (SUBJECT, POLICY))

        def check() -> None:
            with connect(db) as c:
                result["row"] = c.execute(
                    "select allowed, remaining from public.check_rate_limit(%s, 1, null, %s)",
                    (POLICY, SUBJECT),
                ).fetchone()

        worker = threading.Thread(target=check)
        worker.start()
        wait_until_blocked(conn, "check_rate_limit")
        holder.execute("commit")
        worker.join(30)
        assert not worker.is_alive()
    assert result["row"] == (True, 9)
    assert counts(conn) == {60: 1, 3600: 1, 86400: 1}

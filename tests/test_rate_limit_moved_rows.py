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
waits for the row: it is decided again at the later time, and counted in the new window. The
same for recorded usage: recorded at the time it got the row, never into a window over by then.

Around them: a reset committed while a check waits is not undone; a policy row left in the
direct keys' table by a call in flight during the move to one row is never read; a check, usage
record or increment in a read-only transaction is 25006 whatever its outcome; under repeatable
read a row changed since the snapshot is 40001 (nothing lost, nothing written).
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


def while_held(
    db: str,
    conn: psycopg.Connection,
    lock: str,
    lock_args: tuple,
    function: str,
    call,
    meanwhile,
) -> object:
    """``call(c)`` on its own connection while another transaction holds the row that ``lock``
    locks (selects for update, or deletes); once the call waits for it, ``meanwhile(holder)``
    runs in the holding transaction, which then commits. Returns what the call returned."""
    result: dict[str, object] = {}
    with connect(db) as holder:
        holder.execute("begin")
        holder.execute(lock, lock_args)

        def work() -> None:
            with connect(db) as c:
                result["row"] = call(c)

        worker = threading.Thread(target=work)
        worker.start()
        wait_until_blocked(conn, function)
        meanwhile(holder)
        holder.execute("commit")
        worker.join(30)
        assert not worker.is_alive()
    return result["row"]


POLICY_ROW = (
    "select 1 from pgshield.rate_limit_policy_state where subject = %s and policy = %s for update"
)


def check_while_hour_row_moves(
    db: str, conn: psycopg.Connection, hour_count_after: int
) -> tuple[bool, list[str]]:
    """Run one check of cost 2 while another transaction sets the hour row's count."""
    row = while_held(
        db,
        conn,
        POLICY_ROW,
        (SUBJECT, POLICY),
        "check_rate_limit",
        lambda c: c.execute(
            "select allowed, violated from public.check_rate_limit(%s, 2, null, %s)",
            (POLICY, SUBJECT),
        ).fetchone(),
        lambda holder: holder.execute(
            "update pgshield.rate_limit_policy_state"
            " set counts[array_position(windows, 3600)] = %s where subject = %s and policy = %s",
            (hour_count_after, SUBJECT, POLICY),
        ),
    )
    allowed, violated = row  # type: ignore[misc]
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
    row = while_held(
        db,
        conn,
        "select 1 from pgshield.rate_limit_state where key = %s and policy = '' for update",
        (key,),
        "increment_rate_limit",
        lambda c: c.execute(
            "select allowed, reset_at, remaining from public.increment_rate_limit(%s, %s, 60)",
            (key, limit),
        ).fetchone(),
        # The window ends while the increment waits (the clock moves in the holder's
        # transaction).
        lambda holder: holder.execute("select pgshield.advance_clock('60 seconds')"),
    )
    allowed, reset_at, remaining = row  # type: ignore[misc]
    assert (allowed, remaining) == (True, limit - 1)
    assert reset_at.isoformat() == "2030-01-01T00:02:00+00:00"
    row = conn.execute(
        "select window_start, count from pgshield.rate_limit_state where key = %s and policy = ''",
        (key,),
    ).fetchone()
    assert row is not None and (row[0].isoformat(), row[1]) == ("2030-01-01T00:01:00+00:00", 1)


@pytest.mark.parametrize(
    ("algorithm", "cleaned_at", "window_start", "reset_at"),
    [
        # fixed: the row expires when its window ends; sliding: a window later
        ("fixed_window", "00:01:00.5", "00:01:00", "00:02:00"),
        ("sliding_window", "00:02:00.5", "00:02:00", "00:04:00"),
    ],
)
def test_a_late_call_never_restarts_a_window_a_cleanup_deleted(
    db: str,
    conn: psycopg.Connection,
    algorithm: str,
    cleaned_at: str,
    window_start: str,
    reset_at: str,
) -> None:
    # The call reads the clock while its full window is still open, waits for the row, and a
    # cleanup with no retention deletes the row (expired by then) before the call gets it: the
    # call must be judged at the time it got it, not insert the ended window afresh (count 1,
    # allowed: one past the limit, and the calls behind it added to it).
    key, limit = f"pgshield_t_cleaned_{algorithm}", 3
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:59.5+00')")
    for _ in range(limit):
        conn.execute(
            "select public.increment_rate_limit(%s, %s, 60, 1, %s)", (key, limit, algorithm)
        )
    row = while_held(
        db,
        conn,
        "select 1 from pgshield.rate_limit_state where key = %s and policy = '' for update",
        (key,),
        "increment_rate_limit",
        lambda c: c.execute(
            "select allowed, reset_at from public.increment_rate_limit(%s, %s, 60, 1, %s)",
            (key, limit, algorithm),
        ).fetchone(),
        lambda holder: (
            holder.execute("select pgshield.set_clock(%s)", (f"2030-01-01 {cleaned_at}+00",)),
            holder.execute("select pgshield.cleanup_expired_rate_limits(1000)"),
        ),
    )
    allowed, answered_reset = row  # type: ignore[misc]
    assert allowed is True
    assert answered_reset.isoformat() == f"2030-01-01T{reset_at}+00:00"
    rows = conn.execute(
        "select window_start, count from pgshield.rate_limit_state where key = %s and policy = ''",
        (key,),
    ).fetchall()
    assert [(r[0].isoformat(), r[1]) for r in rows] == [(f"2030-01-01T{window_start}+00:00", 1)]
    # Counted once: three before, this one allowed.
    allowed_count = conn.execute(
        "select pg_sequence_last_value('pgshield.rate_limit_direct_allowed')"
    ).fetchone()
    assert allowed_count == (limit + 1,)


@pytest.mark.usefixtures("policy")
def test_a_reset_committed_while_a_check_waits_is_not_undone(
    db: str, conn: psycopg.Connection
) -> None:
    # The check reads the row (3 in each window), then its write waits on the row a reset is
    # deleting. Once the reset commits, the row it read is gone: the check must count from
    # nothing, not write back what it computed from its read.
    row = while_held(
        db,
        conn,
        "select public.reset_rate_limit_subject(%s, %s)",
        (SUBJECT, POLICY),
        "check_rate_limit",
        lambda c: c.execute(
            "select allowed, remaining from public.check_rate_limit(%s, 1, null, %s)",
            (POLICY, SUBJECT),
        ).fetchone(),
        lambda holder: None,
    )
    assert row == (True, 9)
    assert counts(conn) == {60: 1, 3600: 1, 86400: 1}


@pytest.mark.usefixtures("policy")
def test_usage_recorded_after_waiting_for_the_row_goes_into_the_window_of_that_time(
    db: str, conn: psycopg.Connection
) -> None:
    # The clock is read before the row lock is taken; while record_rate_limit_usage waits for
    # it, the minute window ends. The usage must be recorded at the time the lock was got: in
    # the new minute (the hour and the day go on), never into the minute that is already over.
    row = while_held(
        db,
        conn,
        POLICY_ROW,
        (SUBJECT, POLICY),
        "record_rate_limit_usage",
        lambda c: c.execute(
            "select allowed, reset_at from public.record_rate_limit_usage(%s, %s, 5)",
            (POLICY, SUBJECT),
        ).fetchone(),
        lambda holder: holder.execute("select pgshield.advance_clock('60 seconds')"),  # 00:01:10
    )
    assert counts(conn) == {60: 5, 3600: 8, 86400: 8}
    starts = conn.execute(
        "select u.w, timestamptz 'epoch' + u.st * interval '1 microsecond'"
        " from pgshield.rate_limit_policy_state s, unnest(s.windows, s.starts) as u(w, st)"
        " where s.subject = %s and s.policy = %s",
        (SUBJECT, POLICY),
    ).fetchall()
    assert {w: t.isoformat() for w, t in starts}[60] == "2030-01-01T00:01:00+00:00"
    allowed, reset_at = row  # type: ignore[misc]
    assert allowed is True
    assert reset_at.isoformat() > "2030-01-01T00:01:10+00:00", reset_at  # not in the past
    used = conn.execute(
        "select (e ->> 'used')::int from jsonb_array_elements(public.get_rate_limit_usage(%s)) e"
        " where (e ->> 'window_seconds')::int = 60",
        (SUBJECT,),
    ).fetchone()
    assert used == (5,)


@pytest.mark.usefixtures("policy")
def test_a_policy_row_left_in_the_direct_keys_table_is_not_read_and_expires(
    conn: psycopg.Connection,
) -> None:
    # What a call of the old code, in flight while 20261202070000 moved the policy rows, can
    # write after the move: a row of the old shape. Nothing reads it; cleanup removes it once
    # expired.
    conn.execute(
        "insert into pgshield.rate_limit_state (key, policy, window_seconds, algorithm,"
        " limit_value, window_start, count, prev_count, tat, expires_at)"
        " values (%s, %s, 60, 'fixed_window', 100, '2030-01-01 00:00:00+00', 50, 0, null,"
        " '2030-01-01 00:01:00+00')",
        (SUBJECT, POLICY),
    )
    listed = conn.execute(
        "select window_seconds, used from pgshield.rate_limit_usage where key = %s", (SUBJECT,)
    ).fetchall()
    assert sorted(listed) == [(60, 3), (3600, 3), (86400, 3)]
    assert conn.execute(
        "select remaining from public.peek_check_rate_limit(%s, 1, null, %s)", (POLICY, SUBJECT)
    ).fetchone() == (6,)  # the hour's 10, 3 used, 1 asked for: the old row counts for nothing
    conn.execute("select pgshield.advance_clock('2 minutes')")
    conn.execute("select pgshield.cleanup_expired_rate_limits()")
    assert conn.execute(
        "select count(*) from pgshield.rate_limit_state where key = %s", (SUBJECT,)
    ).fetchone() == (0,)


@pytest.mark.usefixtures("policy")
def test_consuming_calls_in_a_read_only_transaction_fail_with_25006_whatever_the_outcome(
    db: str, conn: psycopg.Connection
) -> None:
    # As PostgREST runs GET: a check would consume and count, so it is refused whether it would
    # be allowed (cost 1) or denied (cost 8 > the hour's 7 left); so are a usage record and a
    # direct key's increment (allowed: limit 5; denied: limit 1 with the key already at 1; and
    # whatever its arguments: its one update for a current window comes before their test); a
    # peek answers.
    conn.execute("select public.increment_rate_limit('pgshield_t_ro_key', 1, 60)")
    refused = [
        ("select public.check_rate_limit(%s, 1, null, %s)", (POLICY, SUBJECT)),
        ("select public.check_rate_limit(%s, 8, null, %s)", (POLICY, SUBJECT)),
        ("select public.record_rate_limit_usage(%s, %s, 1)", (POLICY, SUBJECT)),
        ("select public.increment_rate_limit('pgshield_t_ro_key', 5, 60)", ()),
        ("select public.increment_rate_limit('pgshield_t_ro_key', 1, 60)", ()),
        ("select public.increment_rate_limit('pgshield_t_ro_key', 0, 60)", ()),
        ("select public.increment_rate_limit(null, 5, 60)", ()),
    ]
    with connect(db) as c:
        for statement, args in refused:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), c.transaction():
                c.execute("set transaction read only")
                c.execute(statement, args)
        with c.transaction():
            c.execute("set transaction read only")
            peeked = c.execute(
                "select allowed from public.peek_check_rate_limit(%s, 8, null, %s)",
                (POLICY, SUBJECT),
            ).fetchone()
        assert peeked == (False,)
    assert counts(conn) == {60: 3, 3600: 3, 86400: 3}
    assert conn.execute(
        "select count from pgshield.rate_limit_state where key = 'pgshield_t_ro_key'"
    ).fetchone() == (1,)


@pytest.mark.usefixtures("policy")
def test_under_repeatable_read_a_row_changed_since_the_snapshot_is_40001(
    db: str, conn: psycopg.Connection
) -> None:
    with connect(db) as a, pytest.raises(psycopg.errors.SerializationFailure), a.transaction():
        a.execute("set transaction isolation level repeatable read")
        a.execute("select 1")  # the snapshot
        conn.execute("select public.check_rate_limit(%s, 1, null, %s)", (POLICY, SUBJECT))
        a.execute("select public.check_rate_limit(%s, 1, null, %s)", (POLICY, SUBJECT))
    # Only the read committed call counted; the refused transaction changed nothing.
    assert counts(conn) == {60: 4, 3600: 4, 86400: 4}


def test_redefining_a_policy_waits_for_no_open_decision(db: str, conn: psycopg.Connection) -> None:
    """Every decision holds a lock on its policy's counters until its transaction ends; a
    redefinition used to take them ACCESS EXCLUSIVE (a no-op ALTER SEQUENCE) and so queued
    behind open transactions, with every new decision of the policy queued behind it."""
    conn.execute(
        "select public.define_rate_limit_policy('pgshield_t_redefine', '{\"t\": {\"60\": 10}}',"
        " p_default_tier => 't')"
    )
    with psycopg.connect(db) as open_check:
        open_check.execute(
            "select allowed from public.check_rate_limit('pgshield_t_redefine', p_subject => 'x')"
        )  # as the owner (trusted): its transaction stays open
        with psycopg.connect(db, autocommit=True) as definer:
            definer.execute("set lock_timeout = '2s'")
            definer.execute(
                "select public.define_rate_limit_policy('pgshield_t_redefine',"
                " '{\"t\": {\"60\": 20}}', p_default_tier => 't')"
            )
        open_check.rollback()
    limits = conn.execute(
        "select limits from pgshield.rate_limit_policy_tiers where policy = 'pgshield_t_redefine'"
    ).fetchone()
    assert limits == ([20],)

"""Policy checks agree with the reference evaluator, window by window.

rate_limit_decide judges fixed and sliding windows that all fit with the evaluator's arithmetic
written out (no call per window); refusals and token buckets go through
pgshield.rate_limit_evaluate. Here every check and peek of a 3-window policy, on a moved clock
(window edges, a microsecond before them, odd steps) and with varied costs, is compared with
what rate_limit_evaluate says about the state the check started from. The same runs again with
limits and costs a million times larger, so that counts pass the 3,000,000 above which the
decision computes the previous window's share in numeric instead of bigint.
"""

from __future__ import annotations

import datetime as dt
import json
import random

import psycopg
import pytest

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
START_US = 1_893_456_000_000_000  # 2030-01-01 00:00:00 UTC
WINDOWS = {1: 3, 7: 5, 60: 9}
SUBJECT = "pgshield_t_eval_subject"


def ts(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


def expected(
    conn: psycopg.Connection, policy: str, algorithm: str, cost: int, now_us: int, scale: int = 1
) -> dict:
    """Each window as rate_limit_evaluate judges p_cost on the stored state at now_us."""
    out = {}
    for seconds, limit in WINDOWS.items():
        limit *= scale
        out[seconds] = conn.execute(
            "select e.fits, e.remaining, e.used, e.reset_at, e.retry_after_ms"
            " from (select 1) one"
            " left join pgshield.rate_limit_policy_state_windows s"
            "   on s.key = %(subject)s and s.policy = %(policy)s and s.window_seconds = %(w)s"
            " cross join lateral pgshield.rate_limit_evaluate(%(alg)s, %(lim)s, %(w)s, %(cost)s,"
            "   %(now)s, s.algorithm, s.window_start, coalesce(s.count, 0),"
            "   coalesce(s.prev_count, 0), s.tat, false) e",
            {
                "subject": SUBJECT,
                "policy": policy,
                "w": seconds,
                "alg": algorithm,
                "lim": limit,
                "cost": cost,
                "now": now_us,
            },
        ).fetchone()
    return out


@pytest.mark.parametrize("scale", [1, 1_000_000])
@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
def test_policy_checks_agree_with_the_evaluator(db: str, algorithm: str, scale: int) -> None:
    policy = f"pgshield_t_eval_{algorithm}_{scale}"
    rnd = random.Random(13)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "select public.define_rate_limit_policy(%s, %s::jsonb, p_algorithm => %s,"
            " p_default_tier => 't')",
            (policy, json.dumps({"t": {str(w): n * scale for w, n in WINDOWS.items()}}), algorithm),
        )
        now = START_US + 7_000_000
        allowed = denied = 0
        for _ in range(160):
            move = rnd.choice(["edge", "edge-1", 0, 1, 250_000, 999_999, 2_500_000])
            w = rnd.choice(list(WINDOWS)) * 1_000_000
            if move == "edge":
                now += w - now % w
            elif move == "edge-1":
                now += w - now % w - 1
            else:
                now += int(move)
            conn.execute("select pgshield.set_clock(%s)", (ts(now),))
            cost = rnd.choice([1, 1, 1, 2, 4]) * scale
            want = expected(conn, policy, algorithm, cost, now, scale)
            fits = all(v[0] for v in want.values())
            if not fits:
                # Nothing is consumed: windows that fit report their current state.
                now_state = expected(conn, policy, algorithm, 0, now, scale)
                want = {k: (v if not v[0] else now_state[k]) for k, v in want.items()}
            fn = "peek_check_rate_limit" if rnd.random() < 0.2 else "check_rate_limit"
            row = conn.execute(
                f"select allowed, windows from public.{fn}(%s, %s, null, %s)",
                (policy, cost, SUBJECT),
            ).fetchone()
            assert row is not None
            assert row[0] == fits
            got = {
                w["window_seconds"]: (
                    w["allowed"],
                    w["remaining"],
                    w["used"],
                    dt.datetime.fromisoformat(w["reset_at"]),
                    w["retry_after_ms"],
                )
                for w in row[1]
            }
            assert got == want, f"{fn} cost={cost} at +{now - START_US} us"
            allowed += fits
            denied += not fits
        assert allowed > 20 and denied > 20, (allowed, denied)


def test_usage_reads_the_state_as_the_decision_does_after_a_redefinition(
    conn: psycopg.Connection,
) -> None:
    """After a policy is redefined, usage shows what the next decision will count on."""
    policy, subject = "pgshield_t_redefined", "pgshield_t_redefined_subject"
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:10+00')")

    def define(windows: str, algorithm: str) -> None:
        conn.execute(
            "select public.define_rate_limit_policy(%s, %s::jsonb, p_algorithm => %s,"
            " p_default_tier => 't')",
            (policy, windows, algorithm),
        )

    def usage() -> dict[int, tuple[int, int, int]]:
        rows = conn.execute(
            "select (e ->> 'window_seconds')::int, (e ->> 'limit')::int, (e ->> 'used')::int,"
            " (e ->> 'remaining')::int from jsonb_array_elements(public.get_rate_limit_usage(%s))"
            " e where e ->> 'policy' = %s",
            (subject, policy),
        ).fetchall()
        view = conn.execute(
            'select window_seconds, "limit", used, remaining from pgshield.rate_limit_usage'
            " where key = %s and policy = %s",
            (subject, policy),
        ).fetchall()
        assert sorted(rows) == sorted(view)
        return {w: (lim, used, rem) for w, lim, used, rem in rows}

    def peek() -> int:
        return conn.execute(
            "select remaining from public.peek_check_rate_limit(%s, 1, null, %s)",
            (policy, subject),
        ).fetchone()[0]  # type: ignore[index]

    define('{"t": {"60": 5, "3600": 50}}', "fixed_window")
    conn.execute("select public.check_rate_limit(%s, 5, null, %s)", (policy, subject))
    assert usage() == {60: (5, 5, 0), 3600: (50, 5, 45)}
    # New limit for the minute, the hour gone: the minute's count is kept under its new limit.
    define('{"t": {"60": 8}}', "fixed_window")
    assert usage() == {60: (8, 5, 3)}
    assert peek() == 2  # what a call of cost 1 would leave: the same count
    # Another algorithm: the stored state reads as none, for the decision and for usage.
    define('{"t": {"60": 8}}', "sliding_window")
    assert usage() == {}
    assert peek() == 7

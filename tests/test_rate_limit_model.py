"""Property test: each algorithm in the database agrees with a small Python model of it.

The model is written from the documented arithmetic (sql/rate_limit.sql, the evaluator's
header), in integers and exact fractions: microseconds since the epoch, epoch-aligned windows,
GCRA with the emission interval truncated to 1e-15 microsecond. Hypothesis drives random
sequences of clock moves, increments, peeks and usage records (refunds included), often landing
exactly on window edges or exactly ``retry_after_ms`` later.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from fractions import Fraction

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
START_US = 1_893_456_000_000_000  # 2030-01-01 00:00:00 UTC, aligned on every window below
MAX_MS = 2_147_483_647


def ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def trunc_div(a: Fraction | int, b: Fraction | int) -> int:
    q = Fraction(a) / Fraction(b)
    return int(q)  # toward zero, like numeric div()


@dataclass
class Model:
    """One key under one algorithm, as the database should see it."""

    algorithm: str
    limit: int
    window: int  # seconds
    start: int | None = None  # fixed/sliding: window start (us) of `count`
    count: int = 0
    prev: int = 0
    tat: Fraction | None = None
    last: int | None = None  # token_bucket: the time of the last decision that wrote state

    @property
    def w(self) -> int:
        return self.window * 1_000_000

    @property
    def t(self) -> Fraction:
        return Fraction(self.w * 10**15 // self.limit, 10**15)

    def _current(self, now: int) -> tuple[int, int, int]:
        start = now - now % self.w
        cur = prev = 0
        if self.start == start:
            cur, prev = self.count, (self.prev if self.algorithm == "sliding_window" else 0)
        elif self.algorithm == "sliding_window" and self.start == start - self.w:
            prev = self.count
        return start, cur, prev

    def decide(self, now: int, cost: int, *, force: bool = False, commit: bool = True) -> tuple:
        """(fits, remaining, retry_after_ms, reset_at_us), updating the state when it applies.

        A call whose clock reading is older than the state (it waited for the row lock while
        later calls went first) is judged at the newest time the state was judged at: the
        start of the stored window, or the token bucket's last decision.
        """
        lim, w = self.limit, self.w
        newest = self.last if self.algorithm == "token_bucket" else self.start
        if newest is not None and newest > now:
            now = newest
        if self.algorithm == "token_bucket":
            tat0 = max(self.tat if self.tat is not None else Fraction(now), Fraction(now))
            if force:
                fits, tat = True, max(tat0 + cost * self.t, Fraction(now))
            else:
                fits = cost <= lim and tat0 + cost * self.t - now <= w
                tat = tat0 + cost * self.t if fits else tat0
            remaining = min(max(trunc_div(now + w - tat, self.t), 0), lim)
            reset = ceil_div(max(tat, Fraction(now)).numerator, max(tat, Fraction(now)).denominator)
            wait = None
            if not fits and cost <= lim:
                x = tat0 + cost * self.t - w - now
                wait = ceil_div(x.numerator, x.denominator)
            if commit and fits:
                self.tat, self.last = tat, now
        else:
            start, cur, prev = self._current(now)
            e = now - start
            if force:
                fits = True
                if cost >= 0:
                    count = cur + cost
                else:
                    refund = min(cur, -cost)
                    count, prev = cur - refund, max(prev - (-cost - refund), 0)
            else:
                if self.algorithm == "fixed_window":
                    fits = cost <= lim and cur + cost <= lim
                else:
                    fits = cost <= lim and prev * (w - e) + (cur + cost) * w <= lim * w
                count = cur + cost if fits else cur
            if self.algorithm == "fixed_window":
                prev = 0
                remaining = min(max(lim - count, 0), lim)
                reset = start + w if count > 0 else now
            else:
                remaining = min(max(trunc_div(lim * w - prev * (w - e) - count * w, w), 0), lim)
                reset = start + 2 * w if count > 0 else (start + w if prev > 0 else now)
            wait = None
            if not fits and cost <= lim:
                if self.algorithm == "fixed_window":
                    wait = start + w - now
                else:
                    a = (lim - cur - cost) * w
                    # Within this window the previous window's weight falls; otherwise wait
                    # into the next window, where the current count becomes the previous one.
                    in_this = a >= 0
                    wait = w - a // prev - e if in_this else (w - e) + w - ((lim - cost) * w) // cur
            if commit and fits:
                self.start, self.count, self.prev = start, count, prev
        if fits:
            retry = 0
        elif cost > lim:
            retry = -1
        else:
            assert wait is not None
            retry = min(ceil_div(wait, 1000), MAX_MS)
        return fits, remaining, retry, reset


def ts(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


def us_of(t: dt.datetime) -> int:
    delta = t - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


step = st.tuples(
    st.one_of(
        st.integers(0, 3_000_000),  # a few seconds
        st.integers(0, 130_000_000),  # past a window or two
        st.sampled_from(["edge", "edge-1", "retry", 0, 1]),
        # a late call: its clock reading is this much older than the latest one (it read the
        # time, then waited for the row lock while the window rolled over)
        st.tuples(st.just("late"), st.integers(1, 130_000_000)),
    ),
    st.sampled_from(["hit", "hit", "hit", "peek", "usage"]),
    st.integers(1, 6),
    st.booleans(),  # usage: refund instead of record
)


def run_steps(
    conn: psycopg.Connection, algorithm: str, limit: int, window: int, steps: list
) -> None:
    key = f"model-{uuid.uuid4().hex[:12]}"
    model = Model(algorithm, limit, window)
    now = START_US + 7_000_000
    last_retry, last_cost = 0, 0
    for move, op, cost, refund in steps:
        w = window * 1_000_000
        call_now = None
        if isinstance(move, tuple):
            call_now = max(now - move[1], START_US)
        elif move == "edge":
            now += w - now % w
        elif move == "edge-1":
            now += w - now % w - 1
        elif move == "retry":
            now += max(last_retry, 0) * 1000
        else:
            now += int(move)
        at = now if call_now is None else call_now
        conn.execute("select pgshield.set_clock(%s)", (ts(at),))
        args = (key, limit, window, cost, algorithm)
        if op == "hit":
            row = conn.execute(
                "select allowed, remaining, retry_after_ms, reset_at"
                " from public.increment_rate_limit(%s, %s, %s, %s, %s)",
                args,
            ).fetchone()
            want = model.decide(at, cost)
            if move == "retry" and last_retry > 0 and last_cost == cost:
                assert want[0], "the model says waiting retry_after_ms is enough"
        elif op == "peek":
            row = conn.execute(
                "select allowed, remaining, retry_after_ms, reset_at"
                " from public.peek_rate_limit(%s, %s, %s, %s, %s)",
                args,
            ).fetchone()
            want = model.decide(at, cost, commit=False)
        else:
            amount = -cost if refund else cost
            row = conn.execute(
                "select allowed, remaining, retry_after_ms, reset_at"
                " from public.record_rate_limit_key_usage(%s, %s, %s, %s, %s)",
                (key, limit, window, amount, algorithm),
            ).fetchone()
            model.decide(at, amount, force=True)
            want = model.decide(at, 1, commit=False)
        assert row is not None
        got = (row[0], row[1], row[2], us_of(row[3]))
        assert got == want, f"{op} cost={cost} at +{at - START_US} us: db {got} != model {want}"
        last_retry, last_cost = got[2], (cost if op != "usage" else 1)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
def test_database_agrees_with_the_model(db: str, algorithm: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:

        @settings(
            max_examples=120,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(
            limit=st.sampled_from([1, 2, 3, 5, 7, 10]),
            window=st.sampled_from([1, 7, 60]),
            steps=st.lists(step, min_size=4, max_size=30),
        )
        def check(limit: int, window: int, steps: list) -> None:
            run_steps(conn, algorithm, limit, window, steps)

        check()

"""Bursts across window boundaries on the real clock.

A frozen clock proves the arithmetic; it cannot show the race where a call reads the time, waits
for the row lock while the window rolls over, and then acts on the old window. Here 64 real
connections hit one key (or one policy subject) with the database's own clock running, the burst
released just before an epoch-aligned boundary, several trials per algorithm. Every decision is
attributed to the window it was counted in (from its ``reset_at``), and the tests assert:

- no window admits more than its limit;
- the row's final counts equal exactly what was attributed to its windows (nothing lost, nothing
  counted twice), usage records included;
- no connection ever sees a window older than one it saw before (state never moves back);
- on real time alone: the calls that certainly ran inside one window (sent after it opened,
  answered before it closed) never exceed the limit; for token_bucket, GCRA's bound holds over
  every interval.

The burst must straddle the boundary for a trial to count; a trial that does not (a machine so
slow or so fast that one window saw everything) is repeated, and too few valid trials fail.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import psycopg
import pytest

CLIENTS = 64
CALLS = 8  # per client: 512 calls per burst
LIMIT = 100
TRIALS = 3
MAX_ATTEMPTS = 6
LEAD = 0.100  # the burst starts this long before the boundary
RECORDER_EVERY = 8  # every 8th connection records usage after the fact instead of consuming

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def us(t: dt.datetime) -> int:
    d = t - EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


@dataclass(frozen=True)
class Outcome:
    client: int
    seq: int
    kind: str  # 'consume' or 'record'
    allowed: bool
    windows: dict[int, int]  # window seconds -> attributed window start (us), or tat (token)
    sent: float  # time.time() just before the call
    answered: float  # time.time() just after it


def start_of(reset_us: int, window: int, algorithm: str) -> int:
    """The window a decision was counted in, from the reset_at it reported."""
    w = window * 1_000_000
    if algorithm == "fixed_window":
        return reset_us - w
    if algorithm == "sliding_window":
        return reset_us - 2 * w
    return reset_us  # token_bucket: reset_at is the TAT (rounded up)


class Burst:
    """64 open connections that fire one burst at a time on a chosen key."""

    def __init__(self, db: str):
        self.conns = [
            psycopg.connect(db, autocommit=True, prepare_threshold=None) for _ in range(CLIENTS)
        ]

    def close(self) -> None:
        for c in self.conns:
            c.close()

    def fire(self, release_at: float, call) -> list[Outcome]:
        out: list[Outcome] = []
        lock = threading.Lock()
        errors: list[BaseException] = []
        barrier = threading.Barrier(CLIENTS, timeout=60)

        def work(i: int) -> None:
            try:
                conn = self.conns[i]
                barrier.wait()
                delay = release_at - time.time()
                if delay > 0:
                    time.sleep(delay)  # waiting for the real clock is the point of this test
                mine = []
                for seq in range(CALLS):
                    kind = "record" if i % RECORDER_EVERY == 0 else "consume"
                    sent = time.time()
                    allowed, windows = call(conn, kind)
                    mine.append(Outcome(i, seq, kind, allowed, windows, sent, time.time()))
                with lock:
                    out.extend(mine)
            except BaseException as exc:  # re-raised below
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a burst did not finish"
        assert not errors, errors[:3]
        assert len(out) == CLIENTS * CALLS
        return out


@pytest.fixture
def burst(db: str):
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("select pgshield.reset_clock()")  # the real clock, whatever the template did
    b = Burst(db)
    try:
        yield b
    finally:
        b.close()


def next_boundary(period: int) -> float:
    """The next epoch-aligned multiple of ``period`` seconds at least 0.3 s away."""
    now = time.time()
    b = (int(now // period) + 1) * period
    if b - now < 0.3:
        b += period
    return float(b)


def counted(outcomes: list[Outcome], window: int) -> Counter:
    """Window start -> cost counted in it (allowed consumptions and every record)."""
    c: Counter = Counter()
    for o in outcomes:
        if o.allowed or o.kind == "record":
            c[o.windows[window]] += 1
    return c


def check_windows(outcomes: list[Outcome], windows: dict[int, int], boundary: float) -> bool:
    """Assert the per-window properties; return whether the burst straddled the boundary."""
    b_us = int(boundary * 1_000_000)
    for window, limit in windows.items():
        consumed: Counter = Counter(
            o.windows[window] for o in outcomes if o.allowed and o.kind == "consume"
        )
        assert all(n <= limit for n in consumed.values()), (window, sorted(consumed.items()))
        # Real time alone: calls that surely ran inside one window.
        w = window * 1_000_000
        for start in consumed:
            inside = sum(
                1
                for o in outcomes
                if o.allowed
                and o.kind == "consume"
                and o.sent * 1e6 >= start
                and o.answered * 1e6 < start + w
            )
            assert inside <= limit, (window, start, inside)
    # The burst crossed the boundary: calls answered before it and calls sent after it.
    return any(o.answered * 1e6 < b_us for o in outcomes) and any(
        o.sent * 1e6 >= b_us for o in outcomes
    )


def check_token_bucket(outcomes: list[Outcome], window: int, limit: int) -> None:
    """GCRA on real time: in any interval [a, b] at most limit + (b - a) / T calls fit."""
    t_us = window * 1_000_000 / limit
    admitted = [(o.sent, o.answered) for o in outcomes if o.allowed and o.kind == "consume"]
    for a in sorted({s for s, _ in admitted}):
        # the calls sent at or after a, in the order they were answered: the r-th of them
        # surely ran inside [a, its answer]
        answers = sorted(r for s, r in admitted if s >= a)
        for rank, b in enumerate(answers, start=1):
            assert rank <= limit + int((b - a) * 1e6 / t_us) + 1, (window, a, b, rank)


def check_never_back(outcomes: list[Outcome], windows: list[int]) -> None:
    """Each connection sees its windows (or token bucket TATs) only move forward."""
    by_client: dict[int, list[Outcome]] = {}
    for o in outcomes:
        by_client.setdefault(o.client, []).append(o)
    for seen in by_client.values():
        seen.sort(key=lambda o: o.seq)
        for window in windows:
            marks = [o.windows[window] for o in seen if o.allowed or o.kind == "record"]
            assert marks == sorted(marks), (window, marks)


def direct_call(key: str, algorithm: str, window: int):
    def call(conn: psycopg.Connection, kind: str) -> tuple[bool, dict[int, int]]:
        if kind == "record":
            row = conn.execute(
                "select allowed, reset_at from public.record_rate_limit_key_usage"
                "(%s, %s, %s, 1, %s)",
                (key, LIMIT, window, algorithm),
            ).fetchone()
        else:
            row = conn.execute(
                "select allowed, reset_at from public.increment_rate_limit(%s, %s, %s, 1, %s)",
                (key, LIMIT, window, algorithm),
            ).fetchone()
        assert row is not None
        return bool(row[0]), {window: start_of(us(row[1]), window, algorithm)}

    return call


def policy_call(policy: str, subject: str, algorithm: str):
    def call(conn: psycopg.Connection, kind: str) -> tuple[bool, dict[int, int]]:
        if kind == "record":
            row = conn.execute(
                "select allowed, windows from public.record_rate_limit_usage(%s, %s, 1)",
                (policy, subject),
            ).fetchone()
        else:
            row = conn.execute(
                "select allowed, windows from public.check_rate_limit(%s, 1, null, %s)",
                (policy, subject),
            ).fetchone()
        assert row is not None
        windows = {
            w["window_seconds"]: start_of(
                us(dt.datetime.fromisoformat(w["reset_at"])), w["window_seconds"], algorithm
            )
            for w in row[1]
        }
        return bool(row[0]), windows

    return call


def final_state(db: str, key: str, policy: str) -> dict[int, tuple[int, int, int]]:
    """Each stored window's (start, count, previous count): direct keys' rows (policy ''), or
    the windows of the subject's one row under the policy."""
    source = (
        "pgshield.rate_limit_state s where s.key = %s and s.policy = %s"
        if policy == ""
        else "pgshield.rate_limit_policy_state_windows s where s.key = %s and s.policy = %s"
    )
    with psycopg.connect(db) as c:
        rows = c.execute(
            "select s.window_seconds, (extract(epoch from s.window_start) * 1000000)::bigint,"
            f" s.count, s.prev_count from {source}",
            (key, policy),
        ).fetchall()
    assert rows, f"no state stored for {key!r} under {policy!r}"
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def check_final_counts(
    outcomes: list[Outcome], state: dict[int, tuple[int, int, int]], algorithm: str
) -> None:
    """The stored counts are exactly what was attributed to the stored windows."""
    for window, (start, count, prev) in state.items():
        attributed = counted(outcomes, window)
        assert start == max(attributed), "the row is not in the newest window counted"
        assert count == attributed[start], (window, count, sorted(attributed.items()))
        if algorithm == "sliding_window":
            assert prev == attributed.get(start - window * 1_000_000, 0), (window, prev)


def run_trials(fire_one) -> int:
    valid = 0
    for _ in range(MAX_ATTEMPTS):
        if fire_one():
            valid += 1
        if valid == TRIALS:
            break
    return valid


ALGORITHMS = ["fixed_window", "sliding_window", "token_bucket"]


@pytest.mark.slow
@pytest.mark.realclock
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_direct_key_burst_across_a_boundary(db: str, burst: Burst, algorithm: str) -> None:
    window = 1

    def fire_one() -> bool:
        key = f"boundary-{uuid.uuid4().hex[:10]}"
        boundary = next_boundary(window)
        outcomes = burst.fire(boundary - LEAD, direct_call(key, algorithm, window))
        check_never_back(outcomes, [window])
        if algorithm == "token_bucket":
            check_token_bucket(outcomes, window, LIMIT)
            return any(o.allowed for o in outcomes)
        straddled = check_windows(outcomes, {window: LIMIT}, boundary)
        check_final_counts(outcomes, final_state(db, key, ""), algorithm)
        return straddled

    assert run_trials(fire_one) == TRIALS


@pytest.mark.slow
@pytest.mark.realclock
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_policy_burst_across_a_boundary(
    db: str, conn: psycopg.Connection, burst: Burst, algorithm: str
) -> None:
    windows = {1: LIMIT, 2: 150}
    policy = f"bnd_{algorithm}"
    conn.execute(
        "select public.define_rate_limit_policy(%s, %s::jsonb, p_algorithm => %s,"
        " p_default_tier => 't')",
        (policy, json.dumps({"t": {str(k): v for k, v in windows.items()}}), algorithm),
    )

    def fire_one() -> bool:
        subject = f"boundary-{uuid.uuid4().hex[:10]}"
        boundary = next_boundary(2)  # both windows roll over together
        outcomes = burst.fire(boundary - LEAD, policy_call(policy, subject, algorithm))
        check_never_back(outcomes, list(windows))
        if algorithm == "token_bucket":
            for window, limit in windows.items():
                check_token_bucket(outcomes, window, limit)
            return any(o.allowed for o in outcomes)
        straddled = check_windows(outcomes, windows, boundary)
        check_final_counts(outcomes, final_state(db, subject, policy), algorithm)
        return straddled

    assert run_trials(fire_one) == TRIALS


@pytest.mark.slow
@pytest.mark.realclock
def test_a_cleanup_without_retention_beside_traffic_never_lets_a_window_past_its_limit(
    db: str,
) -> None:
    """Hot keys with 1 s fixed windows on the real clock while a cleaner deletes every expired
    row at once (no retention, as cleanup_expired_rate_limits(batch) does): at each boundary it
    races the calls that read the clock just before it. A call that waited for a row the cleaner
    deleted must not start its ended window again: every allowed call is attributed to its
    window (its reset_at), none past the limit. (Before 20261204040000 four trials out of four
    had windows of 5 reach 6 or 7. A sliding window's row expires a whole window after its last
    call, too late for the real clock to race it: tests/test_rate_limit_moved_rows.py holds
    that case still.)"""
    algorithm = "fixed_window"
    keys, limit, clients, seconds = 12, 5, 12, 4.0
    allowed: Counter[tuple[str, dt.datetime]] = Counter()
    deleted = [0]
    guard = threading.Lock()
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        with psycopg.connect(db, autocommit=True) as c:
            n = 0
            while time.monotonic() < stop:
                key = f"pgshield_t_clean_{(i + n) % keys}"
                n += 1
                row = c.execute(
                    "select allowed, reset_at from public.increment_rate_limit(%s, %s, 1, 1, %s)",
                    (key, limit, algorithm),
                ).fetchone()
                assert row is not None
                if row[0]:
                    with guard:
                        allowed[key, row[1]] += 1

    def cleaner() -> None:
        with psycopg.connect(db, autocommit=True) as c:
            while time.monotonic() < stop:
                got = c.execute("select pgshield.cleanup_expired_rate_limits(50)").fetchone()
                deleted[0] += got[0] if got else 0

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=cleaner))
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    over = {w: n for w, n in allowed.items() if n > limit}
    assert not over, f"windows past the limit of {limit}: {over}"
    # The trial means something only if windows ended and rows were deleted under the traffic.
    assert len(allowed) >= keys * 2 and deleted[0] >= 1, (len(allowed), deleted[0])


WAIT_CALL = "select allowed, reset_at from public.increment_rate_limit(%s, 5, 1)"


RECORD_CALL = "select allowed, reset_at from public.record_rate_limit_key_usage(%s, 5, 1, 3)"


def call_into(
    conn: psycopg.Connection, key: str, sent: list, result: list, call: str = WAIT_CALL
) -> None:
    sent.append(time.time())
    result.append(conn.execute(call, (key,)).fetchone())


def wait_across_boundary(db: str, key: str, waiting: str = WAIT_CALL) -> tuple | None:
    """One trial: a call on key (1 s fixed windows, limit 5) sent shortly before a boundary
    while another connection holds the row, released just after it. Returns (the holder's two
    answers, the waiting call's answer, the row after, the boundary), or None when the waiting
    call was not sent in the old window and still waiting when it ended."""
    boundary = next_boundary(1)
    time.sleep(max(boundary - time.time() - 0.45, 0))
    sent: list = []
    result: list = []
    with (
        psycopg.connect(db, autocommit=True) as holder,
        psycopg.connect(db, autocommit=True) as waiter,
    ):
        first = holder.execute(WAIT_CALL, (key,)).fetchone()
        holder.execute("begin")
        held = holder.execute(WAIT_CALL, (key,)).fetchone()
        t = threading.Thread(target=call_into, args=(waiter, key, sent, result, waiting))
        t.start()
        blocked = False
        while time.time() < boundary - 0.05 and not blocked:
            time.sleep(0.01)
            blocked = holder.execute(
                "select wait_event_type = 'Lock' from pg_stat_activity where pid = %s",
                (waiter.info.backend_pid,),
            ).fetchone() == (True,)
        time.sleep(max(boundary - time.time() + 0.1, 0))
        holder.execute("commit")
        t.join(10)
        state = holder.execute(
            "select window_start, count from pgshield.rate_limit_state"
            " where key = %s and policy = '' and window_seconds = 1",
            (key,),
        ).fetchone()
    ended = dt.datetime.fromtimestamp(boundary, dt.timezone.utc)
    if not (blocked and sent and sent[0] < boundary and first == (True, ended)):
        return None
    return first, held, result, state, ended


@pytest.mark.realclock
def test_a_call_that_waited_across_a_boundary_for_a_row_in_its_window_counts_in_the_new_window(
    db: str,
) -> None:
    """A fixed-window call whose row is in the current window is one update: when it waits for
    the row (another call holds it, in the same window) and the window ends meanwhile, it is
    judged on the clock at the time it got the row, in the new window, and never in the window
    that had ended. (The upsert alone read the clock before the wait: such a call was counted in
    the old window, as a call whose row is still in the previous window still is.)"""
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("select pgshield.reset_clock()")  # the real clock, whatever the template did
    straddled = 0
    for _ in range(MAX_ATTEMPTS):
        key = f"pgshield_t_wait_{uuid.uuid4().hex[:12]}"
        trial = wait_across_boundary(db, key)
        if trial is None:
            continue
        _first, held, result, state, ended = trial
        assert held == (True, ended), "the holder's second call is in the window that ends"
        assert result == [(True, ended + dt.timedelta(seconds=1))], (
            "the call that waited was not counted in the new window"
        )
        assert state == (ended, 1), "the new window holds the waiting call alone"
        straddled += 1
        if straddled == 2:
            break
    assert straddled == 2, f"only {straddled} trials had a call waiting across the boundary"


@pytest.mark.realclock
def test_usage_recorded_after_waiting_across_a_boundary_goes_into_the_new_window(
    db: str,
) -> None:
    """record_rate_limit_key_usage waits for the key's row like a call does: the usage is
    recorded at the time it got the row, in the new window, never in the one that ended (where
    a fixed window would lose it at once)."""
    with psycopg.connect(db, autocommit=True) as c:
        c.execute("select pgshield.reset_clock()")
    straddled = 0
    for _ in range(MAX_ATTEMPTS):
        key = f"pgshield_t_record_{uuid.uuid4().hex[:12]}"
        trial = wait_across_boundary(db, key, RECORD_CALL)
        if trial is None:
            continue
        _first, held, result, state, ended = trial
        assert held == (True, ended)
        assert result == [(True, ended + dt.timedelta(seconds=1))], "recorded in the ended window"
        assert state == (ended, 3), "the new window holds the recorded usage alone"
        straddled += 1
        if straddled == 2:
            break
    assert straddled == 2, f"only {straddled} trials had a record waiting across the boundary"

"""Circuit breakers under many real connections, on a moved clock and on the real one.

Every connection is its own backend; threads start together at a barrier. Counts are exact:
one OPEN event for 64 failing workers, exactly the configured trial permits for 64 acquirers,
stale generations change nothing, a killed permit holder loses its lease after the lease time.
The real-clock trials fire a burst across the end of an open period and attribute every answer
to its generation. Every test with ``conns`` runs twice: through the SQL functions, and through
the Python client's prepared read of the healthy path (as service_role).
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import psycopg
import pytest

from pgshield import Shield
from support import run_threads, wait_for_lock_wait

CLIENTS = 64
SHIFT = 4294967296  # a permit is generation * 2**32 + lease number


def gen_of(permit: int) -> int:
    return permit // SHIFT


Caller = psycopg.Connection | Shield


@pytest.fixture(params=["functions", "prepared read"])
def conns(db: str, request: pytest.FixtureRequest) -> Iterator[list[Caller]]:
    """CLIENTS callers, each its own backend: the SQL functions called directly as the owner,
    or the Python client's prepared read as service_role (tests/test_breaker_prepared.py)."""
    prepared = request.param == "prepared read"
    cs = [
        psycopg.connect(db, autocommit=True, prepare_threshold=5 if prepared else None)
        for _ in range(CLIENTS)
    ]
    try:
        for c in cs if prepared else []:
            c.execute("set role service_role")
        yield [Shield(c) for c in cs] if prepared else cs  # type: ignore[misc]
        # Each prepared caller did take the read (it is prepared on that backend).
        reads = [
            c.execute(
                "select count(*) from pg_prepared_statements"
                " where statement like '%%from pgshield.breakers b where b.name = $_::text'"
            ).fetchone()
            for c in cs
        ]
        assert all(r is not None and r[0] >= 1 for r in reads) == prepared
    finally:
        for c in cs:
            c.close()


def acquire(conn: Caller, name: str) -> tuple[bool, str, int, int | None, int]:
    if isinstance(conn, Shield):
        d = conn.breakers.acquire(name)
        return (d.allowed, d.state, d.generation, d.permit, d.retry_after_ms)
    row = conn.execute(
        "select allowed, state, generation, permit, retry_after_ms from public.acquire_breaker(%s)",
        (name,),
    ).fetchone()
    assert row is not None
    return row  # type: ignore[return-value]


def release(conn: Caller, name: str, permit: int, outcome: str) -> tuple:
    if isinstance(conn, Shield):
        r = conn.breakers.release(name, permit, outcome)  # type: ignore[arg-type]
        return (r.state, r.generation, r.changed, r.counted)
    row = conn.execute(
        "select state, generation, changed, counted from public.release_breaker(%s, %s, %s)",
        (name, permit, outcome),
    ).fetchone()
    assert row is not None
    return row


def events(conn: psycopg.Connection, name: str) -> list[tuple[str, str, int]]:
    return conn.execute(
        "select from_state, to_state, generation from pgshield.breaker_events"
        " where name = %s order by id",
        (name,),
    ).fetchall()


def test_64_failing_workers_open_it_once(conn: psycopg.Connection, conns: list) -> None:
    conn.execute("select pgshield.reset_clock()")
    conn.execute("select public.configure_breaker('storm', 5, p_open_ms => 600000)")
    lock = threading.Lock()
    reached: list[int] = []
    results: list[tuple] = []

    def work(i: int, barrier: threading.Barrier) -> None:
        c = conns[i]
        barrier.wait()
        for _ in range(3):
            allowed, _state, _gen, permit, _ = acquire(c, "storm")
            if not allowed:
                continue
            with lock:
                reached.append(gen_of(permit))  # the call reaches the failing service
            r = release(c, "storm", permit, "failure")
            with lock:
                results.append(r)

    run_threads(CLIENTS, work)
    assert events(conn, "storm") == [("closed", "open", 2)]
    assert sum(1 for r in results if r[2]) == 1, "exactly one release tripped it"
    assert sum(1 for r in results if r[3]) == 5, "five failures counted, the rest were stale"
    assert set(reached) == {1}, "no call got through after the trip"
    # every worker may have had one call in flight; only 4 finished before the trip
    assert len(reached) <= CLIENTS + 5 - 1
    assert acquire(conn, "storm")[:2] == (False, "open")


def test_half_open_admits_exactly_the_permits(conn: psycopg.Connection, conns: list) -> None:
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:00+00')")
    conn.execute(
        "select public.configure_breaker('trials', 1, p_open_ms => 1000, p_half_open_permits => 3)"
    )
    permit = acquire(conn, "trials")[3]
    assert release(conn, "trials", permit, "failure")[0] == "open"
    conn.execute("select pgshield.advance_clock('1 second')")
    answers: list[tuple] = []
    lock = threading.Lock()

    def work(i: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        a = acquire(conns[i], "trials")
        with lock:
            answers.append(a)

    run_threads(CLIENTS, work)
    allowed = [a for a in answers if a[0]]
    assert len(allowed) == 3
    assert {(a[1], a[2]) for a in answers} == {("half_open", 3)}
    assert sorted(a[3] % SHIFT for a in allowed) == [1, 2, 3]
    assert events(conn, "trials") == [("closed", "open", 2), ("open", "half_open", 3)]


def test_stale_generations_change_nothing(conn: psycopg.Connection, conns: list) -> None:
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:00+00')")
    conn.execute("select public.configure_breaker('stale', 1, p_open_ms => 1000)")
    old = acquire(conn, "stale")[3]
    conn.execute("select public.reset_breaker('stale', 'new generation')")  # generation 2
    conn.execute("select public.force_breaker('stale', 'forced_open', 'and again')")  # 3
    conn.execute("select public.reset_breaker('stale', 'closed again')")  # 4
    results: list[tuple] = []
    lock = threading.Lock()

    def work(i: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        r = release(conns[i], "stale", old, "failure" if i % 2 else "success")
        with lock:
            results.append(r)

    run_threads(CLIENTS, work)
    assert {r for r in results} == {("closed", 4, False, False)}
    row = conn.execute(
        "select state, generation, consecutive_failures from pgshield.breakers where name = 'stale'"
    ).fetchone()
    assert row == ("closed", 4, 0)
    assert len(events(conn, "stale")) == 3


def test_the_healthy_path_writes_nothing(conn: psycopg.Connection) -> None:
    """Closed, no rate rule: acquire and a success take no transaction id (no write, no row
    lock); with a rate rule only the success writes, into the caller's own bucket row."""
    conn.execute("select public.configure_breaker('healthy', 5)")
    conn.execute(
        "select public.configure_breaker('counted', null, p_failure_rate => 0.5, p_min_calls => 5)"
    )
    xid = "select pg_current_xact_id_if_assigned()::text"
    for name, writes in (("healthy", None), ("counted", "release")):
        with conn.transaction():
            permit = acquire(conn, name)[3]
            assert conn.execute(xid).fetchone() == (None,), f"{name}: acquire wrote"
            assert permit is not None and release(conn, name, permit, "success")[3] is True
            wrote = conn.execute(xid).fetchone() != (None,)
        assert wrote == (writes == "release"), name
    # A success after failures forgets the streak: that one writes.
    release(conn, "healthy", acquire(conn, "healthy")[3], "failure")
    with conn.transaction():
        release(conn, "healthy", acquire(conn, "healthy")[3], "success")
        assert conn.execute(xid).fetchone() != (None,)
    assert conn.execute(
        "select consecutive_failures from pgshield.breakers where name = 'healthy'"
    ).fetchone() == (0,)


def test_rate_rule_is_exact_under_64_connections(conn: psycopg.Connection, conns: list) -> None:
    """64 backends count 640 successes, then fail together: each backend writes only its own
    bucket row, and the breaker trips exactly at 640 of 1280 (50 %), once."""
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:00+00')")
    conn.execute(
        "select public.configure_breaker('ratestorm', null, p_failure_rate => 0.5,"
        " p_min_calls => 100, p_open_ms => 600000)"
    )
    results: list[tuple] = []
    lock = threading.Lock()

    def succeed(i: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        for _ in range(10):
            assert release(conns[i], "ratestorm", acquire(conns[i], "ratestorm")[3], "success")[3]

    def fail(i: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        for _ in range(11):
            allowed, _state, _gen, permit, _ = acquire(conns[i], "ratestorm")
            if allowed:
                r = release(conns[i], "ratestorm", permit, "failure")
                with lock:
                    results.append(r)

    run_threads(CLIENTS, succeed)
    status = "select calls, failures, failure_rate from pgshield.breaker_status where name = %s"
    assert conn.execute(status, ("ratestorm",)).fetchone() == (640, 0, 0)
    rows = conn.execute(
        "select count(*), count(distinct shard) from pgshield.breaker_buckets"
        " where name = 'ratestorm'"
    ).fetchone()
    assert rows == (CLIENTS, CLIENTS), "one bucket row per backend, none shared"
    run_threads(CLIENTS, fail)
    assert sum(1 for r in results if r[3]) == 640, "failures counted until the trip, then stale"
    assert sum(1 for r in results if r[2]) == 1
    assert events(conn, "ratestorm") == [("closed", "open", 2)]
    reason = conn.execute(
        "select last_reason from pgshield.breaker_status where name = 'ratestorm'"
    ).fetchone()
    assert reason == ("failure rate 50.0% (640 of 1280 calls in 60 s)",)


def test_a_rate_rule_added_later_starts_its_window_afresh(conn: psycopg.Connection) -> None:
    """Without a rate rule successes are not counted; adding one must not judge the failures
    counted alone as the whole window."""
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:00+00')")
    conn.execute("select public.configure_breaker('later', 100)")
    for outcome in ["success"] * 20 + ["failure"] * 3:
        release(conn, "later", acquire(conn, "later")[3], outcome)
    status = "select calls, failures, failure_rate from pgshield.breaker_status where name = %s"
    assert conn.execute(status, ("later",)).fetchone() == (None, 3, None)
    conn.execute(
        "select public.configure_breaker('later', 100, p_failure_rate => 0.5, p_min_calls => 4)"
    )
    assert conn.execute(status, ("later",)).fetchone() == (0, 0, None)
    assert release(conn, "later", acquire(conn, "later")[3], "failure")[:3] == ("closed", 1, False)
    conn.execute("select public.configure_breaker('later', 100, p_failure_rate => 0.6)")
    assert conn.execute(status, ("later",)).fetchone()[:2] == (1, 1), "still rated: kept"


def test_open_period_exact_to_the_millisecond(conn: psycopg.Connection) -> None:
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:00.123456+00')")
    conn.execute("select public.configure_breaker('exact', 1, p_open_ms => 2000)")
    release(conn, "exact", acquire(conn, "exact")[3], "failure")
    conn.execute("select pgshield.advance_clock('1999 milliseconds')")
    assert acquire(conn, "exact")[:2] == (False, "open")
    assert acquire(conn, "exact")[4] == 1
    conn.execute("select pgshield.advance_clock('1 millisecond')")
    assert acquire(conn, "exact")[:2] == (True, "half_open")


def test_a_killed_permit_holder_loses_its_lease(db: str, conn: psycopg.Connection) -> None:
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:00+00')")
    conn.execute(
        "select public.configure_breaker('killed', 1, p_open_ms => 1000, p_lease_ms => 5000)"
    )
    release(conn, "killed", acquire(conn, "killed")[3], "failure")
    conn.execute("select pgshield.advance_clock('1 second')")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, psycopg\n"
            "c = psycopg.connect(sys.argv[1], autocommit=True)\n"
            "p = c.execute(\"select permit from public.acquire_breaker('killed')\").fetchone()[0]\n"
            "print(p, flush=True)\n"
            "time.sleep(120)\n",
            db,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        permit = int(holder.stdout.readline())
    finally:
        holder.kill()  # SIGKILL: it never reports
        holder.wait(10)
    assert gen_of(permit) == 3
    assert acquire(conn, "killed")[0] is False, "its lease still holds the only slot"
    conn.execute("select pgshield.advance_clock('4999 milliseconds')")
    assert acquire(conn, "killed")[0] is False
    conn.execute("select pgshield.advance_clock('1 millisecond')")
    allowed, state, gen, fresh, _ = acquire(conn, "killed")
    assert (allowed, state, gen) == (True, "half_open", 3), "trials resume after the lease time"
    assert release(conn, "killed", permit, "failure")[2:] == (False, False)
    assert release(conn, "killed", fresh, "success")[3] is True


def burst(conns: list, start: float, end: float) -> list[tuple[int, float, float, tuple]]:
    """Every connection calls acquire('edge') from ``start`` until ``end`` (real clock).

    Each connection's last call is sent at or after ``end``, so however late a loaded machine
    starts the threads, every connection asks at least once after the boundary.
    """
    seen: list[tuple[int, float, float, tuple]] = []
    lock = threading.Lock()

    def work(i: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        delay = start - time.time()
        if delay > 0:
            time.sleep(delay)  # waiting for the real clock is the point of this test
        mine = []
        while True:
            sent = time.time()
            a = acquire(conns[i], "edge")
            mine.append((i, sent, time.time(), a))
            if sent >= end:
                break
        with lock:
            seen.extend(mine)

    run_threads(CLIENTS, work)
    return seen


@pytest.mark.slow
def test_real_clock_bursts_across_the_end_of_the_open_period(
    conn: psycopg.Connection, conns: list
) -> None:
    """Trials on the real clock: 64 connections hammer acquire across open_until.

    Every answer is attributed to its generation: before open_until only refusals of the open
    generation; after it exactly the configured permits, all of one half-open generation; no
    connection ever sees a generation older than one it saw before.
    """
    conn.execute("select pgshield.reset_clock()")
    conn.execute(
        "select public.configure_breaker('edge', 1, p_open_ms => 500, p_half_open_permits => 2,"
        " p_lease_ms => 60000, p_success_threshold => 2)"
    )
    valid = 0
    for _trial in range(6):
        conn.execute("select public.reset_breaker('edge', 'next trial')")
        permit = acquire(conn, "edge")[3]
        state, open_gen, changed, _ = release(conn, "edge", permit, "failure")
        assert (state, changed) == ("open", True)
        until = conn.execute(
            "select extract(epoch from open_until)::float8 from pgshield.breakers"
            " where name = 'edge'"
        ).fetchone()[0]  # type: ignore[index]
        seen = burst(conns, until - 0.060, until + 0.060)
        allowed = [s for s in seen if s[3][0]]
        assert len(allowed) == 2, len(allowed)
        assert {s[3][:3] for s in allowed} == {(True, "half_open", open_gen + 1)}
        for _i, _sent, answered, a in seen:
            if answered < until:
                assert a[:3] == (False, "open", open_gen), a
            assert a[2] in (open_gen, open_gen + 1)
        by_client: dict[int, list[int]] = {}
        for i, _sent, _answered, a in sorted(seen, key=lambda s: s[1]):
            by_client.setdefault(i, []).append(a[2])
        assert all(g == sorted(g) for g in by_client.values()), "a generation moved back"
        assert Counter(e[1] for e in events(conn, "edge"))["half_open"] == _trial + 1
        # the two trials report: one success each closes it at the second
        outcomes = [release(conn, "edge", s[3][3], "success") for s in allowed]
        assert [o[2] for o in outcomes] == [False, True]
        assert outcomes[1][:2] == ("closed", open_gen + 2)
        if any(s[2] < until for s in seen) and any(s[1] >= until for s in seen):
            valid += 1
    assert valid >= 3, f"only {valid} bursts straddled the end of the open period"


def test_clock_is_the_databases(conn: psycopg.Connection) -> None:
    """The breaker's open_until comes from pgshield.now(), the one clock of every instance."""
    conn.execute("select pgshield.set_clock('2040-02-02 00:00:00+00')")
    conn.execute("select public.configure_breaker('clock', 1, p_open_ms => 1500)")
    release(conn, "clock", acquire(conn, "clock")[3], "failure")
    until = conn.execute("select open_until from pgshield.breakers where name = 'clock'").fetchone()
    assert until == (dt.datetime(2040, 2, 2, 0, 0, 1, 500000, tzinfo=dt.timezone.utc),)


def test_a_creation_that_waited_for_the_settings_decides_by_them(
    db: str, conn: psycopg.Connection
) -> None:
    """An operator turns auto-create off while a first call for a new name waits for the
    settings: that call is refused by the settings it then holds, and creates nothing."""
    operator = psycopg.connect(db)
    operator.execute("select pgshield.set_breaker_settings(p_auto_create => false)")
    outcome: dict[str, str] = {}
    with psycopg.connect(db, autocommit=True) as caller:

        def first_call() -> None:
            try:
                caller.execute("select public.acquire_breaker('pgshield-t-late')")
                outcome["call"] = "created"
            except psycopg.Error as exc:
                outcome["call"] = exc.sqlstate or ""

        worker = threading.Thread(target=first_call)
        worker.start()
        wait_for_lock_wait(conn, caller.info.backend_pid)
        operator.commit()
        operator.close()
        worker.join(10)
    assert outcome == {"call": "PT404"}
    assert conn.execute(
        "select count(*) from pgshield.breakers where name = 'pgshield-t-late'"
    ).fetchone() == (0,)

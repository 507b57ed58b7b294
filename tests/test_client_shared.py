"""One client built from a DSN, shared by many threads or asyncio tasks (a threaded web server).

Such a client holds one connection, and a call with a timeout sends its statements as one
pipeline or transaction: two calls at once on that connection used to interleave, get each
other's rows or break the connection, and a breaker asked that way failed open (its protected
function ran while the breaker was forced open). Calls on a held connection now run one at a
time; every answer must come from the database, exactly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections import Counter

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from pgshield import AsyncBreaker, AsyncShield, Breaker, BreakerOpen, RateLimiter, Shield
from pgshield.client import Op, scalar
from pgshield.errors import Unavailable
from support import run_threads

THREADS = 16
CALLS = 40


def _forced_open(conn: psycopg.Connection, name: str) -> None:
    conn.execute("select public.configure_breaker(%s)", (name,))
    conn.execute("select public.force_breaker(%s, 'forced_open', 'provider down')", (name,))


def test_a_breaker_from_a_dsn_shared_by_threads_asks_the_database_for_every_call(
    db: str, conn: psycopg.Connection
) -> None:
    _forced_open(conn, "pgshield-t-shared")
    breaker = Breaker(db, "pgshield-t-shared", retries=0)
    answers: Counter[str] = Counter()
    lock = threading.Lock()

    def protected() -> int:
        with lock:
            answers["ran"] += 1
        return 1

    def work(i: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        for _ in range(CALLS):
            try:
                breaker.run(protected)
            except BreakerOpen as exc:
                key = f"refused by the {exc.decision.source}"
            except Exception as exc:  # counted: the test then fails
                key = f"{type(exc).__name__}: {exc}"
            else:
                key = "allowed"
            with lock:
                answers[key] += 1

    try:
        run_threads(THREADS, work)
    finally:
        breaker.client.close()
    assert answers == Counter({"refused by the database": THREADS * CALLS})


def test_an_async_breaker_from_a_dsn_shared_by_tasks_asks_the_database_for_every_call(
    db: str, conn: psycopg.Connection
) -> None:
    _forced_open(conn, "pgshield-t-shared-async")
    answers: Counter[str] = Counter()

    async def protected() -> int:
        answers["ran"] += 1
        return 1

    async def scenario() -> None:
        breaker = AsyncBreaker(db, "pgshield-t-shared-async", retries=0)

        async def work() -> None:
            for _ in range(CALLS):
                try:
                    await breaker.run(protected)
                except BreakerOpen as exc:
                    answers[f"refused by the {exc.decision.source}"] += 1
                except Exception as exc:  # counted: the test then fails
                    answers[f"{type(exc).__name__}: {exc}"] += 1
                else:
                    answers["allowed"] += 1

        try:
            await asyncio.gather(*(work() for _ in range(THREADS)))
        finally:
            await breaker.client.close()

    asyncio.run(scenario())
    assert answers == Counter({"refused by the database": THREADS * CALLS})


def test_a_shield_with_a_timeout_shared_by_threads_counts_every_call_once(
    db: str, conn: psycopg.Connection
) -> None:
    shield = Shield(db, timeout=1.0)
    failures: list[str] = []

    def work(i: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        for _ in range(CALLS):
            try:
                result = shield.rate_limits.hit("pgshield-t-shared", limit=1_000_000, window=3600)
                assert result.allowed
            except Exception as exc:  # collected: the test then fails
                failures.append(f"{type(exc).__name__}: {exc}")

    try:
        run_threads(THREADS, work)
    finally:
        shield.close()
    assert failures == []
    assert conn.execute(
        "select count from pgshield.rate_limit_state where key = 'pgshield-t-shared'"
    ).fetchone() == (THREADS * CALLS,)


def test_an_async_shield_with_a_timeout_shared_by_tasks_counts_every_call_once(
    db: str, conn: psycopg.Connection
) -> None:
    failures: list[str] = []

    async def scenario() -> None:
        shield = AsyncShield(db, timeout=1.0)

        async def work() -> None:
            for _ in range(CALLS):
                try:
                    result = await shield.rate_limits.hit(
                        "pgshield-t-shared-async", limit=1_000_000, window=3600
                    )
                    assert result.allowed
                except Exception as exc:  # collected: the test then fails
                    failures.append(f"{type(exc).__name__}: {exc}")

        try:
            await asyncio.gather(*(work() for _ in range(THREADS)))
        finally:
            await shield.close()

    asyncio.run(scenario())
    assert failures == []
    assert conn.execute(
        "select count from pgshield.rate_limit_state where key = 'pgshield-t-shared-async'"
    ).fetchone() == (THREADS * CALLS,)


def test_a_limiter_never_sends_the_calls_its_callers_stopped_waiting_for(
    db: str, conn: psycopg.Connection
) -> None:
    """While the key's row is locked, every hit times out and gets the fallback; the calls
    queued behind the one connection meanwhile must not run (and consume) once it is free."""
    conn.execute("select public.increment_rate_limit('pgshield-t-backlog', 1000000, 3600)")
    holder = psycopg.connect(db)
    holder.execute(
        "update pgshield.rate_limit_state set count = count where key = 'pgshield-t-backlog'"
    )
    limiter = RateLimiter(db, limit=1_000_000, window=3600, on_error="closed", timeout=0.2)
    answers: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def work(i: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        while not stop.is_set():
            decision = limiter.hit("pgshield-t-backlog")
            with lock:
                answers["degraded" if decision.degraded else "answered"] += 1

    threads = [threading.Thread(target=work, args=(i, barrier)) for i, barrier in _barrier(8)]
    for t in threads:
        t.start()
    threading.Event().wait(1.5)
    stop.set()
    for t in threads:
        t.join(10)
    # The call in flight has hit its statement timeout by now (0.2 s): nothing is sent.
    threading.Event().wait(1.0)
    holder.rollback()
    holder.close()
    threading.Event().wait(1.0)  # what is still queued runs now, if it runs at all
    try:
        count = conn.execute(
            "select count from pgshield.rate_limit_state where key = 'pgshield-t-backlog'"
        ).fetchone()
        assert answers["answered"] == 0 and answers["degraded"] > 8
        assert count == (1,), "calls answered with the fallback consumed after all"
    finally:
        limiter.close()


def _barrier(n: int) -> list[tuple[int, threading.Barrier]]:
    barrier = threading.Barrier(n)
    return [(i, barrier) for i in range(n)]


def test_a_pool_that_cannot_hand_out_a_connection_in_time_is_unavailable(
    db: str, conn: psycopg.Connection
) -> None:
    with ConnectionPool(db, min_size=1, max_size=1, open=True) as pool:
        shield = Shield(pool, timeout=0.3)
        limiter = RateLimiter(shield, limit=5, window=60, on_error="closed", timeout=1.0)
        with pool.connection():  # the only connection, held
            with pytest.raises(Unavailable, match="no connection from the pool"):
                shield.rate_limits.hit("pgshield-t-pool", limit=5, window=60)
            decision = limiter.hit("pgshield-t-pool")
            assert decision.degraded and not decision.allowed
        assert shield.rate_limits.hit("pgshield-t-pool", limit=5, window=60).allowed


def test_calls_from_a_pool_without_autocommit_keep_their_timeout_isolation_and_retries(
    db: str, conn: psycopg.Connection
) -> None:
    conn.execute(
        "create sequence public.pgshield_t_flaky;"
        " create function public.pgshield_t_flaky() returns int language plpgsql as $$"
        " begin"
        "   if nextval('public.pgshield_t_flaky') = 1 then"
        "     raise exception using errcode = '40001', message = 'simulated';"
        "   end if;"
        "   return 1;"
        " end $$"
    )
    settings = Op(
        "select current_setting('transaction_isolation') || ' ' ||"
        " current_setting('statement_timeout') as s",
        {},
        scalar,
    )
    with ConnectionPool(db, min_size=1, max_size=1, open=True) as pool:  # not autocommit
        shield = Shield(pool, timeout=1.0, isolation="repeatable read")
        assert shield.call(settings) == "repeatable read 1s"
        assert shield.call(Op("select public.pgshield_t_flaky() as v", {}, scalar)) == 1
        with pool.connection() as c:
            assert c.autocommit is False, "the pool's connection is handed back as it was"


def test_the_deadline_still_holds_for_a_retry_the_server_stops_answering(
    db: str, conn: psycopg.Connection
) -> None:
    """A call retried after 40001 is still bounded by timeout + grace: the first failure used
    to turn the sync deadline off, and a server that then stopped answering hung the call."""
    conn.execute(
        "create sequence public.pgshield_t_stall;"
        " create function public.pgshield_t_stall() returns int language plpgsql as $$"
        " begin"
        "   if nextval('public.pgshield_t_stall') = 1 then"
        "     raise exception using errcode = '40001', message = 'simulated';"
        "   end if;"
        "   perform pg_sleep(0.5);"
        "   return 1;"
        " end $$"
    )
    shield = Shield(db, timeout=1.0, retries=3)
    try:
        assert shield.call(Op("select 1 as v", {}, scalar)) == 1
        pid = shield._conn.info.backend_pid  # type: ignore[union-attr]

        def stop_the_retry() -> None:
            with psycopg.connect(db, autocommit=True) as watcher:
                while watcher.execute(
                    "select last_value < 2 from public.pgshield_t_stall"
                ).fetchone() == (True,):
                    threading.Event().wait(0.005)
            os.kill(pid, signal.SIGSTOP)  # the retry is running: the server stops answering
            threading.Event().wait(3.0)
            os.kill(pid, signal.SIGCONT)

        stopper = threading.Thread(target=stop_the_retry)
        stopper.start()
        with pytest.raises(Unavailable) as caught:
            shield.call(Op("select public.pgshield_t_stall() as v", {}, scalar))
        stopper.join(10)
        assert "no answer from the database within 1.5 s" in str(caught.value)
    finally:
        shield.close()


def test_a_call_that_cannot_have_the_connection_within_its_timeout_is_unavailable(
    db: str, conn: psycopg.Connection
) -> None:
    """Calls on one held connection take turns, but the wait for a turn counts against each
    call's timeout: eight threads behind a call stuck on a row lock do not wait eight times."""
    conn.execute("select public.increment_rate_limit('pgshield-t-turns', 1000000, 3600)")
    holder = psycopg.connect(db)
    holder.execute(
        "update pgshield.rate_limit_state set count = count where key = 'pgshield-t-turns'"
    )
    shield = Shield(db, timeout=0.5)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def work(i: int, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            shield.rate_limits.hit("pgshield-t-turns", limit=1_000_000, window=3600)
            key = "answered"
        except Unavailable as exc:
            key = "busy" if "stayed busy" in str(exc) else f"unavailable: {exc.sqlstate}"
        with lock:
            outcomes[key] += 1

    try:
        run_threads(8, work)
    finally:
        holder.rollback()
        holder.close()
        shield.close()
    assert outcomes["answered"] == 0 and sum(outcomes.values()) == 8, outcomes
    assert outcomes["busy"] >= 4, outcomes  # the others' turns would each have taken 0.5 s


def test_a_retry_gets_only_what_is_left_of_the_timeout(db: str, conn: psycopg.Connection) -> None:
    """A live but slow server answers a retry with 57014 within the call's timeout, on a
    connection that stays usable; the retry used to get the whole timeout again, and the
    deadline then severed the connection mid-retry ("no answer")."""
    conn.execute(
        "create sequence public.pgshield_t_slow;"
        " create function public.pgshield_t_slow() returns int language plpgsql as $$"
        " begin"
        "   perform pg_sleep(0.8);"
        "   if nextval('public.pgshield_t_slow') = 1 then"
        "     raise exception using errcode = '40001', message = 'simulated';"
        "   end if;"
        "   return 1;"
        " end $$"
    )
    shield = Shield(db, timeout=1.0, retries=3)
    try:
        with pytest.raises(Unavailable) as caught:
            shield.call(Op("select public.pgshield_t_slow() as v", {}, scalar))
        # the server's own statement timeout (a live connection), not the deadline's severing
        assert caught.value.sqlstate == "57014", caught.value
        assert "statement timeout" in str(caught.value)
    finally:
        shield.close()


def test_an_interrupt_as_the_turn_is_got_gives_the_turn_back(db: str) -> None:
    """KeyboardInterrupt can land just as acquire() returns (CPython checks for signals then):
    the turn must not stay taken, or every other thread's call would be Unavailable."""
    shield = Shield(db, timeout=1.0)
    real = shield._busy

    class InterruptedAsItGetsTheTurn:
        def _is_owned(self) -> bool:
            return real._is_owned()  # type: ignore[attr-defined]

        def acquire(self, timeout: float = -1) -> bool:
            real.acquire(timeout=timeout)
            raise KeyboardInterrupt

        def release(self) -> None:
            real.release()

    shield._busy = InterruptedAsItGetsTheTurn()  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            shield.call(Op("select 1 as v", {}, scalar))
        shield._busy = real
        got: list[int] = []
        other = threading.Thread(
            target=lambda: got.append(shield.call(Op("select 1 as v", {}, scalar)))
        )
        other.start()
        other.join(10)
        assert got == [1], "the turn was left taken"
    finally:
        shield._busy = real
        shield.close()

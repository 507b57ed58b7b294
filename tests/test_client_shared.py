"""One client built from a DSN, shared by many threads or asyncio tasks (a threaded web server).

Such a client holds one connection, and a call with a timeout sends its statements as one
pipeline or transaction: two calls at once on that connection used to interleave, get each
other's rows or break the connection, and a breaker asked that way failed open (its protected
function ran while the breaker was forced open). Calls on a held connection now run one at a
time; every answer must come from the database, exactly.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import psycopg

from pgshield import AsyncBreaker, AsyncShield, Breaker, BreakerOpen, Shield
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

"""When the database cannot be reached: ``on_db_error="local"`` and its LocalBreaker.

The LocalBreaker's rules on a moved clock (its own, no sleeps); then Breaker and AsyncBreaker
against a real server that is stopped and started again, a closed port, and a port that
accepts and drops every connection (to count the attempts ``db_retry_after`` saves).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgshield import AsyncShield, Shield
from pgshield.breaker import AsyncBreaker, Breaker, BreakerOpen, LocalBreaker, LocalRules
from pgshield.embedded import Cluster
from pgshield.provision import prepare_cluster
from test_breaker import closed_port

SHIFT = 4294967296


class Clock:
    """A clock the test moves (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def call(b: LocalBreaker, outcome: str, ms: int | None = None) -> bool:
    d = b.acquire()
    assert d.allowed and d.permit is not None and d.source == "local"
    return b.release(d.permit, outcome, ms)


# --------------------------------------------------------- the rules ----
def test_consecutive_failures_open_half_open_close() -> None:
    clock = Clock()
    b = LocalBreaker(LocalRules(failure_threshold=3, open_ms=2000, success_threshold=2),
                     name="p", clock=clock)  # fmt: skip
    call(b, "failure")
    call(b, "failure")
    call(b, "success")  # a success resets the streak
    assert [call(b, "failure") for _ in range(3)] == [True, True, True]
    d = b.acquire()
    assert (d.allowed, d.state, d.generation, d.retry_after_ms) == (False, "open", 2, 2000)
    assert (d.degraded, d.source, b.reason) == (True, "local", "3 consecutive failures")
    clock.now += 1.999
    assert b.acquire().retry_after_ms == 1
    clock.now += 0.001
    trial = b.acquire()
    assert (trial.allowed, trial.state, trial.generation, trial.permit) == (
        True, "half_open", 3, 3 * SHIFT + 1,
    )  # fmt: skip
    assert b.acquire().allowed is False, "one trial permit"
    assert b.release(trial.permit or 0, "success") is True
    assert b.release(call_permit(b), "success") is True
    assert (b.state, b.generation) == ("closed", 4)


def call_permit(b: LocalBreaker) -> int:
    d = b.acquire()
    assert d.permit is not None
    return d.permit


def test_stale_generations_leases_and_backoff() -> None:
    clock = Clock()
    rules = LocalRules(failure_threshold=1, open_ms=1000, backoff_factor=2, max_open_ms=3000,
                       half_open_permits=2, lease_ms=500)  # fmt: skip
    b = LocalBreaker(rules, clock=clock)
    old = call_permit(b)
    assert b.release(call_permit(b), "failure") is True  # open, generation 2, 1 s
    assert b.release(old, "failure") is False, "a late failure changes nothing"
    assert b.acquire().retry_after_ms == 1000
    clock.now += 1
    first, second = b.acquire(), b.acquire()
    assert (first.allowed, second.allowed, b.acquire().allowed) == (True, True, False)
    clock.now += 0.5  # both leases expire
    assert b.release(first.permit or 0, "success") is False, "an expired lease is not a trial"
    third = b.acquire()
    assert third.allowed and third.permit == 3 * SHIFT + 3
    assert b.release(third.permit or 0, "failure") is True
    assert b.acquire().retry_after_ms == 2000, "the second open lasts twice as long"
    clock.now += 2
    assert b.release(call_permit(b), "failure") is True
    assert b.acquire().retry_after_ms == 3000, "capped at max_open_ms"
    assert b.release(second.permit or 0, "failure") is False


def test_rate_rules_over_the_window_with_min_calls() -> None:
    clock = Clock()
    rules = LocalRules(failure_threshold=None, failure_rate=0.5, min_calls=10, window_seconds=10)
    b = LocalBreaker(rules, clock=clock)
    for _ in range(4):
        call(b, "failure")
    for _ in range(5):
        call(b, "success")
    assert b.state == "closed", "below min_calls"
    assert b.release(call_permit(b), "ignored") is False
    call(b, "failure")
    assert (b.state, b.reason) == ("open", "failure rate (5 of 10 calls in 10 s)")
    clock.now += 30
    b.acquire()
    b = LocalBreaker(rules, clock=clock)
    for _ in range(9):
        call(b, "success")
    clock.now += 10  # those nine leave the window
    call(b, "failure")
    assert b.state == "closed", "1 of 1 is below min_calls"
    slow = LocalBreaker(LocalRules(failure_threshold=None, slow_call_ms=100, slow_call_rate=0.5,
                                   min_calls=2), clock=clock)  # fmt: skip
    call(slow, "success", 99)
    call(slow, "success", 100)
    assert slow.state == "open", "a call of exactly slow_call_ms is slow: 1 of 2"


def test_rules_are_checked() -> None:
    with pytest.raises(ValueError):
        LocalRules(failure_threshold=None)
    with pytest.raises(ValueError):
        LocalRules(slow_call_ms=10)
    with pytest.raises(ValueError):
        LocalRules(half_open_permits=0)
    with pytest.raises(ValueError):
        Breaker("postgresql://x", "x", local=LocalRules())  # local= needs on_db_error="local"
    with pytest.raises(ValueError):
        LocalBreaker().release(SHIFT, "maybe")


# ------------------------------------------- a real, unreachable database ----
def test_closed_port_is_answered_by_the_local_breaker() -> None:
    rules = LocalRules(failure_threshold=2, open_ms=60000)
    breaker = Breaker(closed_port(), "down", on_db_error="local", local=rules, retries=0,
                      timeout=0.5, fallback=lambda: "fallback")  # fmt: skip

    def boom() -> None:
        raise ConnectionError("provider down")

    first = breaker.run(lambda: "called")
    assert (first.value, first.source, first.state, first.degraded) == (
        "called", "local", "closed", True,
    )  # fmt: skip
    assert first.error
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.run(boom)
    refused = breaker.run(lambda: "called")
    assert (refused.value, refused.fallback, refused.state, refused.source) == (
        "fallback", True, "open", "local",
    )  # fmt: skip
    with pytest.raises(BreakerOpen) as caught, breaker.guard():
        pass
    assert caught.value.decision is not None and caught.value.decision.source == "local"
    breaker.close()


@pytest.fixture
def cluster() -> Iterator[tuple[Cluster, str]]:
    base = Path(tempfile.mkdtemp(prefix="pgshield-breaker-local-"))
    c = Cluster(base, fast=True)
    try:
        yield c, prepare_cluster(c.start())
    finally:
        c.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_a_stopped_server_hands_over_to_the_local_breaker_and_back(
    cluster: tuple[Cluster, str],
) -> None:
    """Sync and async breakers sharing one LocalBreaker, while a real server goes away."""
    c, dsn = cluster
    with Shield(dsn) as admin:
        rules = LocalRules.of(admin.breakers.configure("llm", failure_threshold=2, open_ms=60000))
    assert (rules.failure_threshold, rules.open_ms, rules.success_threshold) == (2, 60000, 2)
    sync = Breaker(dsn, "llm", on_db_error="local", local=rules, retries=0, timeout=1,
                   db_retry_after=0, fallback=lambda: "fallback")  # fmt: skip
    asyn = AsyncBreaker(dsn, "llm", on_db_error="local", local=sync.spec.local, retries=0,
                        timeout=1, db_retry_after=0)  # fmt: skip

    async def ok() -> str:
        return "async answer"

    async def fails() -> None:
        raise ConnectionError("provider down")

    def boom() -> None:
        raise ConnectionError("provider down")

    async def scenario() -> None:
        up = sync.run(lambda: "answer")
        assert (up.value, up.source, up.degraded) == ("answer", "database", False)
        assert (await asyn.run(ok)).source == "database"
        c.stop()
        down = sync.run(lambda: "answer")
        assert (down.value, down.source, down.state, down.degraded) == (
            "answer", "local", "closed", True,
        )  # fmt: skip
        assert (await asyn.run(ok)).source == "local"
        with pytest.raises(ConnectionError):
            sync.run(boom)
        with pytest.raises(ConnectionError):
            await asyn.run(fails)  # the same local breaker: its second consecutive failure
        refused = sync.run(lambda: "answer")
        assert (refused.value, refused.state, refused.source) == ("fallback", "open", "local")
        with pytest.raises(BreakerOpen):
            await asyn.run(ok)
        c.start()
        back = sync.run(lambda: "answer")
        assert (back.value, back.source, back.state) == ("answer", "database", "closed")
        assert (await asyn.run(ok)).source == "database"
        await asyn.close()

    asyncio.run(scenario())
    sync.close()
    with Shield(dsn) as admin:
        [status] = admin.breakers.status("llm")
    # The failures the local breaker saw never reached the database's breaker.
    assert (status.state, status.generation, status.failures) == ("closed", 1, 0)


class DroppingServer:
    """A TCP port that accepts every connection and closes it at once; counts them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def test_db_retry_after_skips_the_database_while_it_is_down() -> None:
    server = DroppingServer()
    dsn = f"postgresql://postgres@127.0.0.1:{server.port}/postgres?sslmode=disable"
    try:
        patient = Breaker(dsn, "x", on_db_error="local", db_retry_after=3600, timeout=1)
        assert patient.run(lambda: 1).source == "local"
        tried = server.accepted
        assert tried >= 1
        for _ in range(5):
            assert patient.run(lambda: 1).source == "local"
        assert server.accepted == tried, "no new attempt within db_retry_after"
        eager = Breaker(dsn, "x", on_db_error="closed", db_retry_after=0, timeout=1, retries=0)
        before = server.accepted
        for _ in range(3):
            with pytest.raises(BreakerOpen) as caught:
                eager.run(lambda: 1)
            assert caught.value.decision is not None
            assert caught.value.decision.source == "policy"
        assert server.accepted - before == 3 * tried, "every call tries again"
        patient.close()
        eager.close()
    finally:
        server.close()


def test_async_closed_port_local() -> None:
    async def go() -> None:
        b = AsyncBreaker(closed_port(), "x", on_db_error="local", timeout=0.5)

        async def ok() -> int:
            return 7

        r = await b.run(ok)
        assert (r.value, r.source, r.allowed) == (7, "local", True)
        async with b.guard() as block:
            assert block.decision is not None and block.decision.source == "local"
        await b.close()

    asyncio.run(go())


def test_async_shield_round_trip_still_from_the_database(db: str) -> None:
    async def go() -> None:
        async with AsyncShield(db) as shield:
            b = AsyncBreaker(shield, "fine", on_db_error="local")

            async def ok() -> int:
                return 1

            assert (await b.run(ok)).source == "database"

    asyncio.run(go())

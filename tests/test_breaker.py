"""The breaker client: the namespace, Breaker / AsyncBreaker (decorator, context manager,
fallback, retries, local open cache, an unreachable database), NOTIFY, and the CLI."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from pgshield import AsyncShield, InvalidInput, NotAllowed, NotFound, Shield
from pgshield.breaker import AsyncBreaker, Breaker, BreakerOpen, is_transient
from pgshield.cli import main
from support import act_as


@pytest.fixture
def shield(conn: psycopg.Connection) -> Shield:
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:00+00')")
    return Shield(conn)


class HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


# ------------------------------------------------------------ the namespace ----
def test_namespace_round_trip(shield: Shield) -> None:
    b = shield.breakers
    config = b.configure("openai", failure_threshold=2, open_ms=1000, backoff_factor=2)
    assert (config.state, config.generation, config.max_open_ms) == ("closed", 1, 1000)
    d = b.acquire("openai")
    assert d and d.state == "closed" and d.permit == 1 << 32
    assert b.release("openai", d.permit, "failure", 12).counted
    r = b.release("openai", d.permit, "failure")
    assert (r.state, r.generation, r.changed) == ("open", 2, True)
    refused = b.acquire("openai")
    assert (refused.allowed, refused.permit, refused.retry_after_ms) == (False, None, 1000)
    [status] = b.status("openai")
    # No rate rule: successes are not counted (calls and failure_rate unknown), failures are.
    assert (status.state, status.calls, status.failures, status.failure_rate) == (
        "open", None, 2, None,
    )  # fmt: skip
    assert [e.to_state for e in b.events("openai")] == ["open"]
    assert b.force_open("openai", "incident").state == "forced_open"
    assert b.disable("openai", "drill").state == "disabled"
    assert b.reset("openai", "ok").state == "closed"
    assert b.settings().auto_create is True
    assert b.settings(auto_create=False).auto_create is False
    with pytest.raises(NotFound):
        b.acquire("unknown")
    assert b.settings(auto_create=True, max_breakers=500).max_breakers == 500
    assert b.cleanup() >= 0
    assert b.drop("openai") is True and b.status("openai") == []


def test_errors_map_to_the_funnel(shield: Shield, conn: psycopg.Connection) -> None:
    with pytest.raises(InvalidInput):
        shield.breakers.acquire("Bad Name")
    with pytest.raises(InvalidInput):
        shield.breakers.configure("x", failure_threshold=None)
    with pytest.raises(ValueError):
        shield.breakers.release("x", 1 << 32, "maybe")  # type: ignore[arg-type]
    with act_as(conn, "authenticated"), pytest.raises(NotAllowed):
        shield.breakers.acquire("x", conn=conn)


def test_every_state_change_is_notified_once(db: str, shield: Shield) -> None:
    with psycopg.connect(db, autocommit=True) as listener:
        listener.execute("listen pgshield_breaker")
        shield.breakers.configure("notify", failure_threshold=1)
        permit = shield.breakers.acquire("notify").permit
        assert permit is not None
        shield.breakers.release("notify", permit, "failure")
        shield.breakers.release("notify", permit, "failure")  # stale: no second event
        shield.breakers.reset("notify", "done")
        got = [json.loads(n.payload) for n in listener.notifies(timeout=1, stop_after=3)]
    assert [(g["from"], g["to"], g["generation"]) for g in got] == [
        ("closed", "open", 2), ("open", "closed", 3),
    ]  # fmt: skip
    assert got[1]["reason"] == "done"


def test_async_namespace(db: str) -> None:
    asyncio.run(_async_namespace(db))


async def _async_namespace(db: str) -> None:
    async with AsyncShield(db) as shield:
        await shield.breakers.configure("async", failure_threshold=1)
        d = await shield.breakers.acquire("async")
        assert d.permit is not None
        r = await shield.breakers.release("async", d.permit, "failure")
        assert r.state == "open"


# -------------------------------------------------------------- Breaker ----
def test_breaker_decorator_fallback_and_local_cache(shield: Shield) -> None:
    shield.breakers.configure("deco", failure_threshold=2, open_ms=60000)
    calls: list[int] = []

    breaker = Breaker(shield, "deco", retries=0, fallback=lambda n: f"fallback {n}")

    @breaker
    def provider(n: int) -> str:
        calls.append(n)
        raise ConnectionError("down")

    for n in range(2):
        with pytest.raises(ConnectionError):
            provider(n)
    assert provider(2) == "fallback 2" and calls == [0, 1]
    result = breaker.run(provider, 3)
    assert (result.fallback, result.state, result.cached, result.attempts) == (
        True, "open", True, 0,
    )  # fmt: skip
    # the cache answers without a round trip: even a reset in the database is not seen yet
    shield.breakers.reset("deco", "cache test")
    assert breaker.acquire().cached is True


def test_breaker_retries_transient_errors_but_never_auth(shield: Shield) -> None:
    shield.breakers.configure("retry", failure_threshold=10)
    breaker = Breaker(shield, "retry", backoff_base=0.0)
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise HTTPError(503)
        return "ok"

    result = breaker.run(flaky)
    assert (result.value, result.attempts, result.state) == ("ok", 3, "closed")

    def auth() -> None:
        attempts.append(1)
        raise HTTPError(401)

    attempts.clear()
    with pytest.raises(HTTPError):
        breaker.run(auth)
    assert len(attempts) == 1
    assert [is_transient(e) for e in (HTTPError(429), TimeoutError(), HTTPError(403))] == [
        True, True, False,
    ]  # fmt: skip
    assert Breaker(shield, "retry").spec.retries == 3
    assert 0 <= Breaker(shield, "retry").spec.backoff(5) <= 15.0


def test_guard_block_counts_outcomes_and_ignores(shield: Shield) -> None:
    # A rate rule that cannot trip here, so that successes are counted too.
    shield.breakers.configure("block", failure_threshold=2, failure_rate=1.0, min_calls=100)
    breaker = Breaker(shield, "block", ignore_on=(KeyError,))
    with breaker.guard() as call:
        assert call.decision is not None and call.decision.state == "closed"
    for exc in (KeyError("not counted"), ValueError("counted")):
        with pytest.raises(type(exc)), breaker.guard():
            raise exc
    with breaker.guard() as call:
        call.ignore()
    [status] = shield.breakers.status("block")
    assert (status.calls, status.failures, status.consecutive_failures) == (2, 1, 1)
    with pytest.raises(ValueError), breaker.guard():
        raise ValueError("trips")
    with pytest.raises(BreakerOpen) as refused, breaker.guard():
        pass
    assert refused.value.decision is not None and refused.value.decision.state == "open"


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def test_unreachable_database_fails_open_or_closed() -> None:
    dsn = closed_port()
    open_ = Breaker(dsn, "down", on_db_error="open", timeout=0.5)
    result = open_.run(lambda: "called")
    assert (result.value, result.degraded, result.allowed) == ("called", True, True)
    closed = Breaker(dsn, "down", on_db_error="closed", timeout=0.5, fallback=lambda: "fb")
    result = closed.run(lambda: "called")
    assert (result.value, result.degraded, result.fallback) == ("fb", True, True)
    open_.close()
    closed.close()


def test_async_breaker(db: str) -> None:
    asyncio.run(_async_breaker(db))


async def _async_breaker(db: str) -> None:
    async with AsyncShield(db) as shield:
        await shield.breakers.configure("abreaker", failure_threshold=1, open_ms=60000)

        async def fallback() -> str:
            return "fb"

        breaker = AsyncBreaker(shield, "abreaker", retries=0, fallback=fallback)

        @breaker
        async def provider() -> str:
            raise TimeoutError

        with pytest.raises(TimeoutError):
            await provider()
        assert await provider() == "fb"
        await shield.breakers.reset("abreaker", "again")
        fresh = AsyncBreaker(shield, "abreaker")
        async with fresh.guard() as call:
            assert call.decision is not None and call.decision.allowed
        with pytest.raises(ValueError):
            async with fresh.guard():
                raise ValueError
        with pytest.raises(BreakerOpen):
            async with fresh.guard():
                pass
        degraded = AsyncBreaker(closed_port(), "x", timeout=0.5, on_db_error="closed")
        with pytest.raises(BreakerOpen):
            await degraded.run(asyncio.sleep, 0)
        await degraded.close()


def test_breakers_are_twins() -> None:
    def public(cls: type) -> dict[str, Any]:
        return {n: getattr(cls, n) for n in dir(cls) if not n.startswith("_")}

    sync, asyn = public(Breaker), public(AsyncBreaker)
    assert set(sync) == set(asyn)
    for name in set(sync) - {"guard"}:
        if callable(sync[name]):
            assert inspect.iscoroutinefunction(asyn[name]), name
            assert inspect.getdoc(sync[name]) == inspect.getdoc(asyn[name]), name


# ------------------------------------------------------------------ CLI ----
def cli(db: str, *args: str) -> Any:
    return CliRunner().invoke(main, ["breaker", *args, "--dsn", db])


def test_cli(db: str, conn: psycopg.Connection) -> None:
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:00+00')")
    r = cli(db, "configure", "cli", "--failure-threshold", "1", "--open-ms", "5000", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)[0]["open_ms"] == 5000
    assert cli(db, "open", "cli", "--reason", "incident").output.startswith("cli: forced_open")
    assert "disabled" in cli(db, "close", "cli", "--reason", "drill").output
    assert "closed" in cli(db, "reset", "cli", "--reason", "over").output
    rows = json.loads(cli(db, "list", "--json").output)
    assert [r["state"] for r in rows if r["name"] == "cli"] == ["closed"]
    shown = cli(db, "show", "cli")
    assert shown.exit_code == 0 and "forced_open" in shown.output
    data = json.loads(cli(db, "events", "cli", "--json").output)
    assert [e["to_state"] for e in data] == ["closed", "disabled", "forced_open"]
    assert json.loads(cli(db, "show", "cli", "--json").output)["status"]["generation"] == 4
    bad = cli(db, "open", "cli", "--reason", " ")
    assert bad.exit_code == 1 and bad.output.startswith("Error: ")
    assert cli(db, "show", "nope").exit_code == 1
    assert cli(db, "open", "cli").exit_code == 2  # --reason is required


def test_a_failure_streak_with_the_failure_rule_off_stops_at_the_integer_bound(
    conn: psycopg.Connection,
) -> None:
    conn.execute(
        "select public.configure_breaker('pgshield-t-slow-only', p_failure_threshold => null,"
        " p_slow_call_ms => 1000, p_slow_call_rate => 0.5)"
    )
    # Stands for 2^31 - 2 fast failures in a row, which this rule set never trips on.
    conn.execute(
        "update pgshield.breakers set consecutive_failures = 2147483646"
        " where name = 'pgshield-t-slow-only'"
    )
    for _ in range(3):
        permit = conn.execute(
            "select permit from public.acquire_breaker('pgshield-t-slow-only')"
        ).fetchone()
        assert permit is not None
        row = conn.execute(
            "select counted, state from public.release_breaker('pgshield-t-slow-only', %s,"
            " 'failure', 5)",
            (permit[0],),
        ).fetchone()
        assert row == (True, "closed")
    assert conn.execute(
        "select consecutive_failures from pgshield.breakers where name = 'pgshield-t-slow-only'"
    ).fetchone() == (2147483647,)

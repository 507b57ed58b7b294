"""The rate limiting client: decisions, headers, policies, roles, asyncio and failure policies."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from pgshield import (
    AsyncRateLimiter,
    AsyncShield,
    Decision,
    InvalidInput,
    NotAllowed,
    RateLimited,
    RateLimiter,
    Shield,
    WindowState,
)
from support import act_as

UTC = dt.timezone.utc
T0 = dt.datetime(2030, 1, 1, 0, 0, 10, tzinfo=UTC)
ALICE = uuid.UUID("5a0e0a52-0000-4000-8000-00000000a11c")


def at(conn: psycopg.Connection, when: dt.datetime) -> None:
    """Freeze the database clock (committed: every connection sees it)."""
    conn.execute("select pgshield.set_clock(%s)", (when,))


@pytest.fixture
def shield(conn: psycopg.Connection) -> Iterator[Shield]:
    at(conn, T0)
    with Shield(conn) as s:
        yield s


# ---------------------------------------------------------------- decisions --
def test_direct_key_decisions(shield: Shield) -> None:
    first = shield.rate_limits.hit("k", limit=2, window=60)
    assert first == Decision(
        allowed=True,
        limit=2,
        remaining=1,
        reset_at=dt.datetime(2030, 1, 1, 0, 1, tzinfo=UTC),
        retry_after_ms=0,
        key="k",
        algorithm="fixed_window",
        window_seconds=60,
    )
    assert shield.rate_limits.hit("k", limit=2, window=dt.timedelta(minutes=1)).remaining == 0
    denied = shield.rate_limits.hit("k", limit=2, window=60)
    assert not denied and denied.retry_after_ms == 50_000 and denied.retry_after == 50
    assert shield.rate_limits.hit("k", limit=2, window=60, cost=3).retry_after_ms == -1
    assert shield.rate_limits.peek("k", limit=2, window=60).allowed is False


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
def test_every_algorithm_admits_exactly_the_limit(shield: Shield, algorithm: str) -> None:
    results = [
        shield.rate_limits.hit(f"a:{algorithm}", limit=5, window=60, algorithm=algorithm)  # type: ignore[arg-type]
        for _ in range(7)
    ]
    assert [d.allowed for d in results] == [True] * 5 + [False] * 2
    assert [d.remaining for d in results] == [4, 3, 2, 1, 0, 0, 0]
    assert all(d.algorithm == algorithm for d in results)


def test_bad_arguments(shield: Shield) -> None:
    with pytest.raises(ValueError, match="window"):
        shield.rate_limits.hit("k", limit=1, window=0.5)
    with pytest.raises(ValueError, match="algorithm"):
        shield.rate_limits.hit("k", limit=1, window=1, algorithm="leaky")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="p_key") as err:
        shield.rate_limits.hit("", limit=1, window=1)
    assert err.value.sqlstate == "22023"
    with pytest.raises(InvalidInput, match="p_limit"):
        shield.rate_limits.hit("k", limit=0, window=1)
    with pytest.raises(InvalidInput, match="unknown policy"):
        shield.rate_limits.check("nope", subject="s")


def test_usage_reset_and_storage(shield: Shield, conn: psycopg.Connection) -> None:
    after = shield.rate_limits.record("u", 12, limit=10, window=60)
    assert not after.allowed and after.retry_after_ms == 50_000
    assert shield.rate_limits.record("u", -5, limit=10, window=60).remaining == 2
    assert shield.rate_limits.reset("u") == 1
    assert shield.rate_limits.reset("u", window=60) == 0
    assert shield.rate_limits.storage() == "unlogged"
    assert shield.rate_limits.storage("logged") == "logged"
    assert shield.rate_limits.hit("u", limit=1, window=60).allowed
    assert shield.rate_limits.storage("unlogged") == "unlogged"


def test_caller_transaction_rolls_back_consumption(db: str, conn: psycopg.Connection) -> None:
    at(conn, T0)
    shield = Shield(db)
    with psycopg.connect(db) as tx:
        shield.rate_limits.hit("tx", limit=1, window=60, conn=tx)
        tx.rollback()
    assert shield.rate_limits.hit("tx", limit=1, window=60).allowed
    shield.close()


# ----------------------------------------------------------------- policies --
def test_policy_decisions(shield: Shield) -> None:
    policy = shield.rate_limits.define_policy(
        "t-api",
        {"free": {"minute": 3, "hour": 5}, "pro": {60: 10, 3600: 100}},
        algorithm="fixed_window",
        endpoint_costs={"/chat": 2.5},
    )
    assert policy.tiers["free"] == (("minute", 60, 3), ("hour", 3600, 5))
    assert policy.endpoint_costs == {"/chat": 2.5}
    assert {p.name for p in shield.rate_limits.policies()} >= {"api", "ai_tokens", "t-api"}

    d = shield.rate_limits.check("t-api", subject="alice", cost=3)
    assert (d.allowed, d.limit, d.remaining, d.tier, d.violated) == (True, 3, 0, "free", ())
    assert d.windows[1] == WindowState(
        name="hour",
        window_seconds=3600,
        limit=5,
        remaining=2,
        used=3,
        reset_at=dt.datetime(2030, 1, 1, 1, 0, tzinfo=UTC),
        retry_after_ms=0,
        allowed=True,
    )
    denied = shield.rate_limits.check("t-api", subject="alice")
    assert denied.violated == ("minute",) and denied.retry_after_ms == 50_000
    assert shield.rate_limits.peek_check("t-api", subject="alice").allowed is False
    assert shield.rate_limits.check("t-api", subject="bob", endpoint="/chat").cost == 3

    assert shield.rate_limits.set_tier("alice", "pro") == "pro"
    assert shield.rate_limits.check("t-api", subject="alice").tier == "pro"
    assert shield.rate_limits.set_tier("alice", None) is None

    usage = {u.name: u.used for u in shield.rate_limits.usage("alice", "t-api")}
    assert usage == {"minute": 4, "hour": 4}
    assert shield.rate_limits.record_usage("t-api", "alice", 10).allowed is False
    assert shield.rate_limits.reset_subject("alice", "t-api") == 2
    counters = {c.policy: (c.allowed, c.denied) for c in shield.rate_limits.counters()}
    assert counters["t-api"] == (3, 1)
    assert shield.rate_limits.drop_policy("t-api") is True


def test_a_policy_counts_its_tiers_and_one_tier_decides_every_subject(
    shield: Shield, conn: psycopg.Connection
) -> None:
    """A policy with one tier is decided without the subject's tier (rate_limit_policies.tiers)."""

    def tiers() -> int:
        return conn.execute(
            "select tiers from pgshield.rate_limit_policies where name = 't-tiers'"
        ).fetchone()[0]

    shield.rate_limits.define_policy("t-tiers-pro", {"pro": {"minute": 10}}, default_tier="pro")
    shield.rate_limits.define_policy("t-tiers", {"free": {"minute": 3}}, default_tier="free")
    assert tiers() == 1
    assert shield.rate_limits.set_tier("carol", "pro") == "pro"
    d = shield.rate_limits.check("t-tiers", subject="carol")
    assert (d.tier, d.limit, d.remaining) == ("free", 3, 2)

    shield.rate_limits.define_policy(
        "t-tiers", {"free": {"minute": 3}, "pro": {"minute": 10}}, default_tier="free"
    )
    assert tiers() == 2
    d = shield.rate_limits.check("t-tiers", subject="carol")
    assert (d.tier, d.limit, d.remaining) == ("pro", 10, 8)
    assert shield.rate_limits.check("t-tiers", subject="dave").tier == "free"

    shield.rate_limits.define_policy("t-tiers", {"free": {"minute": 3}}, default_tier="free")
    assert tiers() == 1
    d = shield.rate_limits.check("t-tiers", subject="carol")
    assert (d.tier, d.limit) == ("free", 3)
    # Every policy's count is its number of tiers with windows.
    wrong = conn.execute(
        "select p.name, p.tiers, count(t.tier) from pgshield.rate_limit_policies p"
        " left join pgshield.rate_limit_policy_tiers t on t.policy = p.name"
        " group by p.name, p.tiers having p.tiers <> greatest(count(t.tier), 1)"
    ).fetchall()
    assert wrong == []


def test_roles(shield: Shield, conn: psycopg.Connection) -> None:
    with act_as(conn, "authenticated", sub=ALICE), pytest.raises(NotAllowed):
        shield.rate_limits.hit("k", limit=1, window=60, conn=conn)
    with act_as(conn, "authenticated", sub=ALICE):
        assert shield.rate_limits.check("api", conn=conn).subject == str(ALICE)
    with act_as(conn, "authenticated", sub=ALICE), pytest.raises(NotAllowed):
        shield.rate_limits.check("api", subject="someone-else", conn=conn)
    with (
        act_as(conn, "anon", headers={"x-forwarded-for": "198.51.100.9"}),
        pytest.raises(NotAllowed),
    ):
        shield.rate_limits.check("api", conn=conn)
    with act_as(conn, "service_role"):
        assert shield.rate_limits.check("api", subject="key:1", conn=conn).subject == "key:1"


def test_cleanup(shield: Shield, conn: psycopg.Connection) -> None:
    shield.rate_limits.hit("c", limit=1, window=1)
    at(conn, T0 + dt.timedelta(seconds=5))
    assert shield.rate_limits.cleanup() == 1
    assert shield.rate_limits.cleanup(batch_size=10) == 0


# ------------------------------------------------------------------ headers --
def decision(**kw: object) -> Decision:
    base: dict[str, object] = {
        "allowed": True,
        "limit": 10,
        "remaining": 7,
        "reset_at": T0 + dt.timedelta(seconds=30),
        "retry_after_ms": 0,
        "window_seconds": 60,
    }
    return Decision(**{**base, **kw})  # type: ignore[arg-type]


def test_headers_of_an_allowed_decision() -> None:
    h = decision().headers(now=T0)
    assert h == {
        "RateLimit-Policy": '"default";q=10;w=60;qu="requests"',
        "RateLimit": '"default";r=7;t=30',
        "X-RateLimit-Limit": "10",
        "X-RateLimit-Remaining": "7",
        "X-RateLimit-Reset": str(int((T0 + dt.timedelta(seconds=30)).timestamp())),
    }


def test_retry_after_rounds_up_and_is_absent_when_it_cannot_help() -> None:
    assert (
        decision(allowed=False, remaining=0, retry_after_ms=1).headers(now=T0)["Retry-After"] == "1"
    )
    assert (
        decision(allowed=False, remaining=0, retry_after_ms=2001).headers(now=T0)["Retry-After"]
        == "3"
    )
    assert "Retry-After" not in decision(allowed=False, retry_after_ms=-1).headers(now=T0)
    reset = decision(reset_at=T0 + dt.timedelta(milliseconds=1500)).headers(now=T0)
    assert reset["RateLimit"].endswith(";t=2")
    assert (
        decision(reset_at=T0 - dt.timedelta(seconds=5))
        .headers(now=T0)["RateLimit"]
        .endswith(";t=0")
    )


def test_policy_headers_list_every_window(shield: Shield, conn: psycopg.Connection) -> None:
    d = shield.rate_limits.check("ai_tokens", cost=1000, subject="s")
    h = d.headers(now=T0)
    assert h["RateLimit-Policy"] == '"ai_tokens-day";q=50000;w=86400'
    assert h["RateLimit"] == f'"ai_tokens-day";r=49000;t={86400 - 10}'
    api = shield.rate_limits.check("api", subject="s").headers(now=T0)
    assert api["RateLimit-Policy"].count(";w=") == 3 and api["RateLimit"].startswith('"api-minute"')


def test_the_binding_window_is_named_when_two_windows_share_limit_and_reset() -> None:
    # 60 s and 120 s windows of limit 10 reset together; the 120 s one binds (3 left).
    reset = T0 + dt.timedelta(seconds=30)
    minute = WindowState("minute", 60, 10, 9, 1, reset, 0, True)
    two = WindowState("two-minute", 120, 10, 3, 7, reset, 0, True)
    d = decision(policy="p", limit=10, remaining=3, reset_at=reset, windows=(minute, two))
    assert d.headers(now=T0)["RateLimit"] == '"p-two-minute";r=3;t=30'


# ------------------------------------------------------------------ asyncio --
def test_async_shield(db: str, conn: psycopg.Connection) -> None:
    at(conn, T0)

    async def main() -> list[Decision]:
        async with AsyncShield(db) as s:
            a = await s.rate_limits.hit("ak", limit=1, window=60)
            b = await s.rate_limits.hit("ak", limit=1, window=60)
            c = await s.rate_limits.check("api", subject="async-user", cost=2)
            d = await s.rate_limits.peek_check("api", subject="async-user")
            assert await s.rate_limits.reset("ak") == 1
            assert (await s.rate_limits.usage("async-user"))[0].used == 2
            return [a, b, c, d]

    a, b, c, d = asyncio.run(main())
    assert (a.allowed, b.allowed, c.remaining, d.remaining) == (True, False, 8, 7)


# ----------------------------------------------------------------- limiters --
def test_rate_limiter_direct_and_policy(db: str, conn: psycopg.Connection) -> None:
    at(conn, T0)
    with RateLimiter(db, limit=2, window=60, prefix="login:") as limiter:
        assert [limiter.hit("ann").allowed for _ in range(3)] == [True, True, False]
        assert limiter.peek("ann").allowed is False
        assert limiter.hit("ann").key == "login:ann"
        assert limiter.reset("ann") == 1
        assert limiter.hit("ann").allowed
    with RateLimiter(Shield(db), policy="api") as by_policy:
        d = by_policy.hit("bo", cost=4)
        assert (d.policy, d.subject, d.remaining, d.degraded) == ("api", "bo", 6, False)
        with pytest.raises(InvalidInput):
            by_policy.hit("bo", cost=0)  # programming errors are raised, not swallowed


def test_rate_limiter_arguments() -> None:
    with pytest.raises(ValueError):
        RateLimiter("postgresql://x", limit=1)
    with pytest.raises(ValueError):
        RateLimiter("postgresql://x", policy="api", limit=1, window=1)
    with pytest.raises(ValueError):
        RateLimiter("postgresql://x", limit=1, window=1, on_error="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="endpoint"):
        RateLimiter("postgresql://x", limit=1, window=1).hit("a", endpoint="/x")


def refused_dsn() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A server that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"postgresql://postgres@127.0.0.1:{server.getsockname()[1]}/postgres"
    stop.set()
    thread.join()
    for s in accepted:
        s.close()
    server.close()


@pytest.mark.parametrize("on_error", ["open", "closed"])
def test_unreachable_database_fails_open_or_closed(on_error: str) -> None:
    with RateLimiter(refused_dsn(), limit=5, window=60, timeout=0.5, on_error=on_error) as limiter:  # type: ignore[arg-type]
        d = limiter.hit("x")
    assert d.degraded and d.error
    assert d.allowed is (on_error == "open")
    assert d.retry_after_ms == (0 if on_error == "open" else 500)


def test_a_silent_server_never_hangs_the_limiter(black_hole: str) -> None:
    limiter = RateLimiter(black_hole, limit=5, window=60, timeout=0.3)
    for _ in range(3):
        started = time.monotonic()
        d = limiter.hit("x")
        assert time.monotonic() - started < 1.0
        assert d.allowed and d.degraded
    started = time.monotonic()
    limiter.close()
    assert time.monotonic() - started < 1.0


def test_async_limiter_fails_within_its_timeout(black_hole: str, db: str) -> None:
    async def main() -> tuple[Decision, Decision, float]:
        async with AsyncRateLimiter(
            black_hole, policy="api", timeout=0.3, on_error="closed"
        ) as lim:
            started = time.monotonic()
            down = await lim.hit("s")
            elapsed = time.monotonic() - started
        async with AsyncRateLimiter(db, limit=1, window=60) as ok:
            up = await ok.hit("s")
        return down, up, elapsed

    down, up, elapsed = asyncio.run(main())
    assert elapsed < 1.0
    assert (down.allowed, down.degraded, down.policy, down.subject) == (False, True, "api", "s")
    assert up.allowed and not up.degraded


def test_raise_if_denied() -> None:
    assert decision().raise_if_denied().allowed
    with pytest.raises(RateLimited, match="retry after 1500 ms"):
        decision(allowed=False, retry_after_ms=1500, key="k").raise_if_denied()

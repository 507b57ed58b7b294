"""The client's prepared read of the breaker's healthy path (``Op.prepared`` in ops.py).

On a connection that prepares statements, acquire and release are one plain read of the
breaker's row that answers the healthy path itself and calls the function in the same
statement for anything else. These tests hold it to the functions: the same history of calls
on two twin breakers, one through the prepared read and one through the functions only, gives
the same answers, errors and stored state at every step; and they show where it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool

from pgshield import AsyncShield, Shield, ShieldError

# One history per case: ("configure", kwargs) | ("acquire",) | ("release", i, outcome, ms)
# (i: the permit of the i-th acquire, or a literal permit when given as ("permit", value)) |
# ("force", state) | ("reset",) | ("advance", ms) | ("settings", kwargs).
# fmt: off
CASES: dict[str, list[tuple[Any, ...]]] = {
    "healthy success": [
        ("acquire",), ("release", 0, "success", 5), ("release", 0, "success", None),
    ],
    "success resets a streak": [
        ("acquire",), ("acquire",), ("release", 0, "failure", 3), ("release", 1, "success", 3),
        ("acquire",), ("release", 2, "failure", None),
    ],
    "trip, open, half-open, close": [
        ("configure", {"failure_threshold": 2, "open_ms": 1000, "success_threshold": 1}),
        ("acquire",), ("acquire",), ("release", 0, "failure", 1), ("release", 1, "failure", 1),
        ("acquire",), ("advance", 999), ("acquire",), ("advance", 1), ("acquire",), ("acquire",),
        ("release", 3, "success", 1), ("release", 1, "success", 1), ("acquire",),
    ],
    "ignored and stale": [
        ("configure", {"failure_threshold": 1, "open_ms": 10}),
        ("acquire",), ("acquire",), ("release", 0, "ignored", None), ("release", 1, "failure", 1),
        ("release", 0, "success", 1), ("advance", 10), ("acquire",), ("release", 2, "ignored", 1),
        ("acquire",), ("release", 3, "success", 1),
    ],
    "disabled and forced open": [
        ("configure", {}), ("force", "disabled"), ("acquire",), ("release", 0, "failure", 1),
        ("release", 0, "success", 1), ("force", "forced_open"), ("acquire",), ("reset",),
        ("acquire",), ("release", 2, "success", 1), ("release", 0, "success", 1),
    ],
    "rate rule counts successes": [
        ("configure", {"failure_threshold": None, "failure_rate": 0.5, "min_calls": 3}),
        ("acquire",), ("release", 0, "success", 1), ("release", 0, "success", 2),
        ("release", 0, "failure", 2), ("release", 0, "failure", 2),
    ],
    "slow calls": [
        ("configure", {"slow_call_ms": 100, "slow_call_rate": 0.5, "min_calls": 2}),
        ("acquire",), ("release", 0, "success", 99), ("release", 0, "success", 100),
    ],
    "bad input": [
        ("acquire",), ("release", ("permit", None), "success", 1),
        ("release", ("permit", 7), "success", 1), ("release", 0, "success", -1),
        ("release", ("permit", 99 << 32), "success", 1), ("release", 0, "success", 1),
        ("release", ("permit", (1 << 32) + 1), "success", 1),
    ],
    "unknown names": [
        ("settings", {"auto_create": False}), ("acquire",), ("release", ("permit", 1 << 32),
        "success", 1), ("settings", {"auto_create": True}), ("acquire",),
    ],
}
# fmt: on


def _step(shield: Shield, conn: psycopg.Connection, name: str, step: tuple[Any, ...],
          permits: list[int | None]) -> Any:  # fmt: skip
    b = shield.breakers
    kind = step[0]
    if kind == "configure":
        c = b.configure(name, **step[1])
        return ("configured", c.state, c.generation)
    if kind == "acquire":
        d = b.acquire(name)
        permits.append(d.permit)
        return (d.allowed, d.state, d.generation, d.permit, d.retry_after_ms, d.name == name)
    if kind == "release":
        which = step[1]
        permit = which[1] if isinstance(which, tuple) else permits[which]
        r = b.release(name, permit, step[2], step[3])  # type: ignore[arg-type]
        return (r.state, r.generation, r.changed, r.counted, r.name == name)
    if kind == "force":
        c = b.disable(name, "test") if step[1] == "disabled" else b.force_open(name, "test")
        return ("forced", c.state, c.generation)
    if kind == "reset":
        return ("reset", b.reset(name, "test").state)
    if kind == "advance":
        conn.execute("select pgshield.advance_clock(%s * interval '1 millisecond')", (step[1],))
        return ("advanced",)
    b.settings(**step[1])
    return ("settings",)


def _stored(conn: psycopg.Connection, name: str) -> Any:
    row = conn.execute(
        "select to_jsonb(b) - 'name' - 'created_at',"
        " (select coalesce(sum(u.calls), 0) || '/' || coalesce(sum(u.failures), 0)"
        "    || '/' || coalesce(sum(u.slow), 0)"
        "    from pgshield.breaker_buckets u where u.name = b.name),"
        " (select count(*) from pgshield.breaker_leases l where l.name = b.name),"
        " (select array_agg(e.to_state order by e.id) from pgshield.breaker_events e"
        "   where e.name = b.name)"
        " from pgshield.breakers b where b.name = %s",
        (name,),
    ).fetchone()
    return row


def _run(shield: Shield, conn: psycopg.Connection, name: str, step: tuple[Any, ...],
         permits: list[int | None]) -> Any:  # fmt: skip
    try:
        return _step(shield, conn, name, step, permits)
    except ShieldError as exc:
        if step[0] == "acquire":
            permits.append(None)
        return (type(exc).__name__, getattr(exc, "sqlstate", None))


@pytest.fixture
def owner(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute("select pgshield.set_clock('2030-01-01 00:00:00+00')")
    return conn


def _service_role(dsn: str, *, prepare: bool) -> psycopg.Connection:
    c = psycopg.connect(dsn, autocommit=True, prepare_threshold=5 if prepare else None)
    c.execute("set role service_role")
    return c


@pytest.fixture
def clients(db: str) -> Iterator[tuple[psycopg.Connection, psycopg.Connection]]:
    """(prepared, functions only): service_role connections, as server code calls."""
    with _service_role(db, prepare=True) as p, _service_role(db, prepare=False) as f:
        yield p, f


def _prepared_reads(c: psycopg.Connection) -> int:
    row = c.execute(
        "select count(*) from pg_prepared_statements"
        " where statement like '%%from pgshield.breakers b where b.name = $_::text'"
    ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_prepared_read_answers_as_the_functions_do(
    case: str, owner: psycopg.Connection, clients: tuple[psycopg.Connection, psycopg.Connection]
) -> None:
    p_conn, f_conn = clients
    prepared, functions = Shield(p_conn), Shield(f_conn)
    slug = case.replace(" ", "-").replace(",", "")
    names = (f"p-{slug}", f"f-{slug}")
    permits: tuple[list[int | None], list[int | None]] = ([], [])
    for i, step in enumerate(CASES[case]):
        got = [
            _run(shield, owner, name, step, kept)
            for shield, name, kept in zip((prepared, functions), names, permits, strict=True)
        ]
        assert got[0] == got[1], f"step {i} {step}"
        assert _stored(owner, names[0]) == _stored(owner, names[1]), f"step {i} {step}"
    # The prepared client really took the prepared read; the other one never did.
    assert _prepared_reads(p_conn) >= 1
    assert _prepared_reads(f_conn) == 0


def test_healthy_path_is_one_prepared_statement_per_call(
    owner: psycopg.Connection, clients: tuple[psycopg.Connection, psycopg.Connection]
) -> None:
    p_conn, _ = clients
    shield = Shield(p_conn)
    shield.breakers.configure("hot")
    for _ in range(3):
        d = shield.breakers.acquire("hot")
        assert shield.breakers.release("hot", d.permit, "success", 1).counted  # type: ignore[arg-type]
    # Two statements, prepared at once, each run three times: one round trip per call.
    rows = p_conn.execute(
        "select generic_plans + custom_plans from pg_prepared_statements"
        " where statement like '%%from pgshield.breakers b where b.name = $_::text'"
    ).fetchall()
    assert sorted(r[0] for r in rows) == [3, 3]


@pytest.mark.parametrize("timeout", [None, 1.0])
def test_a_refused_read_falls_back_to_the_functions(
    db: str, owner: psycopg.Connection, timeout: float | None
) -> None:
    # An installation where service_role may call the functions but not read the table (the
    # grant revoked): the read fails with 42501 once, then the client keeps to the functions.
    owner.execute("revoke select on table pgshield.breakers from service_role")
    with _service_role(db, prepare=True) as c:
        shield = Shield(c, timeout=timeout)  # with a timeout, the refusal ends a pipeline
        d = shield.breakers.acquire("fallback")
        assert (d.allowed, d.state, d.permit) == (True, "closed", 1 << 32)
        assert shield._prepared_refused
        assert shield.breakers.release("fallback", d.permit, "success", 1).counted  # type: ignore[arg-type]
        # Only acquire's read was tried: prepared, then refused when it ran.
        assert _prepared_reads(c) == 1


def test_inside_a_callers_transaction_only_the_functions_run(
    clients: tuple[psycopg.Connection, psycopg.Connection], owner: psycopg.Connection
) -> None:
    p_conn, _ = clients
    shield = Shield(p_conn)
    with p_conn.transaction():
        d = shield.breakers.acquire("in-tx", conn=p_conn)
        shield.breakers.release("in-tx", d.permit, "success", None, conn=p_conn)  # type: ignore[arg-type]
    assert _prepared_reads(p_conn) == 0
    assert not shield._prepared_refused


def test_own_connections_prepare_only_when_asked(db: str, owner: psycopg.Connection) -> None:
    owner.execute("select public.configure_breaker('own')")
    with Shield(db) as plain, Shield(db, prepared_statements=True) as fast:
        for shield in (plain, fast):
            d = shield.breakers.acquire("own")
            assert shield.breakers.release("own", d.permit, "success", 1).counted  # type: ignore[arg-type]
        assert plain._conn is not None and fast._conn is not None
        assert _prepared_reads(plain._conn) == 0
        assert _prepared_reads(fast._conn) == 2


def test_the_async_client_takes_the_same_read(db: str, owner: psycopg.Connection) -> None:
    async def main() -> tuple[list[Any], int]:
        c = await psycopg.AsyncConnection.connect(db, autocommit=True)
        async with c:
            await c.execute("set role service_role")
            shield = AsyncShield(c)
            d = await shield.breakers.acquire("async")
            r = await shield.breakers.release("async", d.permit, "success", 1)  # type: ignore[arg-type]
            f = await shield.breakers.release("async", d.permit, "failure", 1)  # type: ignore[arg-type]
            cur = await c.execute(
                "select count(*) from pg_prepared_statements"
                " where statement like '%%from pgshield.breakers b where b.name = $_::text'"
            )
            row = await cur.fetchone()
            got = [(d.allowed, d.permit), (r.counted, r.changed), (f.counted, f.state)]
            return got, int(row[0]) if row else 0

    got, prepared = asyncio.run(main())
    assert got == [(True, 1 << 32), (True, False), (True, "closed")]
    assert prepared == 2
    failures = owner.execute(
        "select consecutive_failures from pgshield.breakers where name = 'async'"
    ).fetchone()
    assert failures == (1,)


def test_a_planted_to_jsonb_cannot_answer_for_the_function(
    db: str, owner: psycopg.Connection
) -> None:
    # An exact-type to_jsonb in a schema on the caller's search_path would win over the
    # polymorphic built-in if the read did not qualify it.
    owner.execute(
        "create function public.to_jsonb(public.breaker_decision) returns jsonb language sql"
        """ as $$ select '{"allowed": true, "state": "hijacked", "generation": 1,"""
        """ "permit": 1, "retry_after_ms": 0, "name": "x"}'::jsonb $$"""
    )
    owner.execute("select public.configure_breaker('planted')")
    owner.execute("select public.force_breaker('planted', 'forced_open', 'test')")
    with _service_role(db, prepare=True) as c:
        d = Shield(c).breakers.acquire("planted")
        assert (d.allowed, d.state, d.permit, d.retry_after_ms) == (False, "forced_open", None, -1)
        assert _prepared_reads(c) == 1


def test_the_callers_json_loaders_do_not_matter(db: str, owner: psycopg.Connection) -> None:
    owner.execute("select public.configure_breaker('loaders')")
    owner.execute("select public.force_breaker('loaders', 'forced_open', 'test')")
    with _service_role(db, prepare=True) as c:
        c.adapters.register_loader("jsonb", TextLoader)
        c.adapters.register_loader("json", TextLoader)
        d = Shield(c).breakers.acquire("loaders")
        assert (d.allowed, d.state) == (False, "forced_open")
        assert _prepared_reads(c) == 1


def test_an_autocommit_pool_takes_the_read(db: str, owner: psycopg.Connection) -> None:
    with ConnectionPool(db, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        shield = Shield(pool)
        d = shield.breakers.acquire("pooled")
        assert shield.breakers.release("pooled", d.permit, "success", 1).counted  # type: ignore[arg-type]
        with pool.connection() as c:
            assert _prepared_reads(c) == 2

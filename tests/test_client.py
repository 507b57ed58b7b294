"""The client core: sources, transactions, the error funnel, retries and timeouts."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg import pq
from psycopg_pool import AsyncConnectionPool, ConnectionPool

import pgshield
from pgshield import AsyncShield, Shield
from pgshield.client import Op, scalar
from pgshield.errors import (
    Conflict,
    InvalidInput,
    NotAllowed,
    NotFound,
    RateLimited,
    Retryable,
    ShieldError,
    Unavailable,
)

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/postgres"

RAISE_FN = """
create function public.t_raise(p_code text) returns int language plpgsql as $$
begin
  raise exception using errcode = p_code, message = 'boom ' || p_code, hint = 'try again later';
end $$;
"""


def raise_op(code: str) -> Op[int]:
    return Op("select public.t_raise(%(code)s::text)", {"code": code}, scalar)


def test_versions_agree(conn: psycopg.Connection) -> None:
    assert Shield(conn).version() == pgshield.__version__


def test_constructor_opens_nothing_and_unreachable_is_unavailable() -> None:
    shield = Shield(UNREACHABLE, timeout=2)  # no connection attempt here
    with pytest.raises(Unavailable):
        shield.version()


def test_every_source_kind(db: str) -> None:
    with Shield(db) as shield:
        assert shield.version() == pgshield.__version__
    with psycopg.connect(db, autocommit=True) as conn:
        assert Shield(conn).version() == pgshield.__version__
    with ConnectionPool(db, min_size=1, max_size=2, open=True) as pool:
        assert Shield(pool).version() == pgshield.__version__


def test_a_connection_not_in_autocommit_is_left_with_no_open_transaction(db: str) -> None:
    # psycopg's default connection: a call through Shield(conn) used to leave its transaction
    # open, holding the key's row lock against every other instance until the app committed
    # (and the hit was lost if it never did).
    with psycopg.connect(db) as conn, psycopg.connect(db, autocommit=True) as other:
        hit = Shield(conn).rate_limits.hit("pgshield_t_conn", limit=5, window=60)
        assert hit.allowed and conn.info.transaction_status == pq.TransactionStatus.IDLE
        assert not conn.autocommit, "the connection is given back as it was"
        seen = Shield(other, timeout=2).rate_limits.peek("pgshield_t_conn", limit=5, window=60)
        assert seen.remaining == 3, "the first hit is committed and the key not locked"
        with conn.transaction():  # inside the caller's own transaction: run in it
            Shield(conn).rate_limits.hit("pgshield_t_conn", limit=5, window=60)
            assert conn.info.transaction_status == pq.TransactionStatus.INTRANS

    async def go() -> tuple[bool, pq.TransactionStatus]:
        async with await psycopg.AsyncConnection.connect(db) as aconn:
            got = await AsyncShield(aconn).rate_limits.hit("pgshield_t_aconn", limit=5, window=60)
            return got.allowed, aconn.info.transaction_status

    assert asyncio.run(go()) == (True, pq.TransactionStatus.IDLE)


def test_async_sources(db: str) -> None:
    async def go() -> list[str]:
        out = []
        async with AsyncShield(db) as shield:
            out.append(await shield.version())
        async with AsyncConnectionPool(db, min_size=1, max_size=2, open=False) as pool:
            out.append(await AsyncShield(pool).version())
        return out

    assert asyncio.run(go()) == [pgshield.__version__] * 2


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("22023", InvalidInput),
        ("22P02", InvalidInput),
        ("42501", NotAllowed),
        ("PT404", NotFound),
        ("PT409", Conflict),
        ("23505", Conflict),
        ("PT429", RateLimited),
        ("40001", Retryable),
        ("P0001", ShieldError),
        ("57P01", Unavailable),
        ("08006", Unavailable),
    ],
)
def test_error_funnel_maps_sqlstates(conn: psycopg.Connection, code: str, cls: type) -> None:
    conn.execute(RAISE_FN)
    with pytest.raises(cls) as err:
        Shield(conn).call(raise_op(code))
    assert err.value.sqlstate == code
    assert err.value.hint == "try again later"
    assert str(err.value).startswith(f"boom {code}")
    assert isinstance(err.value, ShieldError)


def test_calls_join_the_callers_transaction(conn: psycopg.Connection) -> None:
    conn.execute("create table public.t_log (id int)")
    shield = Shield(conn.info.dsn)
    insert = Op("insert into public.t_log values (1)")
    with psycopg.connect(conn.info.dsn) as mine:  # not autocommit: the caller's transaction
        shield.call(insert, conn=mine)
        mine.rollback()
    assert conn.execute("select count(*) from public.t_log").fetchone() == (0,)
    shield.call(insert)  # pgshield's own connection commits by itself
    assert conn.execute("select count(*) from public.t_log").fetchone() == (1,)
    shield.close()


FLAKY_FN = """
create sequence public.t_attempts;
create function public.t_flaky(p_failures int) returns bigint language plpgsql as $$
declare v bigint := nextval('public.t_attempts');
begin
  if v <= p_failures then
    raise exception using errcode = '40001', message = 'could not serialize access';
  end if;
  return v;
end $$;
"""


def test_serialization_failures_are_retried_when_pgshield_owns_the_transaction(
    conn: psycopg.Connection,
) -> None:
    conn.execute(FLAKY_FN)
    op = Op("select public.t_flaky(2) as v", {}, scalar)
    with Shield(conn.info.dsn, isolation="repeatable read", retries=3) as shield:
        assert shield.call(op) == 3  # two failures, then success
    with Shield(conn.info.dsn, retries=1) as shield, pytest.raises(Retryable):
        conn.execute("select setval('public.t_attempts', 1, false)")
        shield.call(op)  # fails twice; one retry is not enough
    with psycopg.connect(conn.info.dsn) as mine:
        conn.execute("select setval('public.t_attempts', 1, false)")
        with pytest.raises(Retryable):
            Shield(mine, retries=5).call(op, conn=mine)  # the caller's transaction: no retry


def test_timeout_cancels_a_slow_statement(db: str) -> None:
    with Shield(db, timeout=0.2) as shield, pytest.raises(Unavailable) as err:
        shield.call(Op("select pg_sleep(5)"))
    assert err.value.sqlstate == "57014"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="isolation"):
        Shield("postgresql://x", isolation="chaos")
    with pytest.raises(ValueError, match="timeout"):
        Shield("postgresql://x", timeout=0)


SETTINGS = Op(
    "select current_setting('statement_timeout') as timeout,"
    " current_setting('transaction_isolation') as isolation,"
    " now() < statement_timestamp() as after_the_preamble",
    parse=lambda rows: tuple(rows[0].values()),
)


def test_the_timeout_is_local_to_each_call(db: str) -> None:
    # The preamble and the call go as one pipeline, in the implicit transaction that lasts
    # until its Sync: the call sees the preamble's setting (and a transaction that started
    # before it), and the session keeps its own afterwards.
    with Shield(db, timeout=1.5) as shield:
        assert shield.call(SETTINGS) == ("1500ms", "read committed", True)
        assert shield._conn is not None
        assert shield._conn.execute("show statement_timeout").fetchone() == ("0",)
        assert shield.call(Op("select 1 as one", parse=scalar)) == 1
    with Shield(db, timeout=1.5, isolation="repeatable read") as shield:
        assert shield.call(SETTINGS) == ("1500ms", "repeatable read", True)


def test_the_async_timeout_is_local_to_each_call(db: str) -> None:
    async def scenario() -> tuple[object, object]:
        async with AsyncShield(db, timeout=0.75) as shield:
            got = await shield.call(SETTINGS)
            assert shield._conn is not None
            cur = await shield._conn.execute("show statement_timeout")
            return got, await cur.fetchone()

    assert asyncio.run(scenario()) == (("750ms", "read committed", True), ("0",))

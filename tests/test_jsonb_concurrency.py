"""Concurrent merges with many real connections: nothing lost, nothing mixed, RR retried."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import psycopg
import pytest

from pgshield import AsyncShield, Retryable, Shield
from support import run_threads

SETUP = """
create table public.hot_docs (id int primary key, doc jsonb not null default '{}');
insert into public.hot_docs (id) values (1);
select pgshield.register_jsonb_target('public.hot_docs', 'doc');
"""


@pytest.fixture
def hot(conn: psycopg.Connection) -> psycopg.Connection:
    conn.execute(SETUP)
    return conn


def document(conn: psycopg.Connection) -> Any:
    return conn.execute("select doc from public.hot_docs where id = 1").fetchone()[0]  # type: ignore[index]


@pytest.mark.slow
def test_200_concurrent_merges_of_distinct_keys_lose_nothing(
    db: str, hot: psycopg.Connection
) -> None:
    writers, each = 100, 2

    def work(i: int, barrier: threading.Barrier) -> None:
        with psycopg.connect(db, autocommit=True, prepare_threshold=None) as conn:
            shield = Shield(conn)
            barrier.wait()
            for j in range(each):
                shield.jsonb.merge("hot_docs", 1, {f"w{i}_{j}": {"answer": j}}, ["answers"])

    run_threads(writers, work)
    answers = document(hot)["answers"]
    assert len(answers) == writers * each
    assert answers == {f"w{i}_{j}": {"answer": j} for i in range(writers) for j in range(each)}


def test_same_key_merges_end_with_one_written_value(db: str, hot: psycopg.Connection) -> None:
    writers, each = 20, 5

    def value(i: int, j: int) -> dict[str, Any]:
        return {"writer": i, "seq": j, "payload": [i, j], "tag": f"w{i}-{j}"}

    def work(i: int, barrier: threading.Barrier) -> None:
        with psycopg.connect(db, autocommit=True, prepare_threshold=None) as conn:
            shield = Shield(conn)
            barrier.wait()
            for j in range(each):
                shield.jsonb.merge("hot_docs", 1, {"k": value(i, j)})

    run_threads(writers, work)
    final = document(hot)
    assert set(final) == {"k"}
    assert final["k"] in [value(i, j) for i in range(writers) for j in range(each)]


def test_naive_read_merge_write_loses_what_merge_jsonb_keeps(
    db: str, hot: psycopg.Connection
) -> None:
    """Every writer reads before any writes: the app-side merge keeps one answer of ten."""
    writers = 10

    def naive(i: int, barrier: threading.Barrier) -> None:
        with psycopg.connect(db, autocommit=True) as conn:
            doc = conn.execute("select doc from public.hot_docs where id = 1").fetchone()[0]  # type: ignore[index]
            barrier.wait()
            doc[f"q{i}"] = "answer"
            conn.execute(
                "update public.hot_docs set doc = %s where id = 1", (psycopg.types.json.Jsonb(doc),)
            )

    run_threads(writers, naive)
    assert len(document(hot)) == 1
    hot.execute("update public.hot_docs set doc = '{}' where id = 1")

    def merged(i: int, barrier: threading.Barrier) -> None:
        with psycopg.connect(db, autocommit=True) as conn:
            conn.execute("select doc from public.hot_docs where id = 1")
            barrier.wait()
            Shield(conn).jsonb.merge("hot_docs", 1, {f"q{i}": "answer"})

    run_threads(writers, merged)
    assert len(document(hot)) == writers


# ------------------------------------------------------------ repeatable read --
def test_repeatable_read_conflict_is_retryable(db: str, hot: psycopg.Connection) -> None:
    """In the caller's own RR transaction the 40001 surfaces as Retryable, not retried."""
    with psycopg.connect(db) as mine:
        mine.execute("set transaction isolation level repeatable read")
        mine.execute("select 1")  # the snapshot is taken here
        Shield(hot).jsonb.merge("hot_docs", 1, {"other": 1})
        with pytest.raises(Retryable) as info:
            Shield(mine).jsonb.merge("hot_docs", 1, {"mine": 1}, conn=mine)
        assert info.value.sqlstate == "40001"
        mine.rollback()
    assert document(hot) == {"other": 1}


class CountingShield(Shield):
    """Counts the client's retries (its backoff is asked once per retry)."""

    retried = 0

    def _backoff(self, attempt: int) -> float:
        type(self).retried += 1
        return 0.0


def wait_until_blocked(conn: psycopg.Connection, pid: int) -> None:
    """Poll until backend ``pid`` waits for a lock held by another transaction."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        row = conn.execute("select cardinality(pg_blocking_pids(%s)) > 0", (pid,)).fetchone()
        if row and row[0]:
            return
        time.sleep(0.01)
    raise AssertionError("the merge never waited for the row lock")


def test_client_retries_a_serialization_failure(db: str, hot: psycopg.Connection) -> None:
    """The RR merge waits on a row that then changes: 40001, retried once, both keys kept."""
    CountingShield.retried = 0
    blocker = psycopg.connect(db)
    blocker.execute("update public.hot_docs set doc = doc || '{\"first\": 1}' where id = 1")
    merger = psycopg.connect(db, autocommit=True, prepare_threshold=None)
    pid = merger.info.backend_pid
    shield = CountingShield(merger, isolation="repeatable read")
    result: list[Any] = []
    thread = threading.Thread(
        target=lambda: result.append(shield.jsonb.merge("hot_docs", 1, {"second": 2}))
    )
    try:
        thread.start()
        wait_until_blocked(hot, pid)
        blocker.commit()
        thread.join(60)
    finally:
        blocker.close()
    merger.close()
    assert result == [{"first": 1, "second": 2}]
    assert CountingShield.retried == 1
    assert document(hot) == {"first": 1, "second": 2}


@pytest.mark.slow
def test_repeatable_read_writers_all_land_with_retries(db: str, hot: psycopg.Connection) -> None:
    writers, each = 12, 5

    def work(i: int, barrier: threading.Barrier) -> None:
        with psycopg.connect(db, autocommit=True, prepare_threshold=None) as conn:
            shield = Shield(conn, isolation="repeatable read", retries=200)
            barrier.wait()
            for j in range(each):
                shield.jsonb.merge("hot_docs", 1, {f"w{i}_{j}": True})

    run_threads(writers, work)
    assert len(document(hot)) == writers * each


def test_async_concurrent_merges(db: str, hot: psycopg.Connection) -> None:
    writers = 30

    async def one(i: int) -> None:
        async with AsyncShield(db) as shield:
            await shield.jsonb.merge("hot_docs", 1, {f"a{i}": i}, ["async"])

    async def go() -> None:
        await asyncio.gather(*(one(i) for i in range(writers)))

    asyncio.run(go())
    assert document(hot)["async"] == {f"a{i}": i for i in range(writers)}

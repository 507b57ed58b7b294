"""Demo section: 50 writers answer one question each of the same assessment document."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgshield.client import connect
from pgshield.shield import Shield
from pgshield.text import heading, table

WRITERS = 50
TABLE = "public.pgshield_demo_assessments"


def _together(dsn: str, work: Callable[[psycopg.Connection, int], None]) -> None:
    """Each writer opens its own connection, then all start at once."""
    barrier = threading.Barrier(WRITERS, timeout=60)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            with connect(dsn) as conn:
                barrier.wait()
                work(conn, i)
        except BaseException as exc:  # shown after the run
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _answers(conn: psycopg.Connection) -> int:
    row = conn.execute(f"select responses from {TABLE} where id = 1").fetchone()
    return len(row[0]) if row else 0


def _answer(i: int) -> dict[str, Any]:
    return {"answer": chr(ord("A") + i % 4), "writer": i}


def run(dsn: str, echo: Callable[[str], None]) -> None:
    echo(heading("jsonb: 50 concurrent answers to one assessment"))
    with connect(dsn) as conn:
        conn.execute(
            f"create table if not exists {TABLE}"
            " (id int primary key, responses jsonb not null default '{}')"
        )
        conn.execute(f"insert into {TABLE} (id) values (1) on conflict (id) do nothing")
        conn.execute(f"update {TABLE} set responses = '{{}}' where id = 1")
        shield = Shield(conn)
        shield.jsonb.register(TABLE, "responses")
        try:
            echo(f"{WRITERS} writers start together; writer i answers question q<i>.")

            def naive(c: psycopg.Connection, i: int) -> None:
                doc = c.execute(f"select responses from {TABLE} where id = 1").fetchone()[0]  # type: ignore[index]
                doc[f"q{i}"] = _answer(i)  # merged in the application ...
                c.execute(f"update {TABLE} set responses = %s where id = 1", (Jsonb(doc),))

            _together(dsn, naive)
            naive_kept = _answers(conn)
            conn.execute(f"update {TABLE} set responses = '{{}}' where id = 1")

            def merged(c: psycopg.Connection, i: int) -> None:
                Shield(c).jsonb.merge(TABLE, 1, _answer(i), [f"q{i}"])

            _together(dsn, merged)
            merged_kept = _answers(conn)
            rows = [
                {
                    "approach": "read, merge in the app, write back",
                    "answers kept": naive_kept,
                    "lost": WRITERS - naive_kept,
                },
                {
                    "approach": "merge_jsonb (one update)",
                    "answers kept": merged_kept,
                    "lost": WRITERS - merged_kept,
                },
            ]
            echo(table(rows, ["approach", "answers kept", "lost"]))
            echo(
                "Each merge is one update: select merge_jsonb('pgshield_demo_assessments', '1',"
                " '{\"answer\": \"B\"}', '{q17}')"
            )
        finally:
            shield.jsonb.unregister(TABLE)
            conn.execute(f"drop table if exists {TABLE}")
    echo("")

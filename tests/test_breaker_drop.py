"""drop_breaker against state changes in flight, and creations racing at the max_breakers cap.

A drop takes the breaker's row first, as every state change does: it waits for a change in
flight, tombstones the generation that change reached (so a breaker created again under the
name starts past every permit the dropped one handed out), and never deadlocks with
release_breaker. Creations that waited behind the creation of the same name at the cap use
that breaker. Real connections, real clock.
"""

from __future__ import annotations

import itertools
import random
import threading
import time

import psycopg
import pytest

from support import run_threads, wait_for_lock_wait

SHIFT = 4294967296  # a permit is generation * 2**32 + lease number


def generation(conn: psycopg.Connection, name: str) -> int | None:
    row = conn.execute(
        "select generation from pgshield.breakers where name = %s", (name,)
    ).fetchone()
    return row[0] if row else None


def test_a_drop_waits_for_a_change_in_flight_and_tombstones_its_generation(
    db: str, conn: psycopg.Connection
) -> None:
    name = "pgshield_t_drop_in_flight"
    conn.execute("select public.configure_breaker(%s, p_failure_threshold => 1)", (name,))
    first = generation(conn, name)
    assert first is not None
    with (
        psycopg.connect(db) as changer,
        psycopg.connect(db) as dropper,
        psycopg.connect(db, autocommit=True) as caller,
    ):
        changer.execute("select public.reset_breaker(%s, 'ops reset')", (name,))  # row locked
        dropper_pid = dropper.info.backend_pid
        dropped: list[bool] = []
        thread = threading.Thread(
            target=lambda: dropped.append(
                dropper.execute("select public.drop_breaker(%s)", (name,)).fetchone()[0]  # type: ignore[index]
            )
        )
        thread.start()
        wait_for_lock_wait(conn, dropper_pid)
        changer.commit()  # the reset lands: generation first + 1
        thread.join(10)
        assert dropped == [True]
        # The drop is not committed yet: a caller still sees the reset breaker and gets a
        # permit in its generation.
        permit = caller.execute(
            "select permit from public.acquire_breaker(%s)", (name,)
        ).fetchone()[0]  # type: ignore[index]
        assert permit // SHIFT == first + 1
        dropper.commit()
        tomb = conn.execute(
            "select generation from pgshield.breaker_tombstones where name = %s", (name,)
        ).fetchone()
        assert tomb == (first + 1,)
        left = conn.execute(
            "select count(*) from pgshield.breaker_events where name = %s", (name,)
        ).fetchone()
        assert left == (0,)
        conn.execute("select public.configure_breaker(%s, p_failure_threshold => 1)", (name,))
        assert generation(conn, name) == first + 2
        # The permit from before the drop is stale on the new breaker: its failure opens nothing.
        answer = caller.execute(
            "select state, changed, counted from public.release_breaker(%s, %s, 'failure')",
            (name, permit),
        ).fetchone()
        assert answer == ("closed", False, False)


@pytest.mark.slow
def test_drops_under_traffic_never_deadlock_and_never_move_a_generation_back(
    db: str, conn: psycopg.Connection
) -> None:
    """Six backends acquire and release (opening and closing it) while a seventh drops it."""
    name = "pgshield_t_drop_traffic"
    conn.execute(
        "create table public.pgshield_t_dropped (id bigint generated always as identity,"
        " generation bigint, tomb bigint);"
        " create function public.pgshield_t_log_drop() returns trigger language plpgsql as $$"
        " begin insert into public.pgshield_t_dropped (generation, tomb) values (old.generation,"
        "   (select t.generation from pgshield.breaker_tombstones t where t.name = old.name));"
        " return old; end $$;"
        " create trigger pgshield_t_log_drop after delete on pgshield.breakers"
        " for each row execute function public.pgshield_t_log_drop()"
    )
    conn.execute(
        "select public.configure_breaker(%s, p_failure_threshold => 1, p_open_ms => 1,"
        " p_success_threshold => 1)",
        (name,),
    )
    stop = time.monotonic() + 6
    errors: list[str] = []
    calls = [0] * 7

    def work(i: int, barrier: object) -> None:
        with psycopg.connect(db, autocommit=True) as c:
            barrier.wait()  # type: ignore[attr-defined]
            while time.monotonic() < stop:
                try:
                    if i == 6:
                        time.sleep(0.05)
                        c.execute("select public.drop_breaker(%s)", (name,))
                    else:
                        allowed, permit = c.execute(
                            "select allowed, permit from public.acquire_breaker(%s)", (name,)
                        ).fetchone()  # type: ignore[misc]
                        if allowed:
                            c.execute(
                                "select public.release_breaker(%s, %s, %s)",
                                (name, permit, random.choice(["failure", "success"])),
                            )
                    calls[i] += 1
                except psycopg.Error as exc:
                    if exc.sqlstate != "PT404":  # released after the drop: unknown breaker
                        errors.append(f"{exc.sqlstate}: {exc}")

    run_threads(7, work)
    drops = conn.execute(
        "select generation, tomb from public.pgshield_t_dropped order by id"
    ).fetchall()
    assert not errors, errors[:5]
    assert len(drops) >= 20 and min(calls[:6]) > 0, (len(drops), calls)
    behind = [d for d in drops if d[1] < d[0]]
    assert not behind, behind[:5]
    # Every breaker created again started past the one dropped before it.
    generations = [d[0] for d in drops]
    assert all(b > a for a, b in itertools.pairwise(generations)), generations


def test_creations_racing_at_the_cap_for_one_name_all_get_it(
    db: str, conn: psycopg.Connection
) -> None:
    name = "pgshield_t_cap_race"
    existing = conn.execute("select count(*) from pgshield.breakers").fetchone()[0]  # type: ignore[index]
    conn.execute(
        "select pgshield.set_breaker_settings(p_auto_create => true, p_max_breakers => %s)",
        (existing + 1,),
    )
    answers: list[tuple] = []

    def work(i: int, barrier: object) -> None:
        with psycopg.connect(db, autocommit=True) as c:
            barrier.wait()  # type: ignore[attr-defined]
            try:
                row = c.execute(
                    "select allowed from public.acquire_breaker(%s)", (name,)
                ).fetchone()
                answers.append(("ok", row))
            except psycopg.Error as exc:
                answers.append((exc.sqlstate, str(exc)))

    run_threads(16, work)
    assert answers == [("ok", (True,))] * 16, answers
    rows = conn.execute(
        "select count(*) from pgshield.breakers where name = %s", (name,)
    ).fetchone()
    assert rows == (1,)
    with pytest.raises(psycopg.Error) as full:
        conn.execute("select public.acquire_breaker('pgshield_t_cap_race_2')")
    assert full.value.sqlstate == "PT409"

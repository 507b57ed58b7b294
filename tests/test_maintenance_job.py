"""The pg_cron job's command: cleanup committed in short steps, on the real clock.

``run_maintenance`` deletes everything of one run in one transaction, so a decision that meets a
row the run deleted waits for the run's commit, up to its whole budget. The job runs
``maintenance_job_command()`` instead, a ``do`` block that commits after every step (at most
100 ms of cleanup): these tests prove that a decision on a deleted key waits for one step at
most, that the steps stop when done or at the budget, that the block resolves nothing through
the session's search_path, and who may run it.
"""

from __future__ import annotations

import random
import threading
import time

import psycopg
import pytest

from support import act_as


def job_command(conn: psycopg.Connection, budget: str, ratio: float) -> str:
    """The job's ``do`` block for this budget and pause ratio."""
    row = conn.execute(
        "select pgshield.maintenance_job_command(%s::interval, %s)", (budget, ratio)
    ).fetchone()
    assert row is not None
    return row[0]


LIVE_WINDOW = 2_678_400  # seconds: the longest window, 31 days


@pytest.mark.slow
def test_a_key_the_job_deleted_waits_for_one_step_not_for_the_job(
    db: str, conn: psycopg.Connection
) -> None:
    """Decisions on keys being deleted wait for that step's commit, while the job goes on.

    Batches of 150,000 make each step one long batch. Key ``back-k`` is the first row of batch
    k. For each key in turn a watcher waits until the job holds its row (locked, to be deleted),
    then decides on it. A decision the job blocked must finish (counting 1, a new window) while
    the job is still running, in step k. Had the job kept every deletion in one transaction, the
    decision would finish only when the job did. The watcher is a Python thread among seven on
    two cores: it can look too late, when step k has committed (then the decision is not
    blocked, and finishes in step k or k + 1) or is over (then no decision is made for that
    key). Every outcome is attributed; at least three of the five keys must be blocked ones.
    Meanwhile 4 clients decide on live keys with a 1 s lock timeout, counted exactly.
    """
    batch, keys = 150_000, [f"back-{k}" for k in range(1, 6)]
    conn.execute(
        "insert into pgshield.rate_limit_state"
        " (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)"
        " select case when g %% %(batch)s = 1 then 'back-' || (g / %(batch)s + 1)"
        "             else 'g-' || g end,"
        "        60, 'fixed_window', 100, now() - interval '2 hours', 7, now() - interval '1 hour'"
        "   from generate_series(1, %(rows)s) g",
        {"batch": batch, "rows": batch * 6},
    )
    conn.execute("select pgshield.set_maintenance_task('rate_limit', p_batch_size => %s)", (batch,))
    live = [f"live-{i}" for i in range(8)]
    # Live keys count in one 31-day window (epoch-aligned): the test never straddles its end.
    to_boundary = LIVE_WINDOW - time.time() % LIVE_WINDOW
    if to_boundary < 180:
        time.sleep(to_boundary + 1)
    hits = dict.fromkeys(live, 0)
    lock = threading.Lock()
    errors: list[BaseException] = []
    job_done = threading.Event()

    def job(c: psycopg.Connection) -> None:
        try:
            # Pauses three times as long as each step: the watcher (a Python thread among six,
            # on two cores) is looking before the next step takes its key.
            c.execute(job_command(c, "2 minutes", 3))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            job_done.set()

    def load(i: int) -> None:
        rng = random.Random(i)
        try:
            with psycopg.connect(db, autocommit=True, prepare_threshold=None) as c:
                c.execute("set lock_timeout = '1s'")
                while not job_done.is_set():
                    key = live[rng.randrange(len(live))]
                    row = c.execute(
                        "select allowed from public.increment_rate_limit(%s, 1000000, %s)",
                        (key, LIVE_WINDOW),
                    ).fetchone()
                    assert row == (True,)
                    with lock:
                        hits[key] += 1
                    time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)

    outcomes: list[tuple] = []
    with (
        psycopg.connect(db, autocommit=True) as runner,
        psycopg.connect(db, autocommit=True) as watcher,
        psycopg.connect(db, autocommit=True) as decider,
    ):
        decider.execute("set lock_timeout = '30s'")
        threads = [threading.Thread(target=job, args=(runner,))]
        threads += [threading.Thread(target=load, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for key in keys:
            # Held by the job: the row is still visible, with a deleter (xmax: the job's step,
            # in the subtransaction of its task; nothing else locks or deletes these rows), read
            # without locking it (a locking probe would make the job skip the row: its batches
            # skip locked rows). Gone (deleted and committed): this watcher looked too late.
            held = gone = False
            while not held and not gone and not job_done.is_set():
                row = watcher.execute(
                    "select exists (select from pgshield.rate_limit_state where key = %(k)s),"
                    "       coalesce((select s.xmax::text <> '0' from pgshield.rate_limit_state s"
                    "                  where s.key = %(k)s), false),"
                    "       clock_timestamp()",
                    {"k": key},
                ).fetchone()
                assert row is not None
                held, gone, held_at = row[:2] == (True, True), row[:2] == (False, False), row[2]
            assert held or gone, (f"the job ended before it reached {key}", errors, outcomes)
            if gone:
                outcomes.append((key, False, True, held_at, None))
                continue
            result: list[tuple | None] = []

            def decide(key: str = key, result: list[tuple | None] = result) -> None:
                # The time the decision got the row (after its lock wait), to attribute it to
                # the step whose commit released it.
                result.append(
                    decider.execute(
                        "select allowed, remaining, clock_timestamp()"
                        " from public.increment_rate_limit(%s, 100, 60)",
                        (key,),
                    ).fetchone()
                )

            thread = threading.Thread(target=decide)
            thread.start()
            blocked = False
            while thread.is_alive() and not blocked:
                pids = watcher.execute(
                    "select pg_blocking_pids(%s)", (decider.info.backend_pid,)
                ).fetchone()
                blocked = runner.info.backend_pid in pids[0]  # type: ignore[index]
            thread.join(60)
            running = not job_done.is_set()
            outcomes.append((key, blocked, running, held_at, result[0] if result else None))
        for t in threads:
            t.join(180)
        # Each time in the step it fell in: the steps (runs) started by then, read once every
        # step has committed.
        step_at = lambda at: watcher.execute(  # noqa: E731
            "select count(*) from pgshield.maintenance_runs where started_at <= %s", (at,)
        ).fetchone()[0]  # type: ignore[index]
        attributed = [
            (k, b, r, step_at(h), step_at(d[2]) if d else None, d[:2] if d else None)
            for k, b, r, h, d in outcomes
        ]
    assert not errors, errors
    assert [o[0] for o in attributed] == keys, attributed
    # back-k is the first row of batch k, and each step runs one batch (or none, when starved
    # of CPU until its budget was spent): the job reaches the keys in order, each in its own step.
    held_steps = [o[3] for o in attributed]
    assert held_steps == sorted(set(held_steps)) and held_steps[0] >= 1, attributed
    for _key, blocked, running, held_step, step, decided in attributed:
        if decided is None:  # looked too late: the step had committed the deletion
            assert not blocked, attributed
            continue
        # Every decision finished while the job ran, allowed in a new window. One the job
        # blocked finished right after the commit of the step that held the row, before the
        # next step (which starts three times a step's length later); one that came after that
        # commit waited for nothing, whenever its thread got to run.
        assert running and decided == (True, 99), attributed
        assert step == held_step if blocked else step >= held_step, attributed
    assert sum(1 for o in attributed if o[1]) >= 3, attributed
    decided_keys = [o[0] for o in attributed if o[5] is not None]
    state = dict(conn.execute("select key, count from pgshield.rate_limit_state").fetchall())  # type: ignore[arg-type]
    assert state == {**dict.fromkeys(decided_keys, 1), **{k: n for k, n in hits.items() if n}}
    assert sum(hits.values()) > 50, "the live keys were decided on while the job ran"
    runs = conn.execute(
        "select r.complete, (t ->> 'deleted')::int"
        "  from pgshield.maintenance_runs r, jsonb_array_elements(r.result -> 'tasks') t"
        " where t ->> 'task' = 'rate_limit' order by r.id"
    ).fetchall()
    # One batch per step, then the step that found nothing left: complete. (A step starved of
    # CPU until its budget was spent runs no batch.)
    assert [d for _, d in runs if d] == [batch] * 6 and runs[-1] == (True, 0), runs
    assert [c for c, _ in runs] == [False] * (len(runs) - 1) + [True], runs


def _slow_task(conn: psycopg.Connection, rows: int, batch: int) -> None:
    """A task of the test's own whose batches take 30 ms each: ``rows`` rows to delete."""
    conn.execute("create table pgshield.pgshield_t_junk (id int primary key)")
    conn.execute("insert into pgshield.pgshield_t_junk select generate_series(1, %s)", (rows,))
    conn.execute(
        "create function pgshield.pgshield_t_junk_cleanup(p_batch integer) returns integer"
        " language plpgsql set search_path = pg_catalog, pg_temp as $$"
        " declare n integer; begin"
        "   perform pg_sleep(0.03);"
        "   delete from pgshield.pgshield_t_junk where id in"
        "     (select id from pgshield.pgshield_t_junk order by id limit p_batch);"
        "   get diagnostics n = row_count; return n; end $$"
    )
    conn.execute(
        "insert into pgshield.maintenance_tasks (task, module, cleanup, batch_size, position)"
        " values ('pgshield_t_junk', 'test', 'pgshield.pgshield_t_junk_cleanup(integer)', %s, 50)",
        (batch,),
    )


def _junk_steps(conn: psycopg.Connection) -> list[tuple[bool, str, int, int]]:
    """Per recorded run: complete, the test task's status, deleted and batches."""
    return conn.execute(  # type: ignore[return-value]
        "select r.complete, t ->> 'status', (t ->> 'deleted')::int, (t ->> 'batches')::int"
        "  from pgshield.maintenance_runs r, jsonb_array_elements(r.result -> 'tasks') t"
        " where t ->> 'task' = 'pgshield_t_junk' order by r.id"
    ).fetchall()


def test_the_job_commits_each_step_and_stops_when_done(conn: psycopg.Connection) -> None:
    """10 batches of 30 ms: steps of at most 100 ms (4 batches), each a run; the last complete."""
    _slow_task(conn, 100, 10)
    conn.execute(job_command(conn, "1 minute", 0))
    steps = _junk_steps(conn)
    assert len(steps) >= 3, steps
    # The task has more until its last batch; later tasks may take one more step, then all done.
    statuses = [s[1] for s in steps]
    done = statuses.index("done")
    assert statuses[:done] == ["more"] * done and done >= 2, steps
    assert [s[0] for s in steps] == [False] * (len(steps) - 1) + [True], steps
    assert sum(s[2] for s in steps) == 100 and all(1 <= s[3] <= 4 for s in steps[: done + 1]), steps
    assert conn.execute("select count(*) from pgshield.pgshield_t_junk").fetchone() == (0,)
    totals = conn.execute("select runs from pgshield.maintenance_totals").fetchone()
    assert totals == (len(steps),)


def test_the_job_stops_at_its_budget(conn: psycopg.Connection) -> None:
    """More than the budget holds: the job ends with more left, its steps within the budget."""
    _slow_task(conn, 1000, 1)
    started = conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
    conn.execute(job_command(conn, "400 milliseconds", 1))
    steps = _junk_steps(conn)
    assert steps and steps[-1][:2] == (False, "more"), steps
    first, last = conn.execute(
        "select min(started_at), max(started_at) from pgshield.maintenance_runs"
    ).fetchone()  # type: ignore[misc]
    # Paused as long as each step took: about half the budget was work.
    assert first >= started and (last - started).total_seconds() < 0.4
    deleted = sum(s[2] for s in steps)
    left = conn.execute("select count(*) from pgshield.pgshield_t_junk").fetchone()
    assert left == (1000 - deleted,) and 2 <= deleted <= 14, steps


def test_the_job_resolves_nothing_through_the_callers_search_path(
    conn: psycopg.Connection,
) -> None:
    """Functions and types that shadow pg_catalog's, first in the path, are never called."""
    conn.execute("create schema pgshield_t_evil")
    for ddl in (
        "create function pgshield_t_evil.clock_timestamp() returns timestamptz language plpgsql"
        " as $$begin raise exception 'evil clock_timestamp'; end$$",
        "create function pgshield_t_evil.pg_sleep(double precision) returns void"
        " language plpgsql as $$begin raise exception 'evil pg_sleep'; end$$",
        "create function pgshield_t_evil.run_maintenance_step(timestamptz, interval, float8)"
        " returns float8 language plpgsql as $$begin raise exception 'evil step'; end$$",
        "create domain pgshield_t_evil.float8 as double precision check (false)",
    ):
        conn.execute(ddl)
    _slow_task(conn, 100, 10)  # several steps, so pauses between them
    command = job_command(conn, "1 minute", 1)
    conn.execute("set search_path = pgshield_t_evil, pg_catalog, public")
    with pytest.raises(psycopg.errors.RaiseException, match="evil clock_timestamp"):
        conn.execute("select clock_timestamp()")  # the path does shadow pg_catalog
    conn.execute(command)
    conn.execute("reset search_path")
    steps = _junk_steps(conn)
    left = conn.execute("select count(*) from pgshield.pgshield_t_junk").fetchone()
    assert len(steps) >= 3 and steps[-1][0] and left == (0,), steps


def test_who_may_run_the_job_and_bad_input(conn: psycopg.Connection) -> None:
    command = job_command(conn, "1 second", 1)
    assert "'1 seconds'::pg_catalog.interval, '1'::pg_catalog.float8" in command
    for role in ("anon", "authenticated"):
        for statement in (
            command,
            "select pgshield.maintenance_job_command()",
            "select pgshield.run_maintenance_step(now(), interval '1 second', 1)",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), act_as(conn, role):
                conn.execute(statement)
    for budget, ratio in (
        ("0", 1),
        ("11 minutes", 1),
        (None, 1),
        ("1 second", -1),
        ("1 second", float("nan")),
        ("1 second", 101),
    ):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute(
                "select pgshield.maintenance_job_command(%s::interval, %s)", (budget, ratio)
            )
    # An edited command is checked by each step all the same.
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        conn.execute(command.replace("'1 seconds'", "'11 minutes'"))
    for started in ("now() + interval '1 minute'", "null"):
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute(f"select pgshield.run_maintenance_step({started}, interval '1 second', 1)")
    # It commits: inside a transaction block it is refused and leaves nothing behind.
    with pytest.raises(psycopg.errors.InvalidTransactionTermination), conn.transaction():
        conn.execute(command)
    assert conn.execute("select count(*) from pgshield.maintenance_runs").fetchone() == (0,)
    conn.execute("set role service_role")
    try:
        conn.execute(command)
    finally:
        conn.execute("reset role")
    assert conn.execute("select count(*) from pgshield.maintenance_runs").fetchone() == (1,)


def test_a_step_whose_budget_is_spent_does_nothing(conn: psycopg.Connection) -> None:
    row = conn.execute(
        "select pgshield.run_maintenance_step(clock_timestamp() - interval '2 seconds',"
        " interval '1 second', 1)"
    ).fetchone()
    assert row == (None,)
    assert conn.execute("select count(*) from pgshield.maintenance_runs").fetchone() == (0,)


def test_a_task_with_a_backlog_does_not_starve_the_tasks_after_it(
    conn: psycopg.Connection,
) -> None:
    """A first task with more work than the budget: every later task still gets its batch."""
    _slow_task(conn, 1000, 10)  # 100 batches of 30 ms, far past a 50 ms budget
    conn.execute(
        "update pgshield.maintenance_tasks set position = -1 where task = 'pgshield_t_junk'"
    )
    enabled = [
        r[0]
        for r in conn.execute(
            "select task from pgshield.maintenance_tasks where enabled order by position, task"
        )
    ]
    assert enabled[0] == "pgshield_t_junk" and len(enabled) >= 4, enabled
    before = dict(conn.execute("select task, runs from pgshield.maintenance_tasks").fetchall())
    result = conn.execute("select pgshield.run_maintenance('50 milliseconds', 0)").fetchone()[0]  # type: ignore[index]
    tasks = {t["task"]: t for t in result["tasks"]}
    assert tasks["pgshield_t_junk"]["status"] == "more"
    assert tasks["pgshield_t_junk"]["batches"] < 100
    for task in enabled[1:]:
        assert tasks[task]["batches"] >= 1, (task, tasks[task])
        assert tasks[task]["status"] in ("done", "skipped"), (task, tasks[task])
    after = dict(conn.execute("select task, runs from pgshield.maintenance_tasks").fetchall())
    assert all(after[t] == before[t] + 1 for t in enabled if tasks[t]["status"] != "skipped")

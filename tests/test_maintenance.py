"""Maintenance: the client, the CLI, metrics as Prometheus reads them, cleanup under load."""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import urllib.request

import psycopg
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from pgshield import InvalidInput, NotAllowed, Shield, ShieldError
from pgshield.cli import main
from pgshield.maintenance.serve import metrics_server
from support import SUPABASE_POSTGRES, Backend, act_as, as_user, run_threads

NOW = dt.datetime(2030, 1, 1, 0, 30, tzinfo=dt.timezone.utc)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# ----------------------------------------------------------------- client ----
def test_run_cleans_expired_state_and_keeps_live_state(conn: psycopg.Connection) -> None:
    conn.execute("select pgshield.set_clock(%s)", (NOW,))
    shield = Shield(conn)
    for i in range(30):
        shield.rate_limits.hit(f"m-old-{i}", limit=5, window=60)
    conn.execute("select pgshield.advance_clock(interval '5 minutes')")
    shield.rate_limits.hit("m-live", limit=5, window=3600)
    shield.maintenance.set_task("rate_limit", batch_size=7)
    run = shield.maintenance.run(time_budget=10)
    task = run.task("rate_limit")
    assert run.complete and task is not None
    assert (task.status, task.deleted, task.batches) == ("done", 30, 5)
    assert [t.task for t in run.tasks][-1] == "maintenance"
    left = conn.execute("select key from pgshield.rate_limit_state").fetchall()
    assert left == [("m-live",)]
    status = shield.maintenance.status()
    assert status.totals["runs"] == 1 and status.job is None
    assert {t["task"] for t in status.tasks} >= {"rate_limit", "maintenance"}


def test_bad_input_and_roles(conn: psycopg.Connection) -> None:
    shield = Shield(conn)
    with pytest.raises(InvalidInput):
        shield.maintenance.run(time_budget=0)
    with pytest.raises(InvalidInput):
        shield.maintenance.schedule("whenever")
    assert conn.execute("select count(*) from pgshield.maintenance_runs").fetchone() == (0,)
    for role in ("anon", "authenticated"):
        for call in ("run_maintenance()", "metrics()", "schedule_maintenance()"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), act_as(conn, role):
                conn.execute(f"select pgshield.{call}")
    with act_as(conn, "authenticated"), pytest.raises(NotAllowed):
        Shield(conn).maintenance.run(conn=conn)
    with act_as(conn, "service_role"):
        assert Shield(conn).maintenance.run(conn=conn).complete


def test_scheduling_from_a_database_without_the_scheduler_says_what_to_run(
    conn: psycopg.Connection,
) -> None:
    here = conn.execute("select current_database()").fetchone()[0]  # type: ignore[index]
    with pytest.raises(ShieldError) as info:
        Shield(conn).maintenance.schedule("*/5 * * * *")
    assert info.value.sqlstate == "55000"
    assert "select cron.schedule_in_database(" in (info.value.hint or "")
    assert f"'pgshield-maintenance-{here}', '*/5 * * * *'" in (info.value.hint or "")


def test_an_owner_who_cannot_see_the_scheduler_is_told_both_ways(
    backend: Backend, supabase_template_db: str
) -> None:
    # A non-superuser owner may read neither cron.database_name nor the launcher's row in
    # pg_stat_activity: it used to be told pg_cron was absent and to preload it here.
    with (
        backend.clone(supabase_template_db, owner=SUPABASE_POSTGRES) as dsn,
        psycopg.connect(as_user(dsn, SUPABASE_POSTGRES), autocommit=True) as conn,
    ):
        sees = conn.execute(
            "select count(*) from pg_stat_activity where backend_type = 'pg_cron launcher'"
        ).fetchone()
        # the compat stub's owner, like hosted Supabase's postgres, lacks pg_read_all_stats
        assert sees == (0,), "this role sees pg_cron's launcher: the test's premise is gone"
        cron = conn.execute("select pgshield.maintenance_cron()").fetchone()[0]  # type: ignore[index]
        assert cron["known"] is False and cron["version"] is None
        with pytest.raises(ShieldError) as info:
            Shield(conn).maintenance.schedule("*/5 * * * *")
    assert info.value.sqlstate == "55000"
    assert "cannot see whether the server loads it" in str(info.value)
    hint = info.value.hint or ""
    assert "select cron.schedule_in_database(" in hint and "shared_preload_libraries" in hint


# ---------------------------------------------------------------- metrics ----
def test_metrics_parse_and_match_the_database(conn: psycopg.Connection) -> None:
    conn.execute("select pgshield.set_clock(%s)", (NOW,))
    conn.execute(
        "select public.define_rate_limit_policy('m_api', '{\"free\": {\"minute\": 2}}'::jsonb,"
        " 'fixed_window')"
    )
    shield = Shield(conn)
    for _ in range(3):
        shield.rate_limits.check("m_api", subject="u1")
    shield.rate_limits.hit("m-key", limit=1, window=60)
    shield.rate_limits.hit("m-key", limit=1, window=60)
    conn.execute(
        "insert into pgshield.rate_limit_state"
        " (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)"
        " select 'm-exp-' || g, 60, 'fixed_window', 1, %s, 1, %s from generate_series(1, 4) g",
        (NOW - dt.timedelta(hours=1), NOW - dt.timedelta(minutes=59)),
    )
    shield.maintenance.run()
    values = samples(shield.maintenance.metrics())
    counters = {
        r[0]: (r[1], r[2])
        for r in conn.execute("select policy, allowed, denied from pgshield.rate_limit_counters")
    }
    for policy, (allowed, denied) in counters.items():
        for outcome, n in (("allowed", allowed), ("denied", denied)):
            key = (("outcome", outcome), ("policy", policy))
            assert values[("pgshield_rate_limit_decisions_total", key)] == n
    assert counters["m_api"] == (2, 1) and counters[""] == (1, 1)
    live = conn.execute(
        "select (select count(*) from pgshield.rate_limit_state)"
        " + (select count(*) from pgshield.rate_limit_policy_state)"
    ).fetchone()[0]  # type: ignore[index]
    assert live == 2  # one direct key, one subject under m_api
    assert values[("pgshield_rate_limit_state_rows", (("state", "live"),))] == live
    assert values[("pgshield_rate_limit_state_rows", (("state", "expired"),))] == 0
    assert values[("pgshield_maintenance_runs_total", ())] == 1
    assert values[("pgshield_maintenance_run_duration_seconds_count", ())] == 1
    assert values[("pgshield_maintenance_deleted_rows_total", (("task", "rate_limit"),))] == 4
    assert values[("pgshield_maintenance_last_run_timestamp_seconds", ())] == NOW.timestamp()


def test_metrics_scrape_target_answers_a_real_http_get(db: str) -> None:
    with Shield(db) as shield:
        server = metrics_server(shield, 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = f"http://127.0.0.1:{server.server_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                body = response.read().decode()
            assert ("pgshield_maintenance_runs_total", ()) in samples(body)
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(url.replace("/metrics", "/nope"), timeout=10)
            assert info.value.code == 404
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)
    assert not thread.is_alive()


# -------------------------------------------------------------------- CLI ----
def test_cli_metrics_and_cron(db: str) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["metrics", "--dsn", db])
    assert out.exit_code == 0, out.output
    assert ("pgshield_maintenance_runs_total", ()) in samples(out.output)
    out = runner.invoke(main, ["cron", "run", "--dsn", db, "--json"])
    assert out.exit_code == 0 and '"complete": true' in out.output, out.output
    out = runner.invoke(main, ["cron", "run", "--dsn", db, "--pause-ratio", "0", "--json"])
    assert out.exit_code == 0 and '"complete": true' in out.output, out.output
    out = runner.invoke(main, ["cron", "run", "--dsn", db, "--pause-ratio", "-1"])
    assert out.exit_code == 2, out.output
    out = runner.invoke(main, ["cron", "status", "--dsn", db])
    assert out.exit_code == 0 and "rate_limit" in out.output, out.output
    out = runner.invoke(main, ["cron", "install", "--dsn", db])
    assert out.exit_code == 1 and "schedule_in_database" in out.output, out.output
    assert "Traceback" not in out.output
    out = runner.invoke(main, ["cron", "install", "--dsn", db, "--schedule", "soon"])
    assert out.exit_code == 1 and "p_schedule" in out.output, out.output


# ------------------------------------------------------------------- load ----
@pytest.mark.slow
def test_cleanup_under_load_loses_no_live_state_and_blocks_no_decision(
    db: str, conn: psycopg.Connection
) -> None:
    conn.execute("select pgshield.set_clock('2030-01-01 00:30:00+00')")
    conn.execute("select pgshield.set_maintenance_task('rate_limit', p_batch_size => 500)")
    keys = [f"k{i}" for i in range(40)]
    conn.execute(
        "insert into pgshield.rate_limit_state"
        " (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)"
        " select k, 60, 'fixed_window', 1000, '2030-01-01 00:00:00+00'::timestamptz, 7,"
        "        '2030-01-01 00:01:00+00'::timestamptz from unnest(%s::text[]) k"
        " union all"
        " select 'garbage-' || g, 60, 'fixed_window', 10, '2030-01-01 00:00:00+00', 1,"
        "        '2030-01-01 00:01:00+00' from generate_series(1, 20000) g",
        (keys,),
    )
    clients, per_client = 16, 60
    hits = dict.fromkeys(keys, 0)
    lock = threading.Lock()
    runs: list[dict] = []
    slowest = [0.0]
    done = threading.Event()

    def cleaner() -> None:
        with psycopg.connect(db, autocommit=True) as c:
            while not done.is_set():
                row = c.execute("select pgshield.run_maintenance(interval '100 ms')").fetchone()
                runs.append(row[0])  # type: ignore[index]

    def work(i: int, barrier: threading.Barrier) -> None:
        rng = random.Random(i)
        with psycopg.connect(db, autocommit=True, prepare_threshold=None) as c:
            # A decision that waited this long on cleanup would fail the test (55P03).
            c.execute("set lock_timeout = '2s'")
            barrier.wait()
            for _ in range(per_client):
                key = keys[rng.randrange(len(keys))]
                started = time.perf_counter()
                row = c.execute(
                    "select allowed from public.increment_rate_limit(%s, 1000, 60)", (key,)
                ).fetchone()
                took = time.perf_counter() - started
                assert row and row[0]
                with lock:
                    hits[key] += 1
                    slowest[0] = max(slowest[0], took)

    cleaning = threading.Thread(target=cleaner)
    cleaning.start()
    try:
        run_threads(clients, work)
    finally:
        done.set()
        cleaning.join(60)
    conn.execute("select pgshield.run_maintenance(interval '30 seconds')")
    counts = dict(
        conn.execute(  # type: ignore[arg-type]
            "select key, count from pgshield.rate_limit_state where key like 'k%%'"
        ).fetchall()
    )
    assert counts == {k: n for k, n in hits.items() if n}
    garbage = conn.execute(
        "select count(*) from pgshield.rate_limit_state where key like 'garbage-%%'"
    ).fetchone()
    assert garbage == (0,)
    deleted = [t["deleted"] for r in runs for t in r["tasks"] if t["task"] == "rate_limit"]
    assert sum(deleted) > 0 and any(
        t["batches"] > 1 for r in runs for t in r["tasks"] if t["task"] == "rate_limit"
    )
    assert slowest[0] < 2.0


@pytest.mark.slow
def test_a_decision_on_a_key_whose_window_just_ended_never_waits_for_a_run(
    db: str, conn: psycopg.Connection
) -> None:
    """A run's transaction holds the rows it deleted; keys that expired a moment ago stay.

    A key whose window has just ended is the one that is decided on again at once. The rate
    limit task leaves rows that expired less than its retention (1 minute) ago, so a decision
    on such a key goes on while a run is still open; a key that expired long ago is deleted by
    the run and its next decision waits for the run's commit, and then counts from zero.
    """
    conn.execute("select pgshield.set_clock(%s)", (NOW,))
    conn.execute(
        "insert into pgshield.rate_limit_state"
        " (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)"
        " values ('m-just', 60, 'fixed_window', 100, %(now)s - interval '70 seconds', 7,"
        "         %(now)s - interval '10 seconds'),"
        "        ('m-old', 60, 'fixed_window', 100, %(now)s - interval '5 minutes', 7,"
        "         %(now)s - interval '4 minutes'),"
        "        ('m-live', 60, 'fixed_window', 100, %(now)s, 7, %(now)s + interval '1 minute')",
        {"now": NOW},
    )
    conn.execute(
        "insert into pgshield.rate_limit_state"
        " (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)"
        " select 'm-garbage-' || g, 60, 'fixed_window', 10, %(now)s - interval '1 hour', 1,"
        "        %(now)s - interval '59 minutes' from generate_series(1, 3000) g",
        {"now": NOW},
    )
    with (
        psycopg.connect(db) as runner,  # not autocommit: the run stays open until commit
        psycopg.connect(db, autocommit=True) as decider,
        psycopg.connect(db, autocommit=True) as watcher,
    ):
        run = runner.execute("select pgshield.run_maintenance(interval '1 minute', 0)").fetchone()
        task = next(t for t in run[0]["tasks"] if t["task"] == "rate_limit")  # type: ignore[index]
        assert (task["status"], task["deleted"]) == ("done", 3001)
        # Were m-just deleted too, this call would wait for the open run until the timeout.
        decider.execute("set statement_timeout = '20s'")
        row = decider.execute(
            "select allowed, remaining from public.increment_rate_limit('m-just', 100, 60)"
        ).fetchone()
        assert row == (True, 99)

        decider_pid = decider.info.backend_pid
        result: list[tuple] = []
        thread = threading.Thread(
            target=lambda: result.append(
                decider.execute(
                    "select allowed, remaining from public.increment_rate_limit('m-old', 100, 60)"
                ).fetchone()
            )
        )
        thread.start()
        deadline = time.monotonic() + 15
        blocked = False
        while time.monotonic() < deadline and not blocked:
            blockers = watcher.execute("select pg_blocking_pids(%s)", (decider_pid,)).fetchone()
            blocked = runner.info.backend_pid in blockers[0]  # type: ignore[index]
        assert blocked, "a decision on a row the run deleted waits for the run's commit"
        runner.commit()
        thread.join(20)
    assert result == [(True, 99)]
    left = dict(conn.execute("select key, count from pgshield.rate_limit_state").fetchall())
    assert left == {"m-just": 1, "m-old": 1, "m-live": 7}


@pytest.mark.slow
def test_a_run_pauses_between_batches(db: str, conn: psycopg.Connection) -> None:
    """With a pause ratio, the run sleeps after each batch (seen as PgSleep), then finishes."""
    conn.execute("select pgshield.set_clock(%s)", (NOW,))
    conn.execute("select pgshield.set_maintenance_task('rate_limit', p_batch_size => 5000)")
    conn.execute(
        "insert into pgshield.rate_limit_state"
        " (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)"
        " select 'm-p-' || g, 60, 'fixed_window', 10, %(now)s - interval '1 hour', 1,"
        "        %(now)s - interval '59 minutes' from generate_series(1, 200000) g",
        {"now": NOW},
    )
    runs: list[dict] = []
    with psycopg.connect(db, autocommit=True) as runner:
        pid = runner.info.backend_pid

        def run() -> None:
            row = runner.execute("select pgshield.run_maintenance(interval '5 minutes', 4)")
            runs.append(row.fetchone()[0])  # type: ignore[index]

        thread = threading.Thread(target=run)
        thread.start()
        waits: set[str] = set()
        while thread.is_alive() and "PgSleep" not in waits:
            row = conn.execute(
                "select wait_event from pg_stat_activity where pid = %s", (pid,)
            ).fetchone()
            waits.add(row[0] if row and row[0] else "")
        thread.join(300)
    assert "PgSleep" in waits
    task = next(t for t in runs[0]["tasks"] if t["task"] == "rate_limit")
    assert (task["status"], task["deleted"], task["batches"]) == ("done", 200000, 41)

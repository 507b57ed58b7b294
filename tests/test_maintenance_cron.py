"""A real pg_cron run: a job scheduled through schedule_maintenance runs and cleans up.

pg_cron's scheduler lives in one database per server (``cron.database_name``) and the test
databases are clones with other names, so this test starts its own small cluster whose
scheduler database holds the pack (as on Supabase, where everything is in ``postgres``), plus a
second pack database that gets its job through the statement schedule_maintenance's error
names. pg_cron 1.4 (Debian bookworm) schedules by the minute: the test waits for the real clock,
polling cron.job_run_details until a deadline.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgshield import Shield, ShieldError
from pgshield.doctor import diagnose
from pgshield.embedded import Cluster, find_bindir
from pgshield.errors import MigrationError, SetupError
from pgshield.migrations import discover, migrate
from pgshield.provision import prepare_database

CRON_DB = "pgshield_cron"
OTHER_DB = "pgshield_other"


def _cluster_or_skip() -> Cluster:
    try:
        bindir = find_bindir()
    except SetupError as exc:
        pytest.skip(f"no local Postgres binaries: {exc}")
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="pgshield-cron-")), bindir=bindir, fast=True)
    if not cluster.has_pg_cron:
        pytest.skip("pg_cron is not installed on this machine")
    return cluster


@pytest.fixture(scope="module")
def cron_cluster() -> Iterator[Cluster]:
    cluster = _cluster_or_skip()
    try:
        cluster.init()
        with open(cluster.data / "postgresql.conf", "a") as fh:  # later lines win
            fh.write(f"cron.database_name = '{CRON_DB}'\ncron.host = '127.0.0.1'\n")
        cluster.start()
        with psycopg.connect(cluster.dsn("postgres"), autocommit=True) as conn:
            for name in (CRON_DB, OTHER_DB):
                conn.execute(f"create database {name}")
        for name in (CRON_DB, OTHER_DB):
            prepare_database(cluster.dsn(name))
        with psycopg.connect(cluster.dsn(CRON_DB), autocommit=True) as conn:
            conn.execute("create extension pg_cron")
        yield cluster
    finally:
        cluster.destroy()


def _state(dsn: str) -> None:
    """Expired rows (in the real past) and one live key, on the real clock."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "insert into pgshield.rate_limit_state"
            " (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)"
            " select 'expired-' || g, 60, 'fixed_window', 10, now() - interval '2 hours', 1,"
            "        now() - interval '1 hour' from generate_series(1, 50) g"
        )
        conn.execute("select public.increment_rate_limit('live', 10, 86400)")


def _keys(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute("select key from pgshield.rate_limit_state")]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_scheduled_job_really_runs_and_cleans_up(cron_cluster: Cluster) -> None:
    cron_dsn, other_dsn = cron_cluster.dsn(CRON_DB), cron_cluster.dsn(OTHER_DB)
    _state(cron_dsn)
    _state(other_dsn)
    with Shield(cron_dsn) as shield:
        job = shield.maintenance.schedule()
        again = shield.maintenance.schedule()  # idempotent by name: the same job
        assert (job.jobid, job.database, job.schedule) == (again.jobid, CRON_DB, "* * * * *")
        command = shield.maintenance.job_command()
        assert job.command == command and "pgshield.run_maintenance_step(" in command
    with Shield(other_dsn) as other, pytest.raises(ShieldError) as info:
        other.maintenance.schedule()
    assert info.value.sqlstate == "55000" and info.value.hint
    statement = info.value.hint.split(" and run: ", 1)[1]
    with psycopg.connect(cron_dsn, autocommit=True) as conn:
        other_id = conn.execute(statement).fetchone()[0]  # type: ignore[index]
        jobs = dict(conn.execute("select jobid, database from cron.job").fetchall())
    assert jobs == {job.jobid: CRON_DB, other_id: OTHER_DB}

    deadline = time.monotonic() + 140  # the next minute boundary, then the run itself
    finished: dict[int, str] = {}
    while time.monotonic() < deadline and len(finished) < 2:
        with psycopg.connect(cron_dsn) as conn:
            finished = dict(
                conn.execute(  # type: ignore[arg-type]
                    "select jobid, status from cron.job_run_details"
                    " where status in ('succeeded', 'failed')"
                ).fetchall()
            )
        time.sleep(1)
    assert finished == {job.jobid: "succeeded", other_id: "succeeded"}, finished
    assert _keys(cron_dsn) == ["live"] and _keys(other_dsn) == ["live"]

    with Shield(cron_dsn) as shield:
        status = shield.maintenance.status()
        assert status.job and status.job.jobid == job.jobid
        assert status.runs and status.runs[0]["status"] == "succeeded"
        assert status.failures == 0
        assert shield.maintenance.unschedule() is True
        assert shield.maintenance.unschedule() is False
    with psycopg.connect(other_dsn) as conn:
        recorded = conn.execute(
            "select result -> 'tasks' -> 0 ->> 'deleted' from pgshield.maintenance_runs"
        ).fetchall()
    assert ("50",) in recorded


def test_the_statements_for_another_database_schedule_the_job_as_the_pack_owner(
    cron_cluster: Cluster,
) -> None:
    """Run as a superuser in the scheduler's database, the hint's statement must record the
    pack's non-superuser owner as the job's user: pg_cron runs a job as its user, and the job
    calls functions that owner can replace. The unschedule hint must find that job too."""
    owner_role, owned = "supabase_postgres", "pgshield_owned"  # the compat stub's owner role
    with psycopg.connect(cron_cluster.dsn("postgres"), autocommit=True) as conn:
        conn.execute(f"create database {owned}")
    prepare_database(cron_cluster.dsn(owned), apply_migrations=False)
    with psycopg.connect(cron_cluster.dsn(owned), autocommit=True) as conn:
        conn.execute(f"alter database {owned} owner to {owner_role}")
    hints = []
    with psycopg.connect(cron_cluster.dsn(owned, user=owner_role), autocommit=True) as conn:
        migrate(conn)
        for call in ("schedule_maintenance()", "unschedule_maintenance()"):
            with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as info:
                conn.execute(f"select pgshield.{call}")
            hints.append(info.value.diag.message_hint or "")
    schedule = re.search(
        rf"select cron\.schedule_in_database\(.*'{owned}'(, username => '[a-z_]+')?\);", hints[0]
    )
    unschedule = re.search(r"select cron\.unschedule\(.*?;", hints[1])
    assert schedule and unschedule, hints
    with psycopg.connect(cron_cluster.dsn(CRON_DB), autocommit=True) as conn:
        jobid = conn.execute(schedule.group(0)).fetchone()[0]  # type: ignore[index]
        job = conn.execute(
            "select username, database, jobname from cron.job where jobid = %s", (jobid,)
        ).fetchone()
        assert job == (owner_role, owned, f"pgshield-maintenance-{owned}")
        conn.execute(unschedule.group(0))
        assert conn.execute(
            "select count(*) from cron.job where jobid = %s", (jobid,)
        ).fetchone() == (0,)


def test_the_upgrade_moves_an_earlier_job_to_the_procedure(cron_cluster: Cluster) -> None:
    """A job scheduled by an earlier release (its command, its schedule) calls the procedure.

    The delta migration is applied again (its statements are all replaceable) on a database
    whose job still has the earlier command; a job of the user's with the same command but
    another name is left alone.
    """
    migration = next(
        m for m in discover() if m.path.name.endswith("_commit_maintenance_in_steps.sql")
    )
    old = "select pgshield.run_maintenance()"
    with psycopg.connect(cron_cluster.dsn(CRON_DB), autocommit=True) as conn:
        name = f"pgshield-maintenance-{CRON_DB}"
        conn.execute("select cron.schedule(%s, '*/7 * * * *', %s)", (name, old))
        conn.execute("select cron.schedule('users-own-job', '0 * * * *', %s)", (old,))
        try:
            before = [
                c for c in diagnose(cron_cluster.dsn(CRON_DB)) if c["check"].endswith("command")
            ]
            with conn.transaction():
                conn.execute(migration.path.read_text())
            after = [
                c for c in diagnose(cron_cluster.dsn(CRON_DB)) if c["check"].endswith("command")
            ]
            command = conn.execute("select pgshield.maintenance_job_command()").fetchone()[0]  # type: ignore[index]
            jobs = dict(
                conn.execute(  # type: ignore[arg-type]
                    "select jobname, schedule || ' ' || command from cron.job"
                    " where jobname = any(%s)",
                    ([name, "users-own-job"],),
                ).fetchall()
            )
        finally:
            for job in (name, "users-own-job"):
                conn.execute("select cron.unschedule(%s)", (job,))
    # doctor says the job runs an earlier command until the migration changes it.
    assert [(c["check"], c["status"]) for c in before] == [("maintenance job command", "warn")]
    assert after == []
    assert jobs == {
        name: f"*/7 * * * * {command}",
        "users-own-job": f"0 * * * * {old}",
    }


def test_an_owner_without_usage_on_schema_cron_cleans_up_and_is_told_the_grant() -> None:
    """A superuser created pg_cron; the pack's non-superuser owner may not use schema cron.

    Self-hosted Postgres with an application owner role. The released migration
    20261203090000 names cron.job, so it needs USAGE while it applies (without it: 42501, and
    nothing of it is applied); with the grant revoked again the cleanup runs without a failed
    task, the status and the doctor say why there is no job, scheduling answers 42501 with the
    grant in its hint, and after that grant the job can be scheduled.
    """
    cluster = _cluster_or_skip()
    owner_role = "supabase_postgres"  # the compat stub's non-superuser owner
    try:
        cluster.init()
        cluster.start()
        su = cluster.dsn("postgres")
        with psycopg.connect(su, autocommit=True) as conn:
            conn.execute("create extension pg_cron")
        prepare_database(su, apply_migrations=False)
        with psycopg.connect(su, autocommit=True) as conn:
            conn.execute(f"alter database postgres owner to {owner_role}")
            usage = conn.execute(
                "select has_schema_privilege(%s, 'cron', 'usage')", (owner_role,)
            ).fetchone()
        assert usage == (False,)
        owner = cluster.dsn("postgres", user=owner_role)
        everything = discover()
        earlier = [m for m in everything if m.version < "20261203090000"]
        with psycopg.connect(owner, autocommit=True) as conn:
            migrate(conn, migrations=earlier)
            with pytest.raises(MigrationError, match="permission denied for schema cron") as stop:
                migrate(conn, migrations=everything)
            assert "20261203090000_commit_maintenance_in_steps.sql" in str(stop.value)
        with psycopg.connect(su, autocommit=True) as conn:
            conn.execute(f"grant usage on schema cron to {owner_role}")
        with psycopg.connect(owner, autocommit=True) as conn:
            applied = migrate(conn, migrations=everything)
            assert [m.filename for m in applied] == [
                m.filename for m in everything if m not in earlier
            ]
        with psycopg.connect(su, autocommit=True) as conn:
            conn.execute(f"revoke usage on schema cron from {owner_role}")
        with psycopg.connect(owner, autocommit=True) as conn:
            run = conn.execute("select pgshield.run_maintenance('2 seconds')").fetchone()[0]  # type: ignore[index]
            failed = [t for t in run["tasks"] if t["status"] == "failed"]
            assert not failed, failed
            status = conn.execute("select pgshield.maintenance_status()").fetchone()[0]  # type: ignore[index]
            assert status["cron"]["usage"] is False and status["job"] is None
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                conn.execute("select pgshield.schedule_maintenance()")
            assert refused.value.diag.message_hint == (
                f"as a superuser run: grant usage on schema cron to {owner_role};"
            )
        told = [c for c in diagnose(owner) if c["check"] == "maintenance job"]
        assert [c["status"] for c in told] == ["missing"]
        assert f"grant usage on schema cron to {owner_role};" in told[0]["detail"]
        with psycopg.connect(su, autocommit=True) as conn:
            conn.execute(f"grant usage on schema cron to {owner_role}")
        with psycopg.connect(owner, autocommit=True) as conn:
            job = conn.execute("select pgshield.schedule_maintenance()").fetchone()[0]  # type: ignore[index]
            status = conn.execute("select pgshield.maintenance_status()").fetchone()[0]  # type: ignore[index]
            assert status["cron"]["usage"] is True
            assert status["job"]["jobid"] == job["jobid"]
            assert conn.execute("select pgshield.unschedule_maintenance()").fetchone() == (True,)
    finally:
        cluster.destroy()

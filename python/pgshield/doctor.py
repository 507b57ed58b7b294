"""``pgshield doctor``: what a database has and what the pack needs from it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import conninfo

from pgshield.client import connect
from pgshield.errors import SCHEMA_HINT, ShieldError
from pgshield.migrations import status as migration_status


def cron_status(
    available: bool, installed: str | None, preloaded: bool, cron_db: str | None, here: str
) -> tuple[bool | None, str]:
    """pg_cron's state for the maintenance jobs, and the exact step that is missing."""
    if installed:
        return True, f"version {installed} installed in this database"
    if not available:
        return False, (
            "not available on this server: install it (Debian: postgresql-<N>-cron; on Supabase"
            " it is there) to run the maintenance jobs"
        )
    if not preloaded:
        return None, (
            "available but not loaded: add pg_cron to shared_preload_libraries, restart, then"
            " run `create extension pg_cron;`"
        )
    if cron_db and cron_db != here:
        return None, (
            f"its scheduler runs in database {cron_db!r}, not {here!r}: run"
            f" `create extension pg_cron;` in {cron_db!r} and schedule this database's jobs"
            " with cron.schedule_in_database(...)"
        )
    return None, "loaded for this database but not created: run `create extension pg_cron;`"


def _cron_settings(conn: psycopg.Connection) -> tuple[str, str | None, bool]:
    """This database, pg_cron's scheduler database and whether pg_cron is preloaded.

    A role that may not read those settings (a non-superuser; pg_cron's database_name is
    superuser-only even with missing_ok) learns them from pg_cron's launcher process.
    """
    try:
        with conn.transaction():
            row = conn.execute(
                "select current_database(), current_setting('cron.database_name', true),"
                " coalesce(current_setting('shared_preload_libraries', true), '')"
                " ~ '(^|[ ,])pg_cron($|[ ,])'"
            ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        row = conn.execute(
            "select current_database(), l.datname, l.datname is not null"
            " from (select) x left join lateral (select a.datname from pg_stat_activity a"
            "  where a.backend_type = 'pg_cron launcher' limit 1) l on true"
        ).fetchone()
    assert row is not None
    return row[0], row[1], bool(row[2])


def diagnose(dsn: str) -> list[dict[str, Any]]:
    """Checks as rows of ``check``, ``status`` (ok / warn / missing) and ``detail``."""
    checks: list[dict[str, Any]] = []

    def add(check: str, ok: bool | None, detail: str) -> None:
        status = "ok" if ok else ("warn" if ok is None else "missing")
        checks.append({"check": check, "status": status, "detail": detail})

    with connect(dsn, timeout=10) as conn:
        server = conn.execute("show server_version").fetchone()
        add("connection", True, f"PostgreSQL {server[0] if server else '?'}")
        access = conn.execute(
            "select n.oid is not null, coalesce(has_schema_privilege(n.oid, 'usage'), false),"
            " current_user from (select) x left join pg_namespace n on n.nspname = 'pgshield'"
        ).fetchone()
        if access is not None and access[0] and not access[1]:
            # Every later check reads the pack's schema: stop at the one that says why not.
            add("pack", False, f"role {access[2]} may not use schema pgshield: {SCHEMA_HINT}")
            return checks
        installed = conn.execute(
            "select to_regprocedure('pgshield.version()') is not null"
        ).fetchone()
        if installed and installed[0]:
            version = conn.execute("select pgshield.version()").fetchone()
            add("pack", True, f"pgshield {version[0] if version else '?'} installed")
        else:
            add("pack", False, "pgshield is not installed: run `pgshield migrate`")
        states = migration_status(conn)
        pending = [s.migration.filename for s in states if not s.applied]
        edited = [s.migration.filename for s in states if s.edited]
        add(
            "migrations",
            not pending,
            f"{len(states) - len(pending)} applied, {len(pending)} pending"
            + (f": {', '.join(pending)}" if pending else ""),
        )
        if edited:
            add("edited migrations", False, ", ".join(edited))
        exts = dict(
            conn.execute(
                "select a.name, e.extversion from pg_available_extensions a"
                " left join pg_extension e on e.extname = a.name"
                " where a.name in ('pg_cron', 'pgtap')"
            ).fetchall()
        )
        cron = _cron_settings(conn)
        add(
            "pg_cron",
            *cron_status("pg_cron" in exts, exts.get("pg_cron"), cron[2], cron[1], cron[0]),
        )
        for check in maintenance_checks(conn, dsn):
            add(*check)
        if "pgtap" not in exts:
            add("pgtap", None, "not available: only the pgTAP tests need it")
        else:
            add(
                "pgtap",
                True,
                f"version {exts['pgtap']} installed" if exts["pgtap"] else "available",
            )
        roles = {
            r[0]
            for r in conn.execute(
                "select rolname from pg_roles"
                " where rolname in ('anon', 'authenticated', 'service_role')"
            )
        }
        missing = {"anon", "authenticated", "service_role"} - roles
        add(
            "supabase roles",
            not missing,
            "present" if not missing else f"missing: {', '.join(sorted(missing))}",
        )
    return checks


JOB_SQL = (
    "select j.jobid, j.schedule, j.active, j.command,"
    " (select jsonb_agg(to_jsonb(r) order by r.runid desc) from (select d.runid, d.status,"
    "   d.start_time, d.return_message from cron.job_run_details d where d.jobid = j.jobid"
    "   order by d.runid desc limit 10) r) as runs"
    " from cron.job j where j.jobname = %(name)s and j.database = %(db)s"
)


def _job_command(conn: psycopg.Connection) -> str | None:
    """The command this release's maintenance job runs (None before it had one)."""
    found = conn.execute(
        "select to_regprocedure('pgshield.maintenance_job_command(interval, float8)') is not null"
    ).fetchone()
    if not (found and found[0]):
        return None
    row = conn.execute("select pgshield.maintenance_job_command()").fetchone()
    return row[0] if row else None


def maintenance_checks(conn: psycopg.Connection, dsn: str) -> list[tuple[str, bool | None, str]]:
    """The maintenance job, its last runs and failures, and state past its expected size."""
    found = conn.execute(
        "select to_regprocedure('pgshield.maintenance_status(integer)') is not null"
    ).fetchone()
    if not (found and found[0]):
        return []
    status = conn.execute("select pgshield.maintenance_status(10)").fetchone()
    assert status is not None
    st = status[0]
    cron = st["cron"]
    name = f"pgshield-maintenance-{cron['here']}"
    job, where = None, "this database"
    if cron.get("version") and cron.get("usage") is False:
        owner = conn.execute(
            "select nspowner::regrole::text from pg_namespace where nspname = 'pgshield'"
        ).fetchone()
        role = owner[0] if owner else "<owner>"
        return [
            (
                "maintenance job",
                False,
                "the pack's owner may not use schema cron, so it can neither see nor schedule"
                f" its job: as a superuser run `grant usage on schema cron to {role};`",
            )
        ]
    if cron.get("version"):
        if st["job"]:
            job = {**st["job"], "runs": st["runs"]}
    elif cron.get("preloaded") and cron.get("database") != cron["here"]:
        where = f"database {cron['database']!r}"
        try:
            with connect(conninfo.make_conninfo(dsn, dbname=cron["database"]), timeout=5) as c:
                row = c.execute(JOB_SQL, {"name": name, "db": cron["here"]}).fetchone()
            if row:
                job = {
                    "jobid": row[0],
                    "schedule": row[1],
                    "active": row[2],
                    "command": row[3],
                    "runs": row[4] or [],
                }
        except (psycopg.Error, ShieldError) as exc:
            return [("maintenance job", None, f"could not look in {where}: {exc}")]
    out: list[tuple[str, bool | None, str]] = []
    if job is None:
        out.append(("maintenance job", None, f"none in {where}: run `pgshield cron install`"))
    else:
        runs = job["runs"]
        failed = [r for r in runs if r.get("status") == "failed"]
        last = runs[0] if runs else None
        detail = (
            f"{name} (id {job['jobid']}) on {job['schedule']!r} in {where}"
            + ("" if job["active"] else ", inactive")
            + (f"; last run {last['status']} at {last['start_time']}" if last else "; no run yet")
        )
        out.append(("maintenance job", bool(job["active"]), detail))
        expected = _job_command(conn)
        if expected and job.get("command") != expected:
            out.append(
                (
                    "maintenance job command",
                    None,
                    "not this release's (an earlier one keeps every deletion of a run locked"
                    " until the run ends): run `pgshield cron install` again",
                )
            )
        if failed:
            msg = (failed[0].get("return_message") or "").strip()
            out.append(
                ("maintenance failures", False, f"{len(failed)} of the last {len(runs)}: {msg}")
            )
    errors = [t for t in st["tasks"] if t.get("last_status") == "failed"]
    if errors:
        out.append(
            (
                "maintenance tasks",
                False,
                "; ".join(f"{t['task']}: {t['last_error']}" for t in errors),
            )
        )
    big = [
        f"{o['table']} ~{o['rows']} rows (expected <= {t['max_rows']})"
        for t in st["tasks"]
        for o in t["oversized"]
    ]
    behind = [t["task"] for t in st["tasks"] if t.get("last_status") == "more"]
    if big or behind:
        detail = "; ".join(big + [f"{b}: last run stopped at its time budget" for b in behind])
        out.append(("state size", None, detail))
    else:
        out.append(("state size", True, "every table within its expected size"))
    return out

"""``pgshield doctor``: what a database has and what the pack needs from it."""

from __future__ import annotations

from typing import Any

from pgshield.client import connect
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


def diagnose(dsn: str) -> list[dict[str, Any]]:
    """Checks as rows of ``check``, ``status`` (ok / warn / missing) and ``detail``."""
    checks: list[dict[str, Any]] = []

    def add(check: str, ok: bool | None, detail: str) -> None:
        status = "ok" if ok else ("warn" if ok is None else "missing")
        checks.append({"check": check, "status": status, "detail": detail})

    with connect(dsn, timeout=10) as conn:
        server = conn.execute("show server_version").fetchone()
        add("connection", True, f"PostgreSQL {server[0] if server else '?'}")
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
        cron = conn.execute(
            "select current_database(), current_setting('cron.database_name', true),"
            " coalesce(current_setting('shared_preload_libraries', true), '')"
            " ~ '(^|[ ,])pg_cron($|[ ,])'"
        ).fetchone()
        assert cron is not None
        add(
            "pg_cron",
            *cron_status("pg_cron" in exts, exts.get("pg_cron"), cron[2], cron[1], cron[0]),
        )
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

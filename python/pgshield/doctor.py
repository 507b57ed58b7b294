"""``pgshield doctor``: what a database has and what the pack needs from it."""

from __future__ import annotations

from typing import Any

from pgshield.client import connect
from pgshield.migrations import status as migration_status


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
        cron_db = conn.execute("select current_setting('cron.database_name', true)").fetchone()
        if "pg_cron" not in exts:
            add("pg_cron", False, "not available: the maintenance jobs need it")
        elif exts["pg_cron"]:
            add("pg_cron", True, f"version {exts['pg_cron']} installed")
        else:
            where = cron_db[0] if cron_db and cron_db[0] else "?"
            add("pg_cron", None, f"available; installed in database {where!r}, not this one")
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

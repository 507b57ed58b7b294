"""Maintenance results: frozen dataclasses with the fields users read, and their row parsers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _time(value: Any) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class TaskRun:
    """What one maintenance run did with one task.

    ``status`` is ``done`` (less than a batch was left), ``more`` (the time budget ran out
    first: the next run goes on), ``skipped`` (the module is not installed) or ``failed``
    (``error`` holds the SQLSTATE and message; that task's batches were rolled back).
    """

    task: str
    module: str
    status: str
    deleted: int
    batches: int
    error: str | None = None


@dataclass(frozen=True)
class MaintenanceRun:
    """The result of ``pgshield.run_maintenance()``: one entry per task, in task order.

    ``complete`` is False when a task ran out of time or failed; ``skipped`` says why the run
    did nothing (another run was in progress).
    """

    started_at: dt.datetime | None
    duration_ms: int
    complete: bool
    tasks: tuple[TaskRun, ...]
    skipped: str | None = None

    @property
    def deleted(self) -> int:
        """Rows deleted by every task together."""
        return sum(t.deleted for t in self.tasks)

    def task(self, name: str) -> TaskRun | None:
        """The entry of task ``name`` (None when the run had none)."""
        return next((t for t in self.tasks if t.task == name), None)


def parse_run(data: Mapping[str, Any]) -> MaintenanceRun:
    return MaintenanceRun(
        started_at=_time(data.get("started_at")),
        duration_ms=int(data["duration_ms"]),
        complete=bool(data["complete"]),
        tasks=tuple(
            TaskRun(
                task=t["task"],
                module=t["module"],
                status=t["status"],
                deleted=int(t["deleted"]),
                batches=int(t["batches"]),
                error=t.get("error"),
            )
            for t in data["tasks"]
        ),
        skipped=data.get("skipped"),
    )


@dataclass(frozen=True)
class Job:
    """The pg_cron job of this database's maintenance (``cron.job``)."""

    job_name: str
    jobid: int
    schedule: str
    command: str
    database: str


def parse_job(data: Mapping[str, Any]) -> Job:
    return Job(
        job_name=data.get("job_name") or data["jobname"],
        jobid=int(data["jobid"]),
        schedule=data["schedule"],
        command=data["command"],
        database=data["database"],
    )


@dataclass(frozen=True)
class MaintenanceStatus:
    """``pgshield.maintenance_status()``: pg_cron, the job and its runs, totals and tasks.

    ``cron`` holds ``version`` (None: pg_cron is not created in this database), ``preloaded``,
    ``database`` (where its scheduler runs), ``known`` (False: this role could see neither) and
    ``here``. ``runs`` are the job's last entries
    of ``cron.job_run_details``, newest first; ``failures`` counts its failed runs on record.
    Each task lists its settings, counters, ``installed`` and ``oversized`` tables.
    """

    cron: dict[str, Any]
    job: Job | None
    runs: tuple[dict[str, Any], ...]
    failures: int
    totals: dict[str, Any]
    tasks: tuple[dict[str, Any], ...]


def parse_status(data: Mapping[str, Any]) -> MaintenanceStatus:
    return MaintenanceStatus(
        cron=dict(data["cron"]),
        job=parse_job(data["job"]) if data.get("job") else None,
        runs=tuple(dict(r) for r in data["runs"]),
        failures=int(data["failures"]),
        totals=dict(data["totals"] or {}),
        tasks=tuple(dict(t) for t in data["tasks"]),
    )

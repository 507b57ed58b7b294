"""Maintenance ops: one :class:`~pgshield.client.Op` builder per SQL entry point."""

from __future__ import annotations

import datetime as dt

from pgshield.client import Op, scalar
from pgshield.maintenance.results import (
    Job,
    MaintenanceRun,
    MaintenanceStatus,
    parse_job,
    parse_run,
    parse_status,
)

Seconds = int | float | dt.timedelta


def interval(value: Seconds | None) -> dt.timedelta | None:
    """Seconds or a ``timedelta`` as a ``timedelta`` (None stays None)."""
    if value is None or isinstance(value, dt.timedelta):
        return value
    return dt.timedelta(seconds=float(value))


def run_op(time_budget: Seconds, pause_ratio: float | None = None) -> Op[MaintenanceRun]:
    if pause_ratio is None:  # the SQL default pause
        return Op(
            "select pgshield.run_maintenance(%(budget)s::interval) as result",
            {"budget": interval(time_budget)},
            lambda rows: parse_run(scalar(rows)),
        )
    return Op(
        "select pgshield.run_maintenance(%(budget)s::interval, %(ratio)s::float8) as result",
        {"budget": interval(time_budget), "ratio": pause_ratio},
        lambda rows: parse_run(scalar(rows)),
    )


def job_command_op(time_budget: Seconds, pause_ratio: float) -> Op[str]:
    return Op(
        "select pgshield.maintenance_job_command(%(budget)s::interval, %(ratio)s::float8)",
        {"budget": interval(time_budget), "ratio": pause_ratio},
        scalar,
    )


def schedule_op(schedule: str) -> Op[Job]:
    return Op(
        "select pgshield.schedule_maintenance(%(schedule)s::text) as job",
        {"schedule": schedule},
        lambda rows: parse_job(scalar(rows)),
    )


def unschedule_op() -> Op[bool]:
    return Op("select pgshield.unschedule_maintenance() as removed", {}, scalar)


def status_op(runs: int) -> Op[MaintenanceStatus]:
    return Op(
        "select pgshield.maintenance_status(%(runs)s::integer) as status",
        {"runs": runs},
        lambda rows: parse_status(scalar(rows)),
    )


def set_task_op(
    task: str, batch_size: int | None, retention: Seconds | None, enabled: bool | None
) -> Op[dict]:
    return Op(
        "select pgshield.set_maintenance_task(%(task)s::text, %(batch)s::integer,"
        " %(retention)s::interval, %(enabled)s::boolean) as task",
        {"task": task, "batch": batch_size, "retention": interval(retention), "enabled": enabled},
        scalar,
    )


def metrics_op() -> Op[str]:
    return Op("select pgshield.metrics() as metrics", {}, scalar)

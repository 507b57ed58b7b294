"""Maintenance methods: ``shield.maintenance.<method>(...)``.

The synchronous source. ``methods_async.py`` is generated from it (``python -m pgshield._twin``).
"""

from __future__ import annotations

import psycopg

from pgshield.maintenance.ops import (
    Seconds,
    job_command_op,
    metrics_op,
    run_op,
    schedule_op,
    set_task_op,
    status_op,
    unschedule_op,
)
from pgshield.maintenance.results import Job, MaintenanceRun, MaintenanceStatus
from pgshield.namespace import Namespace


class Maintenance(Namespace):
    """Cleanup, its pg_cron job and metrics (``sql/maintenance.sql``): ``shield.maintenance``.

    service_role and the owner only (NotAllowed for others). Every method takes ``conn=`` to
    run in the caller's own transaction.
    """

    def run(
        self,
        *,
        time_budget: Seconds = 5,
        pause_ratio: float | None = None,
        conn: psycopg.Connection | None = None,
    ) -> MaintenanceRun:
        """Run every installed module's cleanup in batches for at most ``time_budget`` seconds.

        After each batch the run pauses ``pause_ratio`` times as long as the batch took (None:
        the database's default, 1; 0: back to back), so that decisions beside it keep their
        latency. What each task deleted comes back per task; a task cut short by the budget has
        status ``more`` and the next run goes on. Raises InvalidInput for a budget that is not
        positive or above 10 minutes, or a pause ratio outside 0 to 100.
        """
        return self._call(run_op(time_budget, pause_ratio), conn)

    def job_command(
        self,
        *,
        time_budget: Seconds = 5,
        pause_ratio: float = 1,
        conn: psycopg.Connection | None = None,
    ) -> str:
        """The pg_cron job's command: a ``do`` block that runs maintenance in committed steps.

        Every module's cleanup for at most ``time_budget`` seconds, committed every 100 ms (so a
        decision never waits long for a row the cleanup deleted), with a pause of ``pause_ratio``
        times each step's duration between steps. Execute it on its own in an autocommit
        session (it commits; in a transaction block it fails with 2D000). Raises InvalidInput
        as ``run`` does.
        """
        return self._call(job_command_op(time_budget, pause_ratio), conn)

    def schedule(
        self, schedule: str = "* * * * *", *, conn: psycopg.Connection | None = None
    ) -> Job:
        """Create or replace this database's pg_cron job that runs maintenance on ``schedule``.

        The job runs ``job_command()`` (defaults: a 5 s budget, pause ratio 1).

        Raises InvalidInput for a bad schedule, and ShieldError (55000) when pg_cron is missing
        or runs in another database; its ``hint`` then holds the statement to run there.
        """
        return self._call(schedule_op(schedule), conn)

    def unschedule(self, *, conn: psycopg.Connection | None = None) -> bool:
        """Remove this database's maintenance job; True when there was one."""
        return self._call(unschedule_op(), conn)

    def status(
        self, *, runs: int = 10, conn: psycopg.Connection | None = None
    ) -> MaintenanceStatus:
        """pg_cron's state, the job and its last ``runs`` runs, failures, totals and tasks."""
        return self._call(status_op(runs), conn)

    def set_task(
        self,
        task: str,
        *,
        batch_size: int | None = None,
        retention: Seconds | None = None,
        enabled: bool | None = None,
        conn: psycopg.Connection | None = None,
    ) -> dict:
        """Change one task's batch size, retention or enabled flag (None keeps it)."""
        return self._call(set_task_op(task, batch_size, retention, enabled), conn)

    def metrics(self, *, conn: psycopg.Connection | None = None) -> str:
        """The pack's state in the Prometheus text exposition format."""
        return self._call(metrics_op(), conn)

"""The maintenance module (``sql/maintenance.sql``): cleanup on pg_cron, and metrics.

``shield.maintenance.run()`` calls every installed module's cleanup function in batches within
a time budget; ``schedule()`` makes pg_cron do it every minute; ``metrics()`` is the pack's
state as Prometheus text (``pgshield metrics --serve PORT`` serves it).
"""

from pgshield.maintenance.methods import Maintenance
from pgshield.maintenance.methods_async import AsyncMaintenance
from pgshield.maintenance.results import Job, MaintenanceRun, MaintenanceStatus, TaskRun

__all__ = [
    "AsyncMaintenance",
    "Job",
    "Maintenance",
    "MaintenanceRun",
    "MaintenanceStatus",
    "TaskRun",
]

"""pgshield: guard rails that live in Postgres, shared by every instance of an application."""

from pgshield.breaker import (
    AsyncBreaker,
    AsyncBreakers,
    Breaker,
    BreakerOpen,
    Breakers,
    BreakerStatus,
)
from pgshield.errors import (
    Conflict,
    InvalidInput,
    MigrationError,
    NotAllowed,
    NotFound,
    RateLimited,
    Retryable,
    SetupError,
    ShieldError,
    Unavailable,
)
from pgshield.guard import AsyncGuard, Guard, GuardRule, GuardStatus
from pgshield.jsonb import AsyncJsonbMerges, JsonbMerges, JsonbTarget
from pgshield.maintenance import AsyncMaintenance, Maintenance, MaintenanceRun, MaintenanceStatus
from pgshield.rate_limit import (
    AsyncRateLimiter,
    AsyncRateLimits,
    Counter,
    Decision,
    Policy,
    RateLimiter,
    RateLimits,
    Usage,
    WindowState,
)
from pgshield.shield import AsyncShield, Shield
from pgshield.teams import AsyncTeams, AuditEntry, Invitation, Member, Team, Teams, TeamsStatus

__version__ = "0.2.0"

__all__ = [
    "AsyncBreaker",
    "AsyncBreakers",
    "AsyncGuard",
    "AsyncJsonbMerges",
    "AsyncMaintenance",
    "AsyncRateLimiter",
    "AsyncRateLimits",
    "AsyncShield",
    "AsyncTeams",
    "AuditEntry",
    "Breaker",
    "BreakerOpen",
    "BreakerStatus",
    "Breakers",
    "Conflict",
    "Counter",
    "Decision",
    "Guard",
    "GuardRule",
    "GuardStatus",
    "InvalidInput",
    "Invitation",
    "JsonbMerges",
    "JsonbTarget",
    "Maintenance",
    "MaintenanceRun",
    "MaintenanceStatus",
    "Member",
    "MigrationError",
    "NotAllowed",
    "NotFound",
    "Policy",
    "RateLimited",
    "RateLimiter",
    "RateLimits",
    "Retryable",
    "SetupError",
    "Shield",
    "ShieldError",
    "Team",
    "Teams",
    "TeamsStatus",
    "Unavailable",
    "Usage",
    "WindowState",
    "__version__",
]

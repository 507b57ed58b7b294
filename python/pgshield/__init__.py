"""pgshield: guard rails that live in Postgres, shared by every instance of an application."""

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
from pgshield.jsonb import AsyncJsonbMerges, JsonbMerges, JsonbTarget
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

__version__ = "0.2.0"

__all__ = [
    "AsyncJsonbMerges",
    "AsyncRateLimiter",
    "AsyncRateLimits",
    "AsyncShield",
    "Conflict",
    "Counter",
    "Decision",
    "InvalidInput",
    "JsonbMerges",
    "JsonbTarget",
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
    "Unavailable",
    "Usage",
    "WindowState",
    "__version__",
]

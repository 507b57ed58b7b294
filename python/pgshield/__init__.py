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
from pgshield.jsonb import JsonbTarget
from pgshield.rate_limit import (
    AsyncRateLimiter,
    Counter,
    Decision,
    Policy,
    RateLimiter,
    Usage,
    WindowState,
)
from pgshield.shield import AsyncShield, Shield

__version__ = "0.2.0"

__all__ = [
    "AsyncRateLimiter",
    "AsyncShield",
    "Conflict",
    "Counter",
    "Decision",
    "InvalidInput",
    "JsonbTarget",
    "MigrationError",
    "NotAllowed",
    "NotFound",
    "Policy",
    "RateLimited",
    "RateLimiter",
    "Retryable",
    "SetupError",
    "Shield",
    "ShieldError",
    "Unavailable",
    "Usage",
    "WindowState",
    "__version__",
]

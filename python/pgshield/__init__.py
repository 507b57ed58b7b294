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
from pgshield.shield import AsyncShield, Shield

__version__ = "0.1.0"

__all__ = [
    "AsyncShield",
    "Conflict",
    "InvalidInput",
    "MigrationError",
    "NotAllowed",
    "NotFound",
    "RateLimited",
    "Retryable",
    "SetupError",
    "Shield",
    "ShieldError",
    "Unavailable",
    "__version__",
]

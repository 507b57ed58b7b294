"""The rate_limit module (``sql/rate_limit.sql``): atomic rate limits kept in the database.

Two ways to limit:

- ``shield.rate_limits.hit(key, limit=10, window=60)`` consumes from one key with a limit the
  caller chooses (``public.increment_rate_limit``, service_role only);
- ``shield.rate_limits.check("api", subject=user_id)`` consumes from every window of a named
  policy, with the limits of the subject's tier (``public.check_rate_limit``).

Both return a frozen :class:`Decision`; ``Decision.headers()`` gives the HTTP headers to send.
:class:`RateLimiter` / :class:`AsyncRateLimiter` wrap either call in a reusable object with a
failure policy: when the database is unreachable or slower than ``timeout``, they fail open
(allow, and say so with ``Decision.degraded``) or closed, and never hang.
"""

from pgshield.rate_limit.limiter import AsyncRateLimiter, FailurePolicy, RateLimiter
from pgshield.rate_limit.methods import RateLimits
from pgshield.rate_limit.methods_async import AsyncRateLimits
from pgshield.rate_limit.results import (
    ALGORITHMS,
    Algorithm,
    Counter,
    Decision,
    Policy,
    Usage,
    Window,
    WindowState,
    window_seconds,
)

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "AsyncRateLimiter",
    "AsyncRateLimits",
    "Counter",
    "Decision",
    "FailurePolicy",
    "Policy",
    "RateLimiter",
    "RateLimits",
    "Usage",
    "Window",
    "WindowState",
    "window_seconds",
]

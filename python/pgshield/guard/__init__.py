"""The guard module (``sql/guard.sql``): rate limits in front of the Data API itself.

PostgREST calls ``pgshield.request_guard()`` before every request (its ``db-pre-request``);
the guard maps the request (role, method, path) to a rate limit policy by the owner's rules and
answers a denial with HTTP 429, ``Retry-After`` and the rate limit headers.
"""

from pgshield.guard.methods import Guard
from pgshield.guard.methods_async import AsyncGuard
from pgshield.guard.results import GuardRule, GuardStatus

__all__ = ["AsyncGuard", "Guard", "GuardRule", "GuardStatus"]

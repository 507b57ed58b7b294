"""``Shield`` and ``AsyncShield``: the client core plus every module's methods."""

from __future__ import annotations

from pgshield.client import AsyncClient, SyncClient
from pgshield.core import AsyncCoreMethods, CoreMethods
from pgshield.jsonb import AsyncJsonbMethods, JsonbMethods
from pgshield.rate_limit import AsyncRateLimitMethods, RateLimitMethods

# Module mixins are listed here, one line each (rate limiting, jsonb, ...).
_SYNC_MIXINS: tuple[type, ...] = (CoreMethods, JsonbMethods, RateLimitMethods)
_ASYNC_MIXINS: tuple[type, ...] = (AsyncCoreMethods, AsyncJsonbMethods, AsyncRateLimitMethods)


class Shield(*_SYNC_MIXINS, SyncClient):  # type: ignore[misc]
    """Synchronous pgshield client.

    ``Shield(dsn)``, ``Shield(connection)`` or ``Shield(pool)``; nothing is opened until the
    first call. Every method accepts ``conn=`` to run inside the caller's own transaction.
    """


class AsyncShield(*_ASYNC_MIXINS, AsyncClient):  # type: ignore[misc]
    """Asyncio pgshield client: the same methods as :class:`Shield`, awaited."""

"""``Shield`` and ``AsyncShield``: the client core, the pack's version, one namespace per module.

Each module's methods live in its own namespace (``shield.rate_limits``, ``shield.jsonb``), so
modules cannot collide and plumbing stays private. A module with a namespace is registered in
:data:`pgshield.modules.MODULES`; its line here is held to the registry by tests/test_layout.py.
"""

from __future__ import annotations

import psycopg

from pgshield.breaker import AsyncBreakers, Breakers
from pgshield.client import AsyncClient, SyncClient
from pgshield.core import version_op
from pgshield.guard import AsyncGuard, Guard
from pgshield.jsonb import AsyncJsonbMerges, JsonbMerges
from pgshield.maintenance import AsyncMaintenance, Maintenance
from pgshield.namespace import namespace
from pgshield.rate_limit import AsyncRateLimits, RateLimits
from pgshield.teams import AsyncTeams, Teams


class Shield(SyncClient):
    """Synchronous pgshield client.

    ``Shield(dsn)``, ``Shield(connection)`` or ``Shield(pool)``; nothing is opened until the
    first call. A call on a connection or pool connection that is idle has its own transaction,
    committed when it returns, even if the connection is not autocommit (one already inside a
    transaction runs the call in it). Every method accepts ``conn=`` to run inside the caller's
    own transaction.
    ``timeout`` bounds every call (the server's ``statement_timeout``, and a stopped server
    too); ``isolation`` and ``retries`` apply when pgshield owns the transaction.
    ``prepared_statements=True`` lets the connections pgshield opens from a DSN prepare
    statements (a direct connection, or a pooler in session mode); a connection or pool you
    pass keeps its own ``prepare_threshold``. Breakers take a cheaper prepared read where
    statements are prepared and pgshield owns the transaction (an autocommit connection).
    """

    rate_limits = namespace(RateLimits)
    jsonb = namespace(JsonbMerges)
    breakers = namespace(Breakers)
    teams = namespace(Teams)
    guard = namespace(Guard)
    maintenance = namespace(Maintenance)

    def version(self, conn: psycopg.Connection | None = None) -> str:
        """The version of the pack installed in the database."""
        return self.call(version_op(), conn)


class AsyncShield(AsyncClient):
    """Asyncio pgshield client: the same namespaces and methods as :class:`Shield`, awaited."""

    rate_limits = namespace(AsyncRateLimits)
    jsonb = namespace(AsyncJsonbMerges)
    breakers = namespace(AsyncBreakers)
    teams = namespace(AsyncTeams)
    guard = namespace(AsyncGuard)
    maintenance = namespace(AsyncMaintenance)

    async def version(self, conn: psycopg.AsyncConnection | None = None) -> str:
        """The version of the pack installed in the database."""
        return await self.call(version_op(), conn)

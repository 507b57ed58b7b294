"""The core module (``sql/core.sql``): the pack's version."""

from __future__ import annotations

import psycopg

from pgshield.client import Op, scalar


def version_op() -> Op[str]:
    return Op("select pgshield.version() as version", {}, scalar)


class CoreMethods:
    """Core methods of :class:`pgshield.Shield`."""

    def version(self, conn: psycopg.Connection | None = None) -> str:
        """The version of the pack installed in the database."""
        return self.call(version_op(), conn)  # type: ignore[attr-defined]


class AsyncCoreMethods:
    """Core methods of :class:`pgshield.AsyncShield`."""

    async def version(self, conn: psycopg.AsyncConnection | None = None) -> str:
        """The version of the pack installed in the database."""
        return await self.call(version_op(), conn)  # type: ignore[attr-defined]

"""Opening connections the way pgshield uses them: autocommit, statements prepared if asked."""

from __future__ import annotations

from typing import Any

import psycopg

from pgshield.errors import translate

# psycopg's own default: a statement is prepared on its fifth run (an Op's ``prepared`` at once).
PREPARE_THRESHOLD = 5


def connect(dsn: str, *, timeout: float | None = None, prepare: bool = False) -> psycopg.Connection:
    """Open a connection the way pgshield uses it (autocommit; prepared statements if asked)."""
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "prepare_threshold": PREPARE_THRESHOLD if prepare else None,
    }
    if timeout is not None:
        kwargs["connect_timeout"] = max(1, int(timeout + 0.999))
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        raise translate(exc) from exc


async def connect_async(
    dsn: str, *, timeout: float | None = None, prepare: bool = False
) -> psycopg.AsyncConnection:
    """The asyncio twin of :func:`connect`."""
    kwargs: dict[str, Any] = {
        "autocommit": True,
        "prepare_threshold": PREPARE_THRESHOLD if prepare else None,
    }
    if timeout is not None:
        kwargs["connect_timeout"] = max(1, int(timeout + 0.999))
    try:
        return await psycopg.AsyncConnection.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        raise translate(exc) from exc

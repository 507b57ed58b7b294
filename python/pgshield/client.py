"""Client core shared by every module: ``SyncClient`` and ``AsyncClient`` (asyncio).

``pgshield.Shield`` and ``pgshield.AsyncShield`` combine them with each module's methods.

Each module describes a call as an :class:`Op` (SQL, parameters, how to read the rows); the
two clients only differ in how they run it. Nothing is opened in a constructor. Connections that
pgshield opens itself use ``autocommit=True`` and ``prepare_threshold=None`` so they work behind
Supavisor / PgBouncer in transaction mode.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import pq
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pgshield.errors import Retryable, ShieldError, Unavailable, translate

T = TypeVar("T")
Row = dict[str, Any]
ISOLATION_LEVELS = ("read committed", "repeatable read", "serializable")


@dataclass(frozen=True)
class Op(Generic[T]):
    """One database call: ``sql`` with ``%(name)s`` parameters, and ``parse`` for its rows."""

    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)
    parse: Callable[[list[Row]], T] = lambda rows: rows  # type: ignore[assignment,return-value]


def one(rows: list[Row]) -> Row:
    """The single row a call must return."""
    if len(rows) != 1:
        raise ShieldError(f"expected one row, got {len(rows)}")
    return rows[0]


def scalar(rows: list[Row]) -> Any:
    """The single value of the single row a call must return."""
    return next(iter(one(rows).values()))


def connect(dsn: str, *, timeout: float | None = None) -> psycopg.Connection:
    """Open a connection the way pgshield uses it (autocommit, no prepared statements)."""
    kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
    if timeout is not None:
        kwargs["connect_timeout"] = max(1, int(timeout + 0.999))
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        raise translate(exc) from exc


async def connect_async(dsn: str, *, timeout: float | None = None) -> psycopg.AsyncConnection:
    """The asyncio twin of :func:`connect`."""
    kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
    if timeout is not None:
        kwargs["connect_timeout"] = max(1, int(timeout + 0.999))
    try:
        return await psycopg.AsyncConnection.connect(dsn, **kwargs)
    except psycopg.Error as exc:
        raise translate(exc) from exc


class _Settings:
    """What both clients share: the source, the timeout, the isolation and the retry policy."""

    def __init__(
        self,
        source: Any,
        *,
        timeout: float | None = None,
        isolation: str | None = None,
        retries: int = 3,
    ) -> None:
        if isolation is not None and isolation.lower() not in ISOLATION_LEVELS:
            raise ValueError(f"isolation must be one of {', '.join(ISOLATION_LEVELS)}")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive seconds")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.source = source
        self.timeout = timeout
        self.isolation = isolation.lower() if isolation else None
        self.retries = retries

    def preamble(self) -> list[tuple[str, Mapping[str, Any]]]:
        """Statements that open our own transaction for one call (none: run in autocommit)."""
        stmts: list[tuple[str, Mapping[str, Any]]] = []
        if self.isolation:
            stmts.append((f"set transaction isolation level {self.isolation}", {}))
        if self.timeout is not None:
            stmts.append(
                (
                    "select set_config('statement_timeout', %(ms)s::text, true)",
                    {"ms": str(int(self.timeout * 1000))},
                )
            )
        return stmts

    @staticmethod
    def owns_transaction(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool:
        """True when a call on ``conn`` may open (and retry) its own transaction."""
        return conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE

    def backoff(self, attempt: int) -> float:
        return min(0.2, 0.005 * (2**attempt)) * (0.5 + random.random())


class SyncClient(_Settings):
    """Synchronous client core.

    ``source`` is a DSN, a ``psycopg.Connection`` or a ``ConnectionPool``.

    Every method takes an optional ``conn`` to run inside the caller's own transaction; then
    pgshield neither commits nor retries. Serialization failures and deadlocks (40001, 40P01)
    are retried up to ``retries`` times when pgshield owns the transaction.
    """

    def __init__(self, source: str | psycopg.Connection | ConnectionPool, **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------ lifecycle --
    def close(self) -> None:
        """Close the connection pgshield opened itself (never a caller's connection or pool)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _owned(self) -> psycopg.Connection:
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = connect(self.source, timeout=self.timeout)
            return self._conn

    # ------------------------------------------------------------ execution --
    def call(self, op: Op[T], conn: psycopg.Connection | None = None) -> T:
        """Run one :class:`Op` and return what its ``parse`` makes of the rows."""
        if conn is not None:
            return self._run(conn, op)
        if isinstance(self.source, ConnectionPool):
            with self.source.connection(timeout=self.timeout) as pooled:
                return self._run(pooled, op)
        if isinstance(self.source, psycopg.Connection):
            return self._run(self.source, op)
        try:
            return self._run(self._owned(), op)
        except Unavailable:
            self.close()
            raise

    def _run(self, conn: psycopg.Connection, op: Op[T]) -> T:
        own = self.owns_transaction(conn)
        attempt = 0
        while True:
            try:
                return op.parse(self._execute(conn, op, own))
            except psycopg.Error as exc:
                err = translate(exc)
                if isinstance(err, Retryable) and own and attempt < self.retries:
                    attempt += 1
                    time.sleep(self.backoff(attempt))
                    continue
                raise err from exc

    def _execute(self, conn: psycopg.Connection, op: Op[T], own: bool) -> list[Row]:
        preamble = self.preamble() if own else []
        with conn.cursor(row_factory=dict_row) as cur:
            if not preamble:
                cur.execute(op.sql, op.params)
                return cur.fetchall() if cur.description else []
            with conn.transaction():
                for sql, params in preamble:
                    cur.execute(sql, params)
                cur.execute(op.sql, op.params)
                return cur.fetchall() if cur.description else []


class AsyncClient(_Settings):
    """The asyncio twin of :class:`SyncClient`: same methods, awaited."""

    def __init__(
        self, source: str | psycopg.AsyncConnection | AsyncConnectionPool, **kwargs: Any
    ) -> None:
        super().__init__(source, **kwargs)
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the connection pgshield opened itself."""
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _owned(self) -> psycopg.AsyncConnection:
        async with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await connect_async(self.source, timeout=self.timeout)
            return self._conn

    async def call(self, op: Op[T], conn: psycopg.AsyncConnection | None = None) -> T:
        """Run one :class:`Op` and return what its ``parse`` makes of the rows."""
        if conn is not None:
            return await self._run(conn, op)
        if isinstance(self.source, AsyncConnectionPool):
            async with self.source.connection(timeout=self.timeout) as pooled:
                return await self._run(pooled, op)
        if isinstance(self.source, psycopg.AsyncConnection):
            return await self._run(self.source, op)
        try:
            return await self._run(await self._owned(), op)
        except Unavailable:
            await self.close()
            raise

    async def _run(self, conn: psycopg.AsyncConnection, op: Op[T]) -> T:
        own = self.owns_transaction(conn)
        attempt = 0
        while True:
            try:
                return op.parse(await self._execute(conn, op, own))
            except psycopg.Error as exc:
                err = translate(exc)
                if isinstance(err, Retryable) and own and attempt < self.retries:
                    attempt += 1
                    await asyncio.sleep(self.backoff(attempt))
                    continue
                raise err from exc

    async def _execute(self, conn: psycopg.AsyncConnection, op: Op[T], own: bool) -> list[Row]:
        preamble = self.preamble() if own else []
        async with conn.cursor(row_factory=dict_row) as cur:
            if not preamble:
                await cur.execute(op.sql, op.params)
                return await cur.fetchall() if cur.description else []
            async with conn.transaction():
                for sql, params in preamble:
                    await cur.execute(sql, params)
                await cur.execute(op.sql, op.params)
                return await cur.fetchall() if cur.description else []

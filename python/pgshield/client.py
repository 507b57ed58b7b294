"""Client core shared by every module: ``SyncClient`` and ``AsyncClient`` (asyncio).

``pgshield.Shield`` and ``pgshield.AsyncShield`` combine them with each module's methods.

Each module describes a call as an :class:`Op` (SQL, parameters, how to read the rows); the
two clients only differ in how they run it. Nothing is opened in a constructor. Connections that
pgshield opens itself use ``autocommit=True`` and ``prepare_threshold=None`` so they work behind
Supavisor / PgBouncer in transaction mode; ``prepared_statements=True`` lets them prepare (a
direct connection, or a pooler in session mode), which an Op's ``prepared`` form needs.
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
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout, TooManyRequests

from pgshield.connections import connect, connect_async
from pgshield.deadlines import (
    DEADLINE_GRACE,
    WATCHDOG,
    busy_for,
    check_deadline,
    no_answer,
    no_pooled_connection,
    sever,
)
from pgshield.errors import Retryable, ShieldError, Unavailable, translate

T = TypeVar("T")
Row = dict[str, Any]
ISOLATION_LEVELS = ("read committed", "repeatable read", "serializable")


@dataclass(frozen=True)
class Op(Generic[T]):
    """One database call: ``sql`` with ``%(name)s`` parameters, and ``parse`` for its rows.

    ``prepared`` is an optional cheaper form for connections that prepare statements: a plain
    statement, run prepared, whose ``parse`` returns None when it cannot answer by itself (then
    ``sql`` runs). It is tried only when pgshield owns the transaction, so that a refusal of
    the statement (a role without the grant it needs) never aborts a caller's transaction.
    """

    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)
    parse: Callable[[list[Row]], T] = lambda rows: rows  # type: ignore[assignment,return-value]
    prepared: Op[T | None] | None = None


def one(rows: list[Row]) -> Row:
    """The single row a call must return."""
    if len(rows) != 1:
        raise ShieldError(f"expected one row, got {len(rows)}")
    return rows[0]


def scalar(rows: list[Row]) -> Any:
    """The single value of the single row a call must return."""
    return next(iter(one(rows).values()))


# libpq 14 or later: statements can be pipelined (the binary package bundles a newer one).
_PIPELINE = psycopg.Pipeline.is_supported()
# The SQLSTATEs that mean a prepared form cannot run for this role or installation (no grant,
# no such schema, table or column): the client then keeps to the functions.
_PREPARED_REFUSED = ("42501", "3F000", "42P01", "42703")
# A retry is not started with less of the call's timeout left than this (seconds).
RETRY_FLOOR = 0.05


class _Settings:
    """What both clients share: the source, the timeout, the isolation and the retry policy."""

    def __init__(
        self,
        source: Any,
        *,
        timeout: float | None = None,
        isolation: str | None = None,
        retries: int = 3,
        prepared_statements: bool = False,
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
        self.prepared_statements = prepared_statements
        self._prepared_refused = False

    def _preamble(self, left: float | None = None) -> list[tuple[str, Mapping[str, Any]]]:
        """Statements that open our own transaction for one call (none: run in autocommit).
        ``left``: the seconds of the call's timeout not yet used (a retry gets only those, so
        that a live server answers 57014 before the deadline severs the connection)."""
        stmts: list[tuple[str, Mapping[str, Any]]] = []
        if self.isolation:
            stmts.append((f"set transaction isolation level {self.isolation}", {}))
        if self.timeout is not None:
            budget = self.timeout if left is None else max(min(left, self.timeout), 0.001)
            stmts.append(
                (
                    "select set_config('statement_timeout', %(ms)s::text, true)",
                    {"ms": str(max(int(budget * 1000), 1))},
                )
            )
        return stmts

    def _retry_left(self, started: float) -> float | None:
        """Seconds of the timeout left for a retry (None: no timeout); below RETRY_FLOOR the
        call does not retry."""
        return None if self.timeout is None else self.timeout - (time.monotonic() - started)

    def _pipelined(self) -> bool:
        """True when the preamble and the call may go as one pipeline, in the implicit
        transaction that lasts until its Sync: one round trip instead of four (begin, the
        preamble, the call, commit). An isolation level needs a real transaction block."""
        return not self.isolation and _PIPELINE

    @staticmethod
    def _owns_transaction(conn: psycopg.Connection | psycopg.AsyncConnection) -> bool:
        """True when a call on ``conn`` may open (and retry) its own transaction."""
        return conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE

    def _backoff(self, attempt: int) -> float:
        return min(0.2, 0.005 * (2**attempt)) * (0.5 + random.random())

    def _prepared_form(
        self, conn: psycopg.Connection | psycopg.AsyncConnection, op: Op[T], own: bool
    ) -> Op[T | None] | None:
        """``op.prepared`` when it may run on ``conn``: it prepares statements, pgshield owns
        the transaction, and no earlier call found the form refused."""
        if op.prepared is None or not own or self._prepared_refused:
            return None
        return op.prepared if conn.prepare_threshold is not None else None

    def _refused(self, exc: psycopg.Error) -> bool:
        """True (and the prepared forms off from now on) when ``exc`` says they cannot run."""
        refused = exc.sqlstate in _PREPARED_REFUSED
        if refused:
            self._prepared_refused = True
        return refused


class SyncClient(_Settings):
    """Synchronous client core.

    ``source`` is a DSN, a ``psycopg.Connection`` or a ``ConnectionPool``.

    Every method takes an optional ``conn`` to run inside the caller's own transaction; then
    pgshield neither commits nor retries. Serialization failures and deadlocks (40001, 40P01)
    are retried up to ``retries`` times when pgshield owns the transaction. A client that
    holds one connection (a DSN, or a connection given to it) runs one call at a time on it:
    threads may share it and take turns; pass a pool for calls at once.
    """

    def __init__(self, source: str | psycopg.Connection | ConnectionPool, **kwargs: Any) -> None:
        super().__init__(source, **kwargs)
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        # One call at a time on a connection this client holds (its own, or the one it was
        # given): a call's statements (its pipeline or transaction) must not interleave with
        # another thread's. Threads that need calls at once pass a ConnectionPool.
        self._busy = threading.RLock()

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
                self._conn = connect(
                    self.source, timeout=self.timeout, prepare=self.prepared_statements
                )
            return self._conn

    # ------------------------------------------------------------ execution --
    def call(
        self, op: Op[T], conn: psycopg.Connection | None = None, *, deadline: float | None = None
    ) -> T:
        """Run one :class:`Op` and return what its ``parse`` makes of the rows.

        ``deadline`` (``time.monotonic()``): a call still waiting for the connection then is
        not sent (Unavailable): its caller has given up on it, so it must not consume.
        """
        if conn is not None:
            return self._run(conn, op)
        if isinstance(self.source, ConnectionPool):
            try:
                with self.source.connection(timeout=self.timeout) as pooled:
                    check_deadline(deadline)
                    return self._run_pooled(pooled, op)
            except (PoolTimeout, TooManyRequests) as exc:
                raise no_pooled_connection(exc) from exc
        # The wait for the connection counts against the call's timeout too. An interrupt
        # (KeyboardInterrupt) raised as the turn was got gives it back.
        held = self._busy._is_owned()  # type: ignore[attr-defined]
        try:
            got = self._busy.acquire(timeout=-1 if self.timeout is None else self.timeout)
        except BaseException:
            if not held and self._busy._is_owned():  # type: ignore[attr-defined]
                self._busy.release()
            raise
        if not got:
            raise busy_for(self.timeout or 0)
        try:
            check_deadline(deadline)
            if isinstance(self.source, psycopg.Connection):
                # As a pooled one: idle, the call owns (and commits) its transaction even
                # when the connection is not autocommit; inside one, it runs in it.
                return self._run_pooled(self.source, op)
            try:
                return self._run(self._owned(), op)
            except Unavailable:
                self.close()
                raise
        finally:
            self._busy.release()

    def _run_pooled(self, conn: psycopg.Connection, op: Op[T]) -> T:
        """A pooled connection is idle when handed out: the call owns its transaction, as
        on pgshield's own autocommit connection (its timeout, isolation and retries apply),
        also in a pool whose connections are not autocommit."""
        if conn.autocommit or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            return self._run(conn, op)
        conn.autocommit = True
        try:
            return self._run(conn, op)
        finally:
            if not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
                conn.autocommit = False

    def _run(self, conn: psycopg.Connection, op: Op[T]) -> T:
        if self.timeout is None:
            return self._attempts(conn, op, None)
        watch = WATCHDOG.arm(self.timeout + DEADLINE_GRACE, conn)
        try:
            return self._attempts(conn, op, watch)
        finally:
            WATCHDOG.disarm(watch)

    def _attempts(self, conn: psycopg.Connection, op: Op[T], watch: list[Any] | None) -> T:
        own = self._owns_transaction(conn)
        attempt = 0
        started = time.monotonic()
        left: float | None = None
        while True:
            try:
                return self._answer(conn, op, own, left)
            except psycopg.Error as exc:
                # Only asked, not disarmed: the deadline keeps watching the retries.
                if watch is not None and WATCHDOG.fired(watch):
                    raise no_answer(self.timeout or 0) from exc
                err = translate(exc)
                if isinstance(err, Retryable) and own and attempt < self.retries:
                    attempt += 1
                    time.sleep(self._backoff(attempt))
                    left = self._retry_left(started)
                    if left is None or left >= RETRY_FLOOR:
                        continue
                raise err from exc

    def _answer(
        self, conn: psycopg.Connection, op: Op[T], own: bool, left: float | None = None
    ) -> T:
        fast = self._prepared_form(conn, op, own)
        if fast is not None:
            try:
                got = fast.parse(self._execute(conn, fast, own, prepare=True, left=left))
            except psycopg.Error as exc:
                if not self._refused(exc):
                    raise
            else:
                if got is not None:
                    return got
        return op.parse(self._execute(conn, op, own, left=left))

    def _execute(
        self,
        conn: psycopg.Connection,
        op: Op[Any],
        own: bool,
        prepare: bool | None = None,
        left: float | None = None,
    ) -> list[Row]:
        preamble = self._preamble(left) if own else []
        with conn.cursor(row_factory=dict_row) as cur:
            if not preamble:
                cur.execute(op.sql, op.params, prepare=prepare)
                return cur.fetchall() if cur.description else []
            if self._pipelined():
                with conn.pipeline():
                    for sql, params in preamble:
                        conn.execute(sql, params)
                    cur.execute(op.sql, op.params, prepare=prepare)
                return cur.fetchall() if cur.description else []
            with conn.transaction():
                for sql, params in preamble:
                    cur.execute(sql, params)
                cur.execute(op.sql, op.params, prepare=prepare)
                return cur.fetchall() if cur.description else []


class AsyncClient(_Settings):
    """The asyncio twin of :class:`SyncClient`: same methods, awaited."""

    def __init__(
        self, source: str | psycopg.AsyncConnection | AsyncConnectionPool, **kwargs: Any
    ) -> None:
        super().__init__(source, **kwargs)
        self._conn: psycopg.AsyncConnection | None = None
        self._lock = asyncio.Lock()
        self._busy = asyncio.Lock()  # as SyncClient's: one call at a time on a held connection

    async def close(self) -> None:
        """Close the connection pgshield opened itself (never a caller's connection or pool)."""
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
                self._conn = await connect_async(
                    self.source, timeout=self.timeout, prepare=self.prepared_statements
                )
            return self._conn

    async def call(
        self,
        op: Op[T],
        conn: psycopg.AsyncConnection | None = None,
        *,
        deadline: float | None = None,
    ) -> T:
        """Run one :class:`Op` and return what its ``parse`` makes of the rows (``deadline``:
        as :meth:`SyncClient.call`)."""
        if conn is not None:
            return await self._run(conn, op)
        if isinstance(self.source, AsyncConnectionPool):
            try:
                async with self.source.connection(timeout=self.timeout) as pooled:
                    check_deadline(deadline)
                    return await self._run_pooled(pooled, op)
            except (PoolTimeout, TooManyRequests) as exc:
                raise no_pooled_connection(exc) from exc
        if self.timeout is None:
            await self._busy.acquire()
        else:
            try:
                await asyncio.wait_for(self._busy.acquire(), self.timeout)
            except asyncio.TimeoutError:
                raise busy_for(self.timeout) from None
        try:
            check_deadline(deadline)
            if isinstance(self.source, psycopg.AsyncConnection):
                # As a pooled one: idle, the call owns (and commits) its transaction even
                # when the connection is not autocommit; inside one, it runs in it.
                return await self._run_pooled(self.source, op)
            try:
                return await self._run(await self._owned(), op)
            except Unavailable:
                await self.close()
                raise
        finally:
            self._busy.release()

    async def _run_pooled(self, conn: psycopg.AsyncConnection, op: Op[T]) -> T:
        """As :meth:`SyncClient._run_pooled`."""
        if conn.autocommit or conn.info.transaction_status != pq.TransactionStatus.IDLE:
            return await self._run(conn, op)
        await conn.set_autocommit(True)
        try:
            return await self._run(conn, op)
        finally:
            if not conn.closed and conn.info.transaction_status == pq.TransactionStatus.IDLE:
                await conn.set_autocommit(False)

    async def _run(self, conn: psycopg.AsyncConnection, op: Op[T]) -> T:
        if self.timeout is None:
            return await self._attempts(conn, op, None)
        fired: list[bool] = []

        def fire() -> None:
            fired.append(True)
            sever(conn)

        handle = asyncio.get_running_loop().call_later(self.timeout + DEADLINE_GRACE, fire)
        try:
            return await self._attempts(conn, op, fired)
        finally:
            handle.cancel()

    async def _attempts(
        self, conn: psycopg.AsyncConnection, op: Op[T], fired: list[bool] | None
    ) -> T:
        own = self._owns_transaction(conn)
        attempt = 0
        started = time.monotonic()
        left: float | None = None
        while True:
            try:
                return await self._answer(conn, op, own, left)
            except psycopg.Error as exc:
                if fired:
                    raise no_answer(self.timeout or 0) from exc
                err = translate(exc)
                if isinstance(err, Retryable) and own and attempt < self.retries:
                    attempt += 1
                    await asyncio.sleep(self._backoff(attempt))
                    left = self._retry_left(started)
                    if left is None or left >= RETRY_FLOOR:
                        continue
                raise err from exc

    async def _answer(
        self, conn: psycopg.AsyncConnection, op: Op[T], own: bool, left: float | None = None
    ) -> T:
        fast = self._prepared_form(conn, op, own)
        if fast is not None:
            try:
                got = fast.parse(await self._execute(conn, fast, own, prepare=True, left=left))
            except psycopg.Error as exc:
                if not self._refused(exc):
                    raise
            else:
                if got is not None:
                    return got
        return op.parse(await self._execute(conn, op, own, left=left))

    async def _execute(
        self,
        conn: psycopg.AsyncConnection,
        op: Op[Any],
        own: bool,
        prepare: bool | None = None,
        left: float | None = None,
    ) -> list[Row]:
        preamble = self._preamble(left) if own else []
        async with conn.cursor(row_factory=dict_row) as cur:
            if not preamble:
                await cur.execute(op.sql, op.params, prepare=prepare)
                return await cur.fetchall() if cur.description else []
            if self._pipelined():
                async with conn.pipeline():
                    for sql, params in preamble:
                        await conn.execute(sql, params)
                    await cur.execute(op.sql, op.params, prepare=prepare)
                return await cur.fetchall() if cur.description else []
            async with conn.transaction():
                for sql, params in preamble:
                    await cur.execute(sql, params)
                await cur.execute(op.sql, op.params, prepare=prepare)
                return await cur.fetchall() if cur.description else []

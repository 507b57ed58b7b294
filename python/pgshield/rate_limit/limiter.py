"""``RateLimiter`` / ``AsyncRateLimiter``: a reusable limiter with a failure policy.

When the database is unreachable or slower than ``timeout``, a limiter fails open (allow, and
say so with ``Decision.degraded``) or closed, and never hangs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from psycopg import conninfo

from pgshield.client import AsyncClient, Op, SyncClient
from pgshield.errors import Unavailable
from pgshield.rate_limit.ops import (
    algorithm_name,
    check_op,
    increment_op,
    peek_op,
    reset_op,
    reset_subject_op,
)
from pgshield.rate_limit.results import Algorithm, Decision, Window, window_seconds

FailurePolicy = Literal["open", "closed"]


def resilient_dsn(dsn: str, timeout: float) -> str:
    """``dsn`` with libpq settings that notice a dead server within about ``timeout``.

    ``tcp_user_timeout`` bounds unacknowledged writes; keepalives catch a silent peer.
    """
    ms = max(1000, int(timeout * 1000))
    extra = {
        "tcp_user_timeout": str(ms),
        "keepalives": "1",
        "keepalives_idle": str(max(1, int(timeout))),
        "keepalives_interval": "1",
        "keepalives_count": "2",
    }
    given = conninfo.conninfo_to_dict(dsn)
    return conninfo.make_conninfo(dsn, **{k: v for k, v in extra.items() if k not in given})


class _LimiterSpec:
    """What both limiters share: what to call, and what to answer when the database cannot."""

    def __init__(
        self,
        *,
        limit: int | None,
        window: Window | None,
        algorithm: Algorithm,
        policy: str | None,
        prefix: str,
        on_error: FailurePolicy,
        timeout: float | None,
    ) -> None:
        if (policy is None) == (limit is None or window is None):
            raise ValueError("give either policy= or both limit= and window=")
        if policy is not None and (limit is not None or window is not None):
            raise ValueError("policy= takes its limits from the database: no limit= or window=")
        if on_error not in ("open", "closed"):
            raise ValueError("on_error must be 'open' or 'closed'")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive seconds")
        self.limit = limit
        self.window = None if window is None else window_seconds(window)
        self.algorithm = algorithm_name(algorithm)
        self.policy = policy
        self.prefix = prefix
        self.on_error = on_error
        self.timeout = timeout

    def op(self, name: str, cost: int, endpoint: str | None, *, peek: bool) -> Op[Decision]:
        if self.policy is not None:
            return check_op(self.policy, cost, endpoint, name, peek=peek)
        if endpoint is not None:
            raise ValueError("endpoint= needs a policy")
        assert self.limit is not None and self.window is not None
        make = peek_op if peek else increment_op
        return make(self.prefix + name, self.limit, self.window, cost, self.algorithm)

    def fallback(self, name: str, cost: int, exc: BaseException) -> Decision:
        allowed = self.on_error == "open"
        limit = self.limit or 0
        return Decision(
            allowed=allowed,
            limit=limit,
            remaining=max(limit - cost, 0) if allowed else 0,
            reset_at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.window or 0),
            retry_after_ms=0 if allowed else int((self.timeout or 1) * 1000),
            cost=cost,
            key=None if self.policy else self.prefix + name,
            algorithm=None if self.policy else self.algorithm,
            window_seconds=self.window,
            policy=self.policy,
            subject=name if self.policy else None,
            degraded=True,
            error=str(exc) or type(exc).__name__,
        )


class _LimiterBase:
    """Construction shared by both limiters; only how a call is awaited differs."""

    _client_class: type[SyncClient] | type[AsyncClient]

    def __init__(
        self,
        source: Any,
        *,
        limit: int | None = None,
        window: Window | None = None,
        algorithm: Algorithm = "fixed_window",
        policy: str | None = None,
        prefix: str = "",
        on_error: FailurePolicy = "open",
        timeout: float | None = 1.0,
    ) -> None:
        self.spec = _LimiterSpec(
            limit=limit,
            window=window,
            algorithm=algorithm,
            policy=policy,
            prefix=prefix,
            on_error=on_error,
            timeout=timeout,
        )
        self._owns_client = isinstance(source, str)
        if isinstance(source, str):
            dsn = resilient_dsn(source, timeout) if timeout else source
            source = self._client_class(dsn, timeout=timeout)
        self.client = source

    def _reset(self, name: str) -> Any:
        """The reset call for ``name`` (a value, or an awaitable for the async client)."""
        if self.spec.policy is not None:
            return self.client.call(reset_subject_op(name, self.spec.policy))
        return self.client.call(reset_op(self.spec.prefix + name, self.spec.window))


class RateLimiter(_LimiterBase):
    """A reusable limiter over :class:`pgshield.Shield`, with a failure policy.

    Either a direct limit (``limit=``, ``window=``, ``algorithm=``; keys get ``prefix``) or a
    named ``policy=`` (then ``hit(subject)``). When the database is unreachable or does not
    answer within ``timeout`` seconds, ``hit`` returns a degraded decision: allowed with
    ``on_error="open"``, denied with ``on_error="closed"``. It never waits longer than
    ``timeout``: the call runs on a worker thread, and a stuck call is left behind.
    Programming errors (InvalidInput, NotAllowed) are raised, never swallowed.
    """

    _client_class = SyncClient

    def __init__(self, source: Any, **options: Any) -> None:
        super().__init__(source, **options)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=4, thread_name_prefix="pgshield-limiter"
                )
            return self._pool

    def _decide(self, name: str, cost: int, endpoint: str | None, peek: bool) -> Decision:
        op = self.spec.op(name, cost, endpoint, peek=peek)
        if self.spec.timeout is None:
            try:
                return self.client.call(op)
            except Unavailable as exc:
                return self.spec.fallback(name, cost, exc)
        # A call whose answer is no longer awaited (it waited for a worker or the connection
        # past the deadline) is not sent: it must not consume after its caller got a fallback.
        deadline = time.monotonic() + self.spec.timeout
        call: Callable[[], Decision] = lambda: self.client.call(op, deadline=deadline)  # noqa: E731
        try:
            return self._executor().submit(call).result(timeout=self.spec.timeout)
        except (Unavailable, concurrent.futures.TimeoutError) as exc:
            return self.spec.fallback(name, cost, exc)

    def hit(self, name: str, cost: int = 1, endpoint: str | None = None) -> Decision:
        """Consume ``cost`` for ``name`` (a key, or a subject under the policy)."""
        return self._decide(name, cost, endpoint, peek=False)

    def peek(self, name: str, cost: int = 1, endpoint: str | None = None) -> Decision:
        """What :meth:`hit` would answer now, without consuming."""
        return self._decide(name, cost, endpoint, peek=True)

    def reset(self, name: str) -> int:
        """Forget ``name`` (raises Unavailable when the database cannot be reached)."""
        return self._reset(name)

    def close(self) -> None:
        """Stop the worker threads and close the connection this limiter opened itself.

        Waits at most ``timeout`` seconds, even when a call is stuck on a dead server.
        """
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if self._owns_client:
            # A call stuck on a dead server holds the connection: close without waiting for it
            # longer than the limiter's timeout (the daemon thread finishes the job later).
            closer = threading.Thread(target=self.client.close, daemon=True)
            closer.start()
            closer.join(self.spec.timeout)

    def __enter__(self) -> RateLimiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRateLimiter(_LimiterBase):
    """The asyncio twin of :class:`RateLimiter` over :class:`pgshield.AsyncShield`.

    The deadline is ``asyncio.wait_for``: a call that outlives ``timeout`` is cancelled.
    """

    _client_class = AsyncClient

    async def _decide(self, name: str, cost: int, endpoint: str | None, peek: bool) -> Decision:
        op = self.spec.op(name, cost, endpoint, peek=peek)
        try:
            if self.spec.timeout is None:
                return await self.client.call(op)
            return await asyncio.wait_for(self.client.call(op), self.spec.timeout)
        except (Unavailable, asyncio.TimeoutError) as exc:
            return self.spec.fallback(name, cost, exc)

    async def hit(self, name: str, cost: int = 1, endpoint: str | None = None) -> Decision:
        """Consume ``cost`` for ``name`` (a key, or a subject under the policy)."""
        return await self._decide(name, cost, endpoint, peek=False)

    async def peek(self, name: str, cost: int = 1, endpoint: str | None = None) -> Decision:
        """What :meth:`hit` would answer now, without consuming."""
        return await self._decide(name, cost, endpoint, peek=True)

    async def reset(self, name: str) -> int:
        """Forget ``name`` (raises Unavailable when the database cannot be reached)."""
        return await self._reset(name)

    async def close(self) -> None:
        """Stop the worker threads and close the connection this limiter opened itself.

        Waits at most ``timeout`` seconds, even when a call is stuck on a dead server.
        """
        if self._owns_client:
            # A call stuck on a dead server holds the connection: it goes with it.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.client.close(), self.spec.timeout)

    async def __aenter__(self) -> AsyncRateLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

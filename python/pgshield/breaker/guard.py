"""``Breaker`` / ``AsyncBreaker``: one breaker as a decorator and a context manager.

Each call: acquire (or answer from the local copy of an open state, no round trip), run the
protected function, release with its outcome and duration. Exceptions in ``failure_on`` count
as failures, those in ``ignore_on`` are not counted; transient errors are retried with capped
exponential backoff and full jitter (never auth errors); a refused call runs ``fallback`` or
raises :class:`BreakerOpen`. When the database does not answer within ``timeout``, the
failure policy decides: ``on_db_error="open"`` lets the call through, ``"closed"`` refuses it,
``"local"`` asks a process-local :class:`LocalBreaker` (the rules it is given, by default the
database's defaults: pass ``LocalRules.of(config)`` for a configured breaker's), which counts
the outcomes of the calls it admits. For ``db_retry_after`` seconds after that, calls do not try
the database again: the policy answers at once.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pgshield.breaker.local import LocalBreaker, LocalRules
from pgshield.breaker.ops import acquire_op, release_op
from pgshield.breaker.results import BreakerOpen, Decision, Guarded
from pgshield.client import AsyncClient, SyncClient
from pgshield.errors import Unavailable
from pgshield.rate_limit.limiter import resilient_dsn

FailurePolicy = Literal["open", "closed", "local"]
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
AUTH_STATUS = frozenset({401, 403})


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (``status_code``, ``status``, ``response``)."""
    for holder in (exc, getattr(exc, "response", None)):
        for attr in ("status_code", "status"):
            value = getattr(holder, attr, None)
            if isinstance(value, int):
                return value
    return None


def is_transient(exc: BaseException) -> bool:
    """The default retry rule: timeouts, connection errors, HTTP 408/429/5xx; never 401/403."""
    status = status_of(exc)
    if status in AUTH_STATUS or isinstance(exc, PermissionError):
        return False
    if status is not None:
        return status in TRANSIENT_STATUS
    return isinstance(exc, TimeoutError | ConnectionError)


class _Spec:
    """What both breakers share: the rules, the local open-state cache and the arithmetic."""

    def __init__(
        self,
        name: str,
        *,
        failure_on: tuple[type[BaseException], ...],
        ignore_on: tuple[type[BaseException], ...],
        fallback: Callable[..., Any] | None,
        retries: int,
        backoff_base: float,
        backoff_cap: float,
        retry_on: Callable[[BaseException], bool],
        on_db_error: FailurePolicy,
        timeout: float | None,
        cache_open: bool,
        local: LocalBreaker | LocalRules | None,
        db_retry_after: float,
    ) -> None:
        if on_db_error not in ("open", "closed", "local"):
            raise ValueError("on_db_error must be 'open', 'closed' or 'local'")
        if local is not None and on_db_error != "local":
            raise ValueError("local= goes with on_db_error='local'")
        if db_retry_after < 0:
            raise ValueError("db_retry_after must be >= 0 seconds")
        if retries < 0 or backoff_base < 0 or backoff_cap < 0:
            raise ValueError("retries, backoff_base and backoff_cap must be >= 0")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive seconds")
        self.name = name
        self.failure_on = failure_on
        self.ignore_on = ignore_on
        self.fallback = fallback
        self.retries = retries
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.retry_on = retry_on
        self.on_db_error = on_db_error
        self.timeout = timeout
        self.cache_open = cache_open
        self.local: LocalBreaker | None = None
        if isinstance(local, LocalBreaker):
            self.local = local
        elif on_db_error == "local":
            self.local = LocalBreaker(local, name=name)
        self.db_retry_after = db_retry_after
        self._db_down_until = 0.0  # time.monotonic() until which the database is not tried
        self._db_error = ""
        self._open_until = 0.0  # time.monotonic() until which the breaker is known open
        self._open_decision: Decision | None = None
        self._lock = threading.Lock()

    def cached(self) -> Decision | None:
        """The local copy of an open state, while it holds (no round trip)."""
        with self._lock:
            if self._open_decision is None:
                return None
            left = self._open_until - time.monotonic()
            if left <= 0:
                self._open_decision = None
                return None
            d = self._open_decision
        return Decision(
            d.name, False, d.state, d.generation, None, max(1, int(left * 1000)), True,
            source="cache",
        )  # fmt: skip

    def remember(self, d: Decision) -> Decision:
        if self.cache_open and not d.allowed and d.state == "open" and d.retry_after_ms > 0:
            with self._lock:
                self._open_until = time.monotonic() + d.retry_after_ms / 1000
                self._open_decision = d
        return d

    def known(self) -> Decision | None:
        """An answer without a round trip: the local copy of an open state, or the policy's
        while the database is known to be down (for ``db_retry_after``); else None."""
        cached = self.cached()
        if cached is not None:
            return cached
        with self._lock:
            down = time.monotonic() < self._db_down_until
            error = self._db_error
        return self.policy(error) if down else None

    def degraded(self, exc: BaseException) -> Decision:
        """The database did not answer: remember it for ``db_retry_after``, then the policy."""
        with self._lock:
            self._db_down_until = time.monotonic() + self.db_retry_after
            self._db_error = str(exc)
        return self.policy(str(exc))

    def policy(self, error: str) -> Decision:
        if self.local is not None:
            return self.local.acquire(error)
        allowed = self.on_db_error == "open"
        return Decision(
            self.name, allowed, "unknown", 0, None, 0 if allowed else -1, False, True, error,
            "policy",
        )  # fmt: skip

    def outcome(self, exc: BaseException | None) -> str:
        if exc is None:
            return "success"
        if self.ignore_on and isinstance(exc, self.ignore_on):
            return "ignored"
        return "failure" if isinstance(exc, self.failure_on) else "ignored"

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2 ** attempt)]."""
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt))

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        return attempt < self.retries and self.outcome(exc) == "failure" and self.retry_on(exc)

    def refused(self, d: Decision) -> BreakerOpen:
        wait = "until reset" if d.retry_after_ms < 0 else f"retry after {d.retry_after_ms} ms"
        return BreakerOpen(f"breaker {self.name} is {d.state} ({wait})", decision=d)


def _options(
    *,
    failure_on: tuple[type[BaseException], ...] = (Exception,),
    ignore_on: tuple[type[BaseException], ...] = (),
    fallback: Callable[..., Any] | None = None,
    retries: int = 3,
    backoff_base: float = 2.0,
    backoff_cap: float = 15.0,
    retry_on: Callable[[BaseException], bool] = is_transient,
    on_db_error: FailurePolicy = "open",
    timeout: float | None = 1.0,
    cache_open: bool = True,
    local: LocalBreaker | LocalRules | None = None,
    db_retry_after: float = 1.0,
) -> dict[str, Any]:
    return dict(locals())


class _BreakerBase:
    _client_class: type[SyncClient] | type[AsyncClient]

    def __init__(self, source: Any, name: str, **options: Any) -> None:
        self.spec = _Spec(name, **_options(**options))
        self.name = name
        self._owns_client = isinstance(source, str)
        if isinstance(source, str):
            timeout = self.spec.timeout
            dsn = resilient_dsn(source, timeout) if timeout else source
            source = self._client_class(dsn, timeout=timeout)
        self.client = source


class Breaker(_BreakerBase):
    """A circuit breaker over :class:`pgshield.Shield` (or a DSN), sync.

    ``breaker.run(fn, *args)`` returns a :class:`Guarded`; ``@breaker`` wraps a function
    (returning its value, or the fallback's); ``with breaker.guard() as call:`` guards a block
    (raises :class:`BreakerOpen` when refused; ``call.ignore()`` marks it not counted).
    """

    _client_class = SyncClient

    def acquire(self) -> Decision:
        """Ask the breaker (or its local copy of an open state); never raises Unavailable."""
        known = self.spec.known()
        if known is not None:
            return known
        try:
            return self.spec.remember(self.client.call(acquire_op(self.name)))
        except Unavailable as exc:
            return self.spec.degraded(exc)

    def release(self, decision: Decision, outcome: str, duration_ms: int | None = None) -> bool:
        """Report an outcome for ``decision``; False when it could not be (no permit, no db).

        A permit of the local breaker (``source="local"``) is reported to it, not the database.
        """
        if decision.permit is None:
            return False
        if decision.source == "local" and self.spec.local is not None:
            self.spec.local.release(decision.permit, outcome, duration_ms)
            return True
        try:
            self.client.call(release_op(self.name, decision.permit, outcome, duration_ms))
        except Unavailable:
            return False
        return True

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Guarded:
        """Call ``fn`` through the breaker, with retries, and say what happened."""
        attempts = 0
        while True:
            d = self.acquire()
            if not d.allowed:
                if self.spec.fallback is None:
                    raise self.spec.refused(d)
                value = self.spec.fallback(*args, **kwargs)
                return Guarded(
                    value, d.state, False, True, attempts, d.cached, d.degraded, d.error, d.source
                )
            attempts += 1
            started = time.monotonic()
            try:
                value = fn(*args, **kwargs)
            except BaseException as exc:
                ms = int((time.monotonic() - started) * 1000)
                self.release(d, self.spec.outcome(exc), ms)
                if not self.spec.should_retry(exc, attempts - 1):
                    raise
                time.sleep(self.spec.backoff(attempts - 1))
                continue
            self.release(d, "success", int((time.monotonic() - started) * 1000))
            return Guarded(
                value, d.state, True, False, attempts, False, d.degraded, d.error, d.source
            )

    def __call__(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Use the breaker as a decorator: the wrapped function returns the value only."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.run(fn, *args, **kwargs).value

        return wrapper

    def guard(self) -> _Block:
        """A context manager that guards one block (no retries, no fallback)."""
        return _Block(self)

    def close(self) -> None:
        """Close the connection this breaker opened itself."""
        if self._owns_client:
            self.client.close()


class _Block:
    """``with breaker.guard() as call:``: acquire on entry, release on exit."""

    def __init__(self, breaker: Breaker | AsyncBreaker) -> None:
        self.breaker = breaker
        self.decision: Decision | None = None
        self.ignored = False
        self._started = 0.0

    def ignore(self) -> None:
        """Do not count this call (and give a trial slot back)."""
        self.ignored = True

    def _enter(self, d: Decision) -> _Block:
        if not d.allowed:
            raise self.breaker.spec.refused(d)
        self.decision = d
        self._started = time.monotonic()
        return self

    def _exit(self, exc: BaseException | None) -> tuple[str, int]:
        outcome = "ignored" if self.ignored else self.breaker.spec.outcome(exc)
        return outcome, int((time.monotonic() - self._started) * 1000)

    def __enter__(self) -> _Block:
        assert isinstance(self.breaker, Breaker)
        return self._enter(self.breaker.acquire())

    def __exit__(self, _t: object, exc: BaseException | None, _tb: object) -> None:
        assert isinstance(self.breaker, Breaker) and self.decision is not None
        self.breaker.release(self.decision, *self._exit(exc))

    async def __aenter__(self) -> _Block:
        assert isinstance(self.breaker, AsyncBreaker)
        return self._enter(await self.breaker.acquire())

    async def __aexit__(self, _t: object, exc: BaseException | None, _tb: object) -> None:
        assert isinstance(self.breaker, AsyncBreaker) and self.decision is not None
        await self.breaker.release(self.decision, *self._exit(exc))


class AsyncBreaker(_BreakerBase):
    """The asyncio twin of :class:`Breaker` over :class:`pgshield.AsyncShield`.

    The fallback may be a coroutine function; ``async with breaker.guard() as call:``.
    """

    _client_class = AsyncClient

    async def acquire(self) -> Decision:
        """Ask the breaker (or its local copy of an open state); never raises Unavailable."""
        known = self.spec.known()
        if known is not None:
            return known
        try:
            return self.spec.remember(await self.client.call(acquire_op(self.name)))
        except Unavailable as exc:
            return self.spec.degraded(exc)

    async def release(
        self, decision: Decision, outcome: str, duration_ms: int | None = None
    ) -> bool:
        """Report an outcome for ``decision``; False when it could not be (no permit, no db).

        A permit of the local breaker (``source="local"``) is reported to it, not the database.
        """
        if decision.permit is None:
            return False
        if decision.source == "local" and self.spec.local is not None:
            self.spec.local.release(decision.permit, outcome, duration_ms)
            return True
        try:
            await self.client.call(release_op(self.name, decision.permit, outcome, duration_ms))
        except Unavailable:
            return False
        return True

    async def run(self, fn: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Guarded:
        """Call ``fn`` through the breaker, with retries, and say what happened."""
        attempts = 0
        while True:
            d = await self.acquire()
            if not d.allowed:
                if self.spec.fallback is None:
                    raise self.spec.refused(d)
                value = self.spec.fallback(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
                return Guarded(
                    value, d.state, False, True, attempts, d.cached, d.degraded, d.error, d.source
                )
            attempts += 1
            started = time.monotonic()
            try:
                value = await fn(*args, **kwargs)
            except BaseException as exc:
                ms = int((time.monotonic() - started) * 1000)
                await self.release(d, self.spec.outcome(exc), ms)
                if not self.spec.should_retry(exc, attempts - 1):
                    raise
                await asyncio.sleep(self.spec.backoff(attempts - 1))
                continue
            await self.release(d, "success", int((time.monotonic() - started) * 1000))
            return Guarded(
                value, d.state, True, False, attempts, False, d.degraded, d.error, d.source
            )

    def __call__(self, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Use the breaker as a decorator: the wrapped coroutine returns the value only."""

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return (await self.run(fn, *args, **kwargs)).value

        return wrapper

    def guard(self) -> _Block:
        """A context manager that guards one block (no retries, no fallback)."""
        return _Block(self)

    async def close(self) -> None:
        """Close the connection this breaker opened itself."""
        if self._owns_client:
            await self.client.close()

"""The rate_limit module (``sql/rate_limit.sql``): atomic rate limits kept in the database.

Two ways to limit:

- ``shield.rate_limit(key, limit=10, window=60)`` consumes from one key with a limit the caller
  chooses (``public.increment_rate_limit``, service_role only);
- ``shield.check("api", subject=user_id)`` consumes from every window of a named policy, with
  the limits of the subject's tier (``public.check_rate_limit``).

Both return a frozen :class:`Decision`; ``Decision.headers()`` gives the HTTP headers to send.
:class:`RateLimiter` / :class:`AsyncRateLimiter` wrap either call in a reusable object with a
failure policy: when the database is unreachable or slower than ``timeout``, they fail open
(allow, and say so with ``Decision.degraded``) or closed, and never hang.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import conninfo
from psycopg.types.json import Jsonb

from pgshield.client import Op, Row, one, scalar
from pgshield.errors import RateLimited, Unavailable

ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket")
Algorithm = Literal["fixed_window", "sliding_window", "token_bucket"]
Window = int | float | dt.timedelta
FailurePolicy = Literal["open", "closed"]

_DECISION_COLUMNS = 'allowed, "limit", remaining, reset_at, retry_after_ms'
_DIRECT_COLUMNS = f"{_DECISION_COLUMNS}, key, algorithm, window_seconds, cost"
_POLICY_COLUMNS = f"{_DECISION_COLUMNS}, policy, tier, subject, cost, unit, windows, violated"


def window_seconds(window: Window) -> int:
    """A window given as seconds or a ``timedelta``, in whole seconds (at least 1)."""
    seconds = window.total_seconds() if isinstance(window, dt.timedelta) else float(window)
    if seconds != int(seconds) or seconds < 1:
        raise ValueError(f"window must be a whole number of seconds >= 1, got {window!r}")
    return int(seconds)


# ------------------------------------------------------------------- results --
@dataclass(frozen=True)
class WindowState:
    """One window of a policy decision."""

    name: str
    window_seconds: int
    limit: int
    remaining: int
    used: int
    reset_at: dt.datetime
    retry_after_ms: int
    allowed: bool


@dataclass(frozen=True)
class Decision:
    """The answer to one rate limit call.

    ``retry_after_ms`` is 0 when allowed, -1 when the cost can never fit (cost > limit), else
    the wait in milliseconds, rounded up: after exactly that wait the same call fits.
    ``remaining`` is what is left after this decision (requests of cost 1); ``reset_at`` is when
    the consumption is entirely forgotten. For policy decisions ``limit``, ``remaining`` and
    ``reset_at`` are those of the binding window, and ``windows`` lists every window.
    ``degraded`` is True when the database did not decide (a :class:`RateLimiter` failed open
    or closed); ``error`` then says why.
    """

    allowed: bool
    limit: int
    remaining: int
    reset_at: dt.datetime
    retry_after_ms: int
    cost: int = 1
    key: str | None = None
    algorithm: str | None = None
    window_seconds: int | None = None
    policy: str | None = None
    tier: str | None = None
    subject: str | None = None
    unit: str = "requests"
    windows: tuple[WindowState, ...] = ()
    violated: tuple[str, ...] = ()
    degraded: bool = False
    error: str | None = None

    @property
    def retry_after(self) -> int | None:
        """Seconds to wait before retrying, rounded up; None when allowed or never."""
        if self.allowed or self.retry_after_ms < 0:
            return None
        return max(1, math.ceil(self.retry_after_ms / 1000))

    def __bool__(self) -> bool:
        return self.allowed

    def raise_if_denied(self) -> Decision:
        """Return the decision when allowed, else raise :class:`pgshield.RateLimited`."""
        if not self.allowed:
            wait = "never" if self.retry_after_ms < 0 else f"retry after {self.retry_after_ms} ms"
            what = self.key or f"{self.policy}:{self.subject}"
            raise RateLimited(f"rate limit exceeded for {what} ({wait})")
        return self

    def headers(self, now: dt.datetime | None = None) -> dict[str, str]:
        """HTTP response headers for this decision.

        ``RateLimit-Policy`` and ``RateLimit`` follow the IETF httpapi draft
        (draft-ietf-httpapi-ratelimit-headers-09): one policy item per window, and the binding
        window's remaining quota ``r`` and seconds to reset ``t``. ``X-RateLimit-Limit``,
        ``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (epoch seconds, rounded up) are the
        widespread older convention. ``Retry-After`` (seconds, rounded up) only on a denial
        that can succeed later. ``now`` defaults to the current UTC time.
        """
        now = now or dt.datetime.now(dt.timezone.utc)
        reset_in = max(0, math.ceil((self.reset_at - now).total_seconds()))
        if self.windows:
            prefix = self.policy or "policy"
            items = [(f"{prefix}-{w.name}", w.limit, w.window_seconds) for w in self.windows]
            binding = next(
                (w for w in self.windows if w.limit == self.limit and w.reset_at == self.reset_at),
                self.windows[0],
            )
            name = f"{prefix}-{binding.name}"
        else:
            name = "default"
            items = [(name, self.limit, self.window_seconds or 0)]
        unit = ';qu="requests"' if self.unit == "requests" else ""
        headers = {
            "RateLimit-Policy": ", ".join(f'"{n}";q={q};w={w}{unit}' for n, q, w in items),
            "RateLimit": f'"{name}";r={self.remaining};t={reset_in}',
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at.timestamp())),
        }
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


@dataclass(frozen=True)
class Usage:
    """Current usage of one window of a subject under a policy."""

    policy: str
    name: str
    window_seconds: int
    limit: int
    used: int
    remaining: int
    reset_at: dt.datetime


@dataclass(frozen=True)
class Policy:
    """A rate limit policy: its windows per tier, algorithm, unit and endpoint costs."""

    name: str
    algorithm: str
    unit: str
    default_tier: str
    allow_anonymous: bool
    description: str | None
    tiers: Mapping[str, tuple[tuple[str, int, int], ...]]  # tier -> ((name, seconds, limit), ...)
    endpoint_costs: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Counter:
    """Allowed and denied decisions of a policy ("" for direct keys) since the last reset."""

    policy: str
    allowed: int
    denied: int


def _window(w: Mapping[str, Any]) -> WindowState:
    return WindowState(
        name=w["name"],
        window_seconds=int(w["window_seconds"]),
        limit=int(w["limit"]),
        remaining=int(w["remaining"]),
        used=int(w["used"]),
        reset_at=dt.datetime.fromisoformat(w["reset_at"]),
        retry_after_ms=int(w["retry_after_ms"]),
        allowed=bool(w["allowed"]),
    )


def _decision(row: Row) -> Decision:
    return Decision(
        allowed=row["allowed"],
        limit=row["limit"],
        remaining=row["remaining"],
        reset_at=row["reset_at"],
        retry_after_ms=row["retry_after_ms"],
        cost=row["cost"],
        key=row.get("key"),
        algorithm=row.get("algorithm"),
        window_seconds=row.get("window_seconds"),
        policy=row.get("policy"),
        tier=row.get("tier"),
        subject=row.get("subject"),
        unit=row.get("unit") or "requests",
        windows=tuple(_window(w) for w in row.get("windows") or ()),
        violated=tuple(row.get("violated") or ()),
    )


def _one_decision(rows: list[Row]) -> Decision:
    return _decision(one(rows))


def _policy(p: Mapping[str, Any]) -> Policy:
    return Policy(
        name=p["name"],
        algorithm=p["algorithm"],
        unit=p["unit"],
        default_tier=p["default_tier"],
        allow_anonymous=p["allow_anonymous"],
        description=p.get("description"),
        tiers={
            tier: tuple((w["name"], int(w["window_seconds"]), int(w["limit"])) for w in windows)
            for tier, windows in p["tiers"].items()
        },
        endpoint_costs={k: float(v) for k, v in p.get("endpoint_costs", {}).items()},
    )


# ----------------------------------------------------------------------- ops --
def _algorithm(algorithm: str) -> str:
    # The database checks it too (22023); checking here names the Python argument.
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    return algorithm


def _direct_params(key: str, limit: int, window: Window, cost: int, algorithm: str) -> Row:
    return {
        "key": key,
        "limit": limit,
        "window": window_seconds(window),
        "cost": cost,
        "algorithm": _algorithm(algorithm),
    }


def _direct_op(function: str) -> Callable[[str, int, Window, int, str], Op[Decision]]:
    """The Op builder for one of the direct-key entry points (same arguments, same result)."""

    def build(key: str, limit: int, window: Window, cost: int, algorithm: str) -> Op[Decision]:
        return Op(
            f"select {_DIRECT_COLUMNS} from public.{function}(%(key)s::text,"
            " %(limit)s::integer, %(window)s::integer, %(cost)s::integer, %(algorithm)s::text)",
            _direct_params(key, limit, window, cost, algorithm),
            _one_decision,
        )

    build.__name__ = f"{function}_op"
    return build


increment_op = _direct_op("increment_rate_limit")
peek_op = _direct_op("peek_rate_limit")
key_usage_op = _direct_op("record_rate_limit_key_usage")  # cost = the amount to add or refund


def reset_op(key: str, window: Window | None) -> Op[int]:
    return Op(
        "select public.reset_rate_limit(%(key)s::text, %(window)s::integer) as deleted",
        {"key": key, "window": None if window is None else window_seconds(window)},
        scalar,
    )


def check_op(
    policy: str, cost: int, endpoint: str | None, subject: str | None, *, peek: bool = False
) -> Op[Decision]:
    fn = "peek_check_rate_limit" if peek else "check_rate_limit"
    return Op(
        f"select {_POLICY_COLUMNS} from public.{fn}(%(policy)s::text, %(cost)s::integer,"
        " %(endpoint)s::text, %(subject)s::text)",
        {"policy": policy, "cost": cost, "endpoint": endpoint, "subject": subject},
        _one_decision,
    )


def usage_op(policy: str, subject: str, amount: int) -> Op[Decision]:
    return Op(
        f"select {_POLICY_COLUMNS} from public.record_rate_limit_usage(%(policy)s::text,"
        " %(subject)s::text, %(amount)s::integer)",
        {"policy": policy, "subject": subject, "amount": amount},
        _one_decision,
    )


def reset_subject_op(subject: str, policy: str | None) -> Op[int]:
    return Op(
        "select public.reset_rate_limit_subject(%(subject)s::text, %(policy)s::text) as deleted",
        {"subject": subject, "policy": policy},
        scalar,
    )


def get_usage_op(subject: str | None, policy: str | None) -> Op[list[Usage]]:
    def parse(rows: list[Row]) -> list[Usage]:
        return [
            Usage(
                policy=u["policy"],
                name=u["name"],
                window_seconds=int(u["window_seconds"]),
                limit=int(u["limit"]),
                used=int(u["used"]),
                remaining=int(u["remaining"]),
                reset_at=dt.datetime.fromisoformat(u["reset_at"]),
            )
            for u in scalar(rows)
        ]

    return Op(
        "select public.get_rate_limit_usage(%(subject)s::text, %(policy)s::text) as usage",
        {"subject": subject, "policy": policy},
        parse,
    )


def policies_op() -> Op[list[Policy]]:
    return Op(
        "select public.get_rate_limit_policies() as policies",
        {},
        lambda rows: [_policy(p) for p in scalar(rows)],
    )


def define_op(
    name: str,
    windows: Mapping[str, Mapping[str | int, int]],
    algorithm: str,
    unit: str,
    default_tier: str,
    allow_anonymous: bool,
    endpoint_costs: Mapping[str, float] | None,
    description: str | None,
) -> Op[Policy]:
    return Op(
        "select public.define_rate_limit_policy(%(name)s::text, %(windows)s::jsonb,"
        " %(algorithm)s::text, %(unit)s::text, %(default_tier)s::text,"
        " %(anonymous)s::boolean, %(endpoints)s::jsonb, %(description)s::text) as policy",
        {
            "name": name,
            "windows": Jsonb({t: {str(k): v for k, v in ws.items()} for t, ws in windows.items()}),
            "algorithm": _algorithm(algorithm),
            "unit": unit,
            "default_tier": default_tier,
            "anonymous": allow_anonymous,
            "endpoints": Jsonb(dict(endpoint_costs or {})),
            "description": description,
        },
        lambda rows: _policy(scalar(rows)),
    )


def drop_op(name: str) -> Op[bool]:
    return Op(
        "select public.drop_rate_limit_policy(%(name)s::text) as dropped", {"name": name}, scalar
    )


def tier_op(subject: str, tier: str | None) -> Op[str | None]:
    return Op(
        "select public.set_rate_limit_tier(%(subject)s::text, %(tier)s::text) as tier",
        {"subject": subject, "tier": tier},
        scalar,
    )


def counters_op() -> Op[list[Counter]]:
    return Op(
        "select policy, allowed, denied from pgshield.rate_limit_counters order by policy",
        {},
        lambda rows: [Counter(r["policy"], r["allowed"], r["denied"]) for r in rows],
    )


def cleanup_op(batch_size: int) -> Op[int]:
    return Op(
        "select pgshield.cleanup_expired_rate_limits(%(n)s::integer) as deleted",
        {"n": batch_size},
        scalar,
    )


def storage_op(mode: str | None) -> Op[str]:
    if mode is None:
        return Op("select pgshield.rate_limit_storage() as mode", {}, scalar)
    return Op(
        "select pgshield.set_rate_limit_storage(%(mode)s::text) as mode", {"mode": mode}, scalar
    )


# ------------------------------------------------------------------ mixins --
class RateLimitMethods:
    """Rate limiting methods of :class:`pgshield.Shield`."""

    def rate_limit(
        self,
        key: str,
        *,
        limit: int,
        window: Window,
        cost: int = 1,
        algorithm: Algorithm = "fixed_window",
        conn: psycopg.Connection | None = None,
    ) -> Decision:
        """Consume ``cost`` from ``key`` if it fits in ``limit`` per ``window`` (service_role).

        Algorithms: ``fixed_window`` (epoch-aligned), ``sliding_window`` (weighted two-window
        counter), ``token_bucket`` (GCRA: ``limit`` is the burst, refilled continuously).
        A denial consumes nothing. Raises InvalidInput for bad arguments, NotAllowed for
        roles other than service_role.
        """
        return self.call(increment_op(key, limit, window, cost, algorithm), conn)  # type: ignore[attr-defined]

    def peek_rate_limit(
        self,
        key: str,
        *,
        limit: int,
        window: Window,
        cost: int = 1,
        algorithm: Algorithm = "fixed_window",
        conn: psycopg.Connection | None = None,
    ) -> Decision:
        """What :meth:`rate_limit` would answer now, without consuming (service_role)."""
        return self.call(peek_op(key, limit, window, cost, algorithm), conn)  # type: ignore[attr-defined]

    def record_key_usage(
        self,
        key: str,
        amount: int,
        *,
        limit: int,
        window: Window,
        algorithm: Algorithm = "fixed_window",
        conn: psycopg.Connection | None = None,
    ) -> Decision:
        """Add ``amount`` to a key after the fact (even past the limit), or refund (< 0).

        Returns what a request of cost 1 would get now (nothing consumed).
        """
        op = key_usage_op(key, limit, window, amount, algorithm)
        return self.call(op, conn)  # type: ignore[attr-defined]

    def reset_rate_limit(
        self, key: str, window: Window | None = None, conn: psycopg.Connection | None = None
    ) -> int:
        """Forget a key (every window, or one); returns the number of windows forgotten."""
        return self.call(reset_op(key, window), conn)  # type: ignore[attr-defined]

    def check(
        self,
        policy: str,
        *,
        cost: int = 1,
        endpoint: str | None = None,
        subject: str | None = None,
        conn: psycopg.Connection | None = None,
    ) -> Decision:
        """Consume ``cost`` from every window of ``policy`` for a subject, or from none.

        ``subject`` is honoured for service_role (and the owner) only; an authenticated
        connection is always limited as ``auth.uid()``, anon by client IP when the policy
        allows anonymous callers. ``endpoint`` applies the policy's cost multiplier.
        """
        return self.call(check_op(policy, cost, endpoint, subject), conn)  # type: ignore[attr-defined]

    def peek_check(
        self,
        policy: str,
        *,
        cost: int = 1,
        endpoint: str | None = None,
        subject: str | None = None,
        conn: psycopg.Connection | None = None,
    ) -> Decision:
        """What :meth:`check` would answer now, without consuming or counting."""
        op = check_op(policy, cost, endpoint, subject, peek=True)
        return self.call(op, conn)  # type: ignore[attr-defined]

    def record_usage(
        self, policy: str, subject: str, amount: int, conn: psycopg.Connection | None = None
    ) -> Decision:
        """Record usage after the fact (e.g. AI tokens), or refund it with a negative amount.

        Usage past the limits is kept, so the next request is denied. Returns what a request
        of cost 1 would get now (service_role).
        """
        return self.call(usage_op(policy, subject, amount), conn)  # type: ignore[attr-defined]

    def reset_subject(
        self, subject: str, policy: str | None = None, conn: psycopg.Connection | None = None
    ) -> int:
        """Forget a subject under one policy or all; returns the windows forgotten."""
        return self.call(reset_subject_op(subject, policy), conn)  # type: ignore[attr-defined]

    def rate_limit_usage(
        self,
        subject: str | None = None,
        policy: str | None = None,
        conn: psycopg.Connection | None = None,
    ) -> list[Usage]:
        """A subject's current usage per policy window (authenticated: only its own)."""
        return self.call(get_usage_op(subject, policy), conn)  # type: ignore[attr-defined]

    def rate_limit_policies(self, conn: psycopg.Connection | None = None) -> list[Policy]:
        """Every policy (service_role)."""
        return self.call(policies_op(), conn)  # type: ignore[attr-defined]

    def define_rate_limit_policy(
        self,
        name: str,
        windows: Mapping[str, Mapping[str | int, int]],
        *,
        algorithm: Algorithm = "sliding_window",
        unit: Literal["requests", "tokens"] = "requests",
        default_tier: str = "free",
        allow_anonymous: bool = False,
        endpoint_costs: Mapping[str, float] | None = None,
        description: str | None = None,
        conn: psycopg.Connection | None = None,
    ) -> Policy:
        """Create or replace a policy (service_role).

        ``windows`` maps tiers to ``{window: limit}``, a window being seconds or ``minute``,
        ``hour``, ``day``, ``week``: ``{"free": {"minute": 10, "hour": 100}}``.
        """
        op = define_op(
            name,
            windows,
            algorithm,
            unit,
            default_tier,
            allow_anonymous,
            endpoint_costs,
            description,
        )
        return self.call(op, conn)  # type: ignore[attr-defined]

    def drop_rate_limit_policy(self, name: str, conn: psycopg.Connection | None = None) -> bool:
        """Delete a policy with its state and counters; returns whether it existed."""
        return self.call(drop_op(name), conn)  # type: ignore[attr-defined]

    def set_rate_limit_tier(
        self, subject: str, tier: str | None, conn: psycopg.Connection | None = None
    ) -> str | None:
        """Assign a subject a tier (None: back to each policy's default tier)."""
        return self.call(tier_op(subject, tier), conn)  # type: ignore[attr-defined]

    def rate_limit_counters(self, conn: psycopg.Connection | None = None) -> list[Counter]:
        """Allowed and denied decisions per policy (service_role or the owner)."""
        return self.call(counters_op(), conn)  # type: ignore[attr-defined]

    def cleanup_rate_limits(
        self, batch_size: int = 10000, conn: psycopg.Connection | None = None
    ) -> int:
        """Delete one batch of expired state; returns how many rows went."""
        return self.call(cleanup_op(batch_size), conn)  # type: ignore[attr-defined]

    def rate_limit_storage(
        self,
        mode: Literal["logged", "unlogged"] | None = None,
        conn: psycopg.Connection | None = None,
    ) -> str:
        """The storage mode of the state table; with ``mode``, switch it (the owner only)."""
        return self.call(storage_op(mode), conn)  # type: ignore[attr-defined]


class AsyncRateLimitMethods:
    """Rate limiting methods of :class:`pgshield.AsyncShield` (see :class:`RateLimitMethods`)."""

    async def rate_limit(
        self,
        key: str,
        *,
        limit: int,
        window: Window,
        cost: int = 1,
        algorithm: Algorithm = "fixed_window",
        conn: psycopg.AsyncConnection | None = None,
    ) -> Decision:
        """Consume ``cost`` from ``key`` if it fits in ``limit`` per ``window`` (service_role)."""
        op = increment_op(key, limit, window, cost, algorithm)
        return await self.call(op, conn)  # type: ignore[attr-defined]

    async def peek_rate_limit(
        self,
        key: str,
        *,
        limit: int,
        window: Window,
        cost: int = 1,
        algorithm: Algorithm = "fixed_window",
        conn: psycopg.AsyncConnection | None = None,
    ) -> Decision:
        """What :meth:`rate_limit` would answer now, without consuming."""
        return await self.call(peek_op(key, limit, window, cost, algorithm), conn)  # type: ignore[attr-defined]

    async def record_key_usage(
        self,
        key: str,
        amount: int,
        *,
        limit: int,
        window: Window,
        algorithm: Algorithm = "fixed_window",
        conn: psycopg.AsyncConnection | None = None,
    ) -> Decision:
        """Add ``amount`` to a key after the fact, or refund it (< 0)."""
        op = key_usage_op(key, limit, window, amount, algorithm)
        return await self.call(op, conn)  # type: ignore[attr-defined]

    async def reset_rate_limit(
        self, key: str, window: Window | None = None, conn: psycopg.AsyncConnection | None = None
    ) -> int:
        """Forget a key (every window, or one)."""
        return await self.call(reset_op(key, window), conn)  # type: ignore[attr-defined]

    async def check(
        self,
        policy: str,
        *,
        cost: int = 1,
        endpoint: str | None = None,
        subject: str | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> Decision:
        """Consume ``cost`` from every window of ``policy`` for a subject, or from none."""
        return await self.call(check_op(policy, cost, endpoint, subject), conn)  # type: ignore[attr-defined]

    async def peek_check(
        self,
        policy: str,
        *,
        cost: int = 1,
        endpoint: str | None = None,
        subject: str | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> Decision:
        """What :meth:`check` would answer now, without consuming or counting."""
        op = check_op(policy, cost, endpoint, subject, peek=True)
        return await self.call(op, conn)  # type: ignore[attr-defined]

    async def record_usage(
        self, policy: str, subject: str, amount: int, conn: psycopg.AsyncConnection | None = None
    ) -> Decision:
        """Record usage after the fact, or refund it with a negative amount."""
        return await self.call(usage_op(policy, subject, amount), conn)  # type: ignore[attr-defined]

    async def reset_subject(
        self, subject: str, policy: str | None = None, conn: psycopg.AsyncConnection | None = None
    ) -> int:
        """Forget a subject under one policy or all."""
        return await self.call(reset_subject_op(subject, policy), conn)  # type: ignore[attr-defined]

    async def rate_limit_usage(
        self,
        subject: str | None = None,
        policy: str | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> list[Usage]:
        """A subject's current usage per policy window."""
        return await self.call(get_usage_op(subject, policy), conn)  # type: ignore[attr-defined]

    async def rate_limit_policies(
        self, conn: psycopg.AsyncConnection | None = None
    ) -> list[Policy]:
        """Every policy (service_role)."""
        return await self.call(policies_op(), conn)  # type: ignore[attr-defined]

    async def define_rate_limit_policy(
        self,
        name: str,
        windows: Mapping[str, Mapping[str | int, int]],
        *,
        algorithm: Algorithm = "sliding_window",
        unit: Literal["requests", "tokens"] = "requests",
        default_tier: str = "free",
        allow_anonymous: bool = False,
        endpoint_costs: Mapping[str, float] | None = None,
        description: str | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> Policy:
        """Create or replace a policy (service_role)."""
        op = define_op(
            name,
            windows,
            algorithm,
            unit,
            default_tier,
            allow_anonymous,
            endpoint_costs,
            description,
        )
        return await self.call(op, conn)  # type: ignore[attr-defined]

    async def drop_rate_limit_policy(
        self, name: str, conn: psycopg.AsyncConnection | None = None
    ) -> bool:
        """Delete a policy with its state and counters."""
        return await self.call(drop_op(name), conn)  # type: ignore[attr-defined]

    async def set_rate_limit_tier(
        self, subject: str, tier: str | None, conn: psycopg.AsyncConnection | None = None
    ) -> str | None:
        """Assign a subject a tier (None: back to the default)."""
        return await self.call(tier_op(subject, tier), conn)  # type: ignore[attr-defined]

    async def rate_limit_counters(
        self, conn: psycopg.AsyncConnection | None = None
    ) -> list[Counter]:
        """Allowed and denied decisions per policy."""
        return await self.call(counters_op(), conn)  # type: ignore[attr-defined]

    async def cleanup_rate_limits(
        self, batch_size: int = 10000, conn: psycopg.AsyncConnection | None = None
    ) -> int:
        """Delete one batch of expired state."""
        return await self.call(cleanup_op(batch_size), conn)  # type: ignore[attr-defined]

    async def rate_limit_storage(
        self,
        mode: Literal["logged", "unlogged"] | None = None,
        conn: psycopg.AsyncConnection | None = None,
    ) -> str:
        """The storage mode of the state table; with ``mode``, switch it (the owner only)."""
        return await self.call(storage_op(mode), conn)  # type: ignore[attr-defined]


# --------------------------------------------------------------- limiters --
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
        self.algorithm = _algorithm(algorithm)
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

    _shield_class: str  # the name of the client class in pgshield.shield

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
        from pgshield import shield as clients

        self.spec = _LimiterSpec(
            limit=limit,
            window=window,
            algorithm=algorithm,
            policy=policy,
            prefix=prefix,
            on_error=on_error,
            timeout=timeout,
        )
        self._owns_shield = isinstance(source, str)
        if isinstance(source, str):
            dsn = resilient_dsn(source, timeout) if timeout else source
            source = getattr(clients, self._shield_class)(dsn, timeout=timeout)
        self.shield = source

    def _reset(self, name: str) -> Any:
        """The reset call for ``name`` (a value, or an awaitable for the async client)."""
        if self.spec.policy is not None:
            return self.shield.reset_subject(name, self.spec.policy)
        return self.shield.reset_rate_limit(self.spec.prefix + name, self.spec.window)


class RateLimiter(_LimiterBase):
    """A reusable limiter over :class:`pgshield.Shield`, with a failure policy.

    Either a direct limit (``limit=``, ``window=``, ``algorithm=``; keys get ``prefix``) or a
    named ``policy=`` (then ``hit(subject)``). When the database is unreachable or does not
    answer within ``timeout`` seconds, ``hit`` returns a degraded decision: allowed with
    ``on_error="open"``, denied with ``on_error="closed"``. It never waits longer than
    ``timeout``: the call runs on a worker thread, and a stuck call is left behind.
    Programming errors (InvalidInput, NotAllowed) are raised, never swallowed.
    """

    _shield_class = "Shield"

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
        call: Callable[[], Decision] = lambda: self.shield.call(op)  # noqa: E731
        try:
            if self.spec.timeout is None:
                return call()
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
        if self._owns_shield:
            # A call stuck on a dead server holds the connection: close without waiting for it
            # longer than the limiter's timeout (the daemon thread finishes the job later).
            closer = threading.Thread(target=self.shield.close, daemon=True)
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

    _shield_class = "AsyncShield"

    async def _decide(self, name: str, cost: int, endpoint: str | None, peek: bool) -> Decision:
        op = self.spec.op(name, cost, endpoint, peek=peek)
        try:
            if self.spec.timeout is None:
                return await self.shield.call(op)
            return await asyncio.wait_for(self.shield.call(op), self.spec.timeout)
        except (Unavailable, asyncio.TimeoutError) as exc:
            return self.spec.fallback(name, cost, exc)

    async def hit(self, name: str, cost: int = 1, endpoint: str | None = None) -> Decision:
        """Consume ``cost`` for ``name`` (a key, or a subject under the policy)."""
        return await self._decide(name, cost, endpoint, peek=False)

    async def peek(self, name: str, cost: int = 1, endpoint: str | None = None) -> Decision:
        """What :meth:`hit` would answer now, without consuming."""
        return await self._decide(name, cost, endpoint, peek=True)

    async def reset(self, name: str) -> int:
        """Forget ``name``."""
        return await self._reset(name)

    async def close(self) -> None:
        """Close the connection this limiter opened itself."""
        if self._owns_shield:
            await self.shield.close()

    async def __aenter__(self) -> AsyncRateLimiter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

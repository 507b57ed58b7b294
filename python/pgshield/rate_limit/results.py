"""Rate limiting results: frozen dataclasses with the fields users read, and their row parsers."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pgshield.client import Row, one
from pgshield.errors import RateLimited

ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket")
Algorithm = Literal["fixed_window", "sliding_window", "token_bucket"]
Window = int | float | dt.timedelta


def window_seconds(window: Window) -> int:
    """A window given as seconds or a ``timedelta``, in whole seconds (at least 1)."""
    seconds = window.total_seconds() if isinstance(window, dt.timedelta) else float(window)
    if seconds != int(seconds) or seconds < 1:
        raise ValueError(f"window must be a whole number of seconds >= 1, got {window!r}")
    return int(seconds)


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
            # The window the top-level fields describe: same limit, remaining and reset (two
            # windows of one limit can reset together with different remainders).
            binding = next(
                (
                    w
                    for w in self.windows
                    if (w.limit, w.remaining, w.reset_at)
                    == (self.limit, self.remaining, self.reset_at)
                ),
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


def parse_window(w: Mapping[str, Any]) -> WindowState:
    """One window of a policy decision's ``windows`` JSON."""
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


def parse_decision_row(row: Row) -> Decision:
    """A decision from one result row (direct or policy)."""
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
        windows=tuple(parse_window(w) for w in row.get("windows") or ()),
        violated=tuple(row.get("violated") or ()),
    )


def parse_decision(rows: list[Row]) -> Decision:
    """The decision of a call that returns exactly one row."""
    return parse_decision_row(one(rows))


def parse_policy(p: Mapping[str, Any]) -> Policy:
    """A policy from its JSON (get_rate_limit_policies, define_rate_limit_policy)."""
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

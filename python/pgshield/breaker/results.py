"""Circuit breaker results: frozen dataclasses with the fields users read, and their parsers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from pgshield.client import Row, one
from pgshield.errors import ShieldError

State = Literal["closed", "open", "half_open", "forced_open", "disabled"]
Outcome = Literal["success", "failure", "ignored"]
STATES = ("closed", "open", "half_open", "forced_open", "disabled")
OUTCOMES = ("success", "failure", "ignored")


class BreakerOpen(ShieldError):
    """A breaker refused the call (open, half-open with every trial slot taken, forced open)."""

    def __init__(self, message: str, *, decision: Decision | None = None) -> None:
        super().__init__(message)
        self.decision = decision


@dataclass(frozen=True)
class Decision:
    """The answer of ``acquire_breaker``: may the call go through?

    ``permit`` is what :meth:`Breakers.release` takes back (None when refused); in half-open it
    is a lease on one trial slot. ``retry_after_ms`` is 0 when allowed, -1 until a manual reset
    (forced open), else the wait in milliseconds. ``cached`` is True when a :class:`Breaker`
    answered from its local copy of an open state (no round trip); ``degraded`` when the
    database did not answer and the failure policy did (``error`` says why). ``source`` says
    who answered: ``database``, ``cache`` (the local copy of an open state), ``policy``
    (``on_db_error`` "open" or "closed": state ``unknown``) or ``local`` (the process-local
    breaker of ``on_db_error="local"``, with its own state and generation).
    """

    name: str
    allowed: bool
    state: str
    generation: int
    permit: int | None
    retry_after_ms: int
    cached: bool = False
    degraded: bool = False
    error: str | None = None
    source: str = "database"

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class Release:
    """The answer of ``release_breaker``: the state after it, and what this call did.

    ``changed`` is True when this outcome moved the breaker (tripped, closed, re-opened);
    ``counted`` is False for an outcome that changed nothing: from an older generation, of an
    expired trial lease, ``ignored``, or while disabled.
    """

    name: str
    state: str
    generation: int
    changed: bool
    counted: bool


@dataclass(frozen=True)
class BreakerConfig:
    """A breaker's settings and its state, as ``configure_breaker`` returns them."""

    name: str
    state: str
    generation: int
    reason: str
    changed_at: dt.datetime
    open_until: dt.datetime | None
    failure_threshold: int | None
    failure_rate: float | None
    min_calls: int
    window_seconds: int
    slow_call_ms: int | None
    slow_call_rate: float | None
    open_ms: int
    backoff_factor: float
    max_open_ms: int
    half_open_permits: int
    lease_ms: int
    success_threshold: int


@dataclass(frozen=True)
class BreakerStatus:
    """One row of ``pgshield.breaker_status``: the state and the current window.

    ``calls`` and ``failure_rate`` are None for a breaker without a rate rule: it does not
    count its successes (that keeps its healthy path free of writes); its failures are counted.
    """

    name: str
    state: str
    generation: int
    calls: int | None
    failures: int
    slow_calls: int
    failure_rate: float | None
    consecutive_failures: int
    half_open_in_ms: int | None
    trial_leases: int
    trial_successes: int
    open_until: dt.datetime | None
    last_change_at: dt.datetime
    last_reason: str


@dataclass(frozen=True)
class BreakerEvent:
    """One state change, as recorded in ``pgshield.breaker_events`` (and sent with NOTIFY)."""

    id: int
    name: str
    at: dt.datetime
    from_state: str
    to_state: str
    generation: int
    reason: str
    actor: str


@dataclass(frozen=True)
class BreakerSettings:
    """The installation's settings: auto-creation of unknown names, its cap, event retention."""

    auto_create: bool
    max_breakers: int
    event_retention_days: int


@dataclass(frozen=True)
class Guarded:
    """What a :class:`Breaker` call did: the value, which state answered, whether the fallback ran.

    ``state`` is the state that answered the last attempt (``cached`` when it came from the
    local copy of an open state, ``degraded`` when the database did not answer); ``source``
    says who answered it (see :class:`Decision`); ``attempts`` counts the calls that reached
    the protected function.
    """

    value: Any
    state: str
    allowed: bool
    fallback: bool
    attempts: int
    cached: bool = False
    degraded: bool = False
    error: str | None = None
    source: str = "database"


def _float(value: Any) -> float | None:
    return None if value is None else float(Decimal(str(value)))


def parse_decision(rows: list[Row]) -> Decision:
    r = one(rows)
    return Decision(
        name=r["name"],
        allowed=bool(r["allowed"]),
        state=r["state"],
        generation=int(r["generation"]),
        permit=r["permit"],
        retry_after_ms=int(r["retry_after_ms"]),
    )


def parse_release(rows: list[Row]) -> Release:
    r = one(rows)
    return Release(r["name"], r["state"], int(r["generation"]), r["changed"], r["counted"])


def _ts(value: Any) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(str(value))


def parse_config(b: Mapping[str, Any]) -> BreakerConfig:
    ts = _ts(b["changed_at"])
    assert ts is not None
    return BreakerConfig(
        name=b["name"],
        state=b["state"],
        generation=int(b["generation"]),
        reason=b["reason"],
        changed_at=ts,
        open_until=_ts(b.get("open_until")),
        failure_threshold=b.get("failure_threshold"),
        failure_rate=_float(b.get("failure_rate")),
        min_calls=int(b["min_calls"]),
        window_seconds=int(b["window_seconds"]),
        slow_call_ms=b.get("slow_call_ms"),
        slow_call_rate=_float(b.get("slow_call_rate")),
        open_ms=int(b["open_ms"]),
        backoff_factor=float(b["backoff_factor"]),
        max_open_ms=int(b["max_open_ms"]),
        half_open_permits=int(b["half_open_permits"]),
        lease_ms=int(b["lease_ms"]),
        success_threshold=int(b["success_threshold"]),
    )


def parse_status(r: Row) -> BreakerStatus:
    return BreakerStatus(
        name=r["name"],
        state=r["state"],
        generation=int(r["generation"]),
        calls=None if r["calls"] is None else int(r["calls"]),
        failures=int(r["failures"]),
        slow_calls=int(r["slow_calls"]),
        failure_rate=_float(r["failure_rate"]),
        consecutive_failures=int(r["consecutive_failures"]),
        half_open_in_ms=r["half_open_in_ms"],
        trial_leases=int(r["trial_leases"]),
        trial_successes=int(r["trial_successes"]),
        open_until=r["open_until"],
        last_change_at=r["last_change_at"],
        last_reason=r["last_reason"],
    )


def parse_event(r: Row) -> BreakerEvent:
    return BreakerEvent(
        id=int(r["id"]),
        name=r["name"],
        at=r["at"],
        from_state=r["from_state"],
        to_state=r["to_state"],
        generation=int(r["generation"]),
        reason=r["reason"],
        actor=str(r["actor"]),
    )


def parse_settings(s: Mapping[str, Any]) -> BreakerSettings:
    return BreakerSettings(
        bool(s["auto_create"]), int(s["max_breakers"]), int(s["event_retention_days"])
    )

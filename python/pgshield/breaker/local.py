"""``LocalBreaker``: a process-local circuit breaker for while the database cannot be reached.

It follows the rules of ``sql/breaker.sql`` (consecutive failures, failure and slow-call rates
over a window with a minimum of calls, open periods with capped backoff, leased trial slots in
half-open, successes needed to close, generations that make late outcomes stale), on this
process's monotonic clock and in its memory only. :class:`pgshield.Breaker` with
``on_db_error="local"`` asks it when the database does not answer; its answers say
``source="local"``. Thread-safe; no I/O, so the sync and async breakers share it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pgshield.breaker.results import BreakerConfig, Decision

SHIFT = 4294967296  # a permit is generation * 2**32 + lease number, as in the database


@dataclass(frozen=True)
class LocalRules:
    """The settings of a :class:`LocalBreaker`: ``configure_breaker``'s, with its defaults."""

    failure_threshold: int | None = 5
    failure_rate: float | None = None
    min_calls: int = 10
    window_seconds: int = 60
    slow_call_ms: int | None = None
    slow_call_rate: float | None = None
    open_ms: int = 30000
    backoff_factor: float = 1.0
    max_open_ms: int | None = None
    half_open_permits: int = 1
    lease_ms: int = 30000
    success_threshold: int = 2

    def __post_init__(self) -> None:
        if (
            self.failure_threshold is None
            and self.failure_rate is None
            and (self.slow_call_rate is None)
        ):
            raise ValueError("a breaker needs a trip rule: failure_threshold, failure_rate or slow")
        if (self.slow_call_ms is None) != (self.slow_call_rate is None):
            raise ValueError("slow_call_ms and slow_call_rate go together")
        if min(self.min_calls, self.window_seconds, self.open_ms, self.half_open_permits) < 1:
            raise ValueError("min_calls, window_seconds, open_ms, half_open_permits must be >= 1")
        if min(self.lease_ms, self.success_threshold) < 1 or self.backoff_factor < 1:
            raise ValueError("lease_ms and success_threshold must be >= 1, backoff_factor >= 1")

    @classmethod
    def of(cls, config: BreakerConfig) -> LocalRules:
        """The rules of a breaker as the database has them (``shield.breakers.configure``)."""
        return cls(
            config.failure_threshold,
            config.failure_rate,
            config.min_calls,
            config.window_seconds,
            config.slow_call_ms,
            config.slow_call_rate,
            config.open_ms,
            config.backoff_factor,
            config.max_open_ms,
            config.half_open_permits,
            config.lease_ms,
            config.success_threshold,
        )

    @property
    def rated(self) -> bool:
        return self.failure_rate is not None or self.slow_call_rate is not None


@dataclass
class _State:
    state: str = "closed"
    generation: int = 1
    opens: int = 0
    open_until: float = 0.0
    consecutive_failures: int = 0
    trial_successes: int = 0
    leases_issued: int = 0
    leases: dict[int, float] = field(default_factory=dict)  # lease number -> expiry
    window: dict[int, list[int]] = field(default_factory=dict)  # second -> calls, fails, slow
    reason: str = "created"


class LocalBreaker:
    """One breaker kept in this process's memory, with the database's rules.

    ``acquire()`` returns a :class:`Decision` with ``source="local"``; hand its permit back to
    ``release(permit, outcome, duration_ms)``. ``clock`` returns seconds (monotonic).
    """

    def __init__(
        self,
        rules: LocalRules | None = None,
        *,
        name: str = "local",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rules = rules or LocalRules()
        self.name = name
        self._clock = clock
        self._s = _State()
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        """The state as of the last call (open turns half-open on the next ``acquire``)."""
        return self._s.state

    @property
    def generation(self) -> int:
        return self._s.generation

    @property
    def reason(self) -> str:
        """Why the last state change happened."""
        return self._s.reason

    def _answer(
        self, allowed: bool, permit: int | None, retry_ms: int, error: str | None
    ) -> Decision:
        s = self._s
        return Decision(
            self.name, allowed, s.state, s.generation, permit, retry_ms, False, True, error,
            "local",
        )  # fmt: skip

    def _move(self, to: str, reason: str, now: float) -> None:
        s, r = self._s, self.rules
        s.opens = s.opens + 1 if to == "open" else 0 if to == "closed" else s.opens
        if to == "open":
            ms = r.open_ms * r.backoff_factor ** min(s.opens - 1, 64)
            s.open_until = now + min(ms, r.max_open_ms or r.open_ms) / 1000
        s.state, s.generation, s.reason = to, s.generation + 1, reason
        s.consecutive_failures = s.trial_successes = s.leases_issued = 0
        s.leases.clear()
        s.window.clear()  # the window counts the current generation only

    def acquire(self, error: str | None = None) -> Decision:
        """May a call go through? ``error`` is kept in the answer (why the database did not)."""
        with self._lock:
            s, now = self._s, self._clock()
            if s.state == "closed":
                return self._answer(True, s.generation * SHIFT, 0, error)
            if s.state == "open":
                if now < s.open_until:
                    return self._answer(False, None, _ms(s.open_until - now), error)
                self._move("half_open", "open period over", now)
            for lease, expires in list(s.leases.items()):
                if expires <= now:
                    del s.leases[lease]
            if len(s.leases) >= self.rules.half_open_permits:
                return self._answer(False, None, _ms(min(s.leases.values()) - now), error)
            s.leases_issued += 1
            s.leases[s.leases_issued] = now + self.rules.lease_ms / 1000
            return self._answer(True, s.generation * SHIFT + s.leases_issued, 0, error)

    def release(self, permit: int, outcome: str, duration_ms: int | None = None) -> bool:
        """Report an outcome; returns whether it was counted (False when stale or ignored)."""
        if outcome not in ("success", "failure", "ignored"):
            raise ValueError("outcome must be success, failure or ignored")
        generation, lease = divmod(permit, SHIFT)
        r = self.rules
        limit = r.slow_call_ms
        slow = limit is not None and duration_ms is not None and duration_ms >= limit
        bad = outcome == "failure" or (outcome == "success" and slow)
        with self._lock:
            s, now = self._s, self._clock()
            if generation != s.generation or (outcome == "ignored" and s.state == "closed"):
                return False
            if s.state == "closed":
                if lease:
                    return False
                self._count(now, outcome == "failure", slow)
                s.consecutive_failures = s.consecutive_failures + 1 if outcome == "failure" else 0
                if bad:
                    reason = self._trip_reason(now)
                    if reason:
                        self._move("open", reason, now)
                return True
            if s.state != "half_open" or s.leases.pop(lease, now) <= now:
                return False  # not a live lease of this generation
            if outcome == "ignored":
                return False  # the slot is free again
            if bad:
                why = "trial call failed" if outcome == "failure" else "trial call slow"
                self._move("open", why, now)
            else:
                s.trial_successes += 1
                if s.trial_successes >= r.success_threshold:
                    self._move("closed", f"{s.trial_successes} trial calls succeeded", now)
            return True

    def _count(self, now: float, failure: bool, slow: bool) -> None:
        second = math.floor(now)
        row = self._s.window.setdefault(second, [0, 0, 0])
        row[0] += 1
        row[1] += failure
        row[2] += slow
        for old in [k for k in self._s.window if k <= second - self.rules.window_seconds]:
            del self._s.window[old]

    def _trip_reason(self, now: float) -> str | None:
        s, r = self._s, self.rules
        if r.failure_threshold is not None and s.consecutive_failures >= r.failure_threshold:
            return f"{s.consecutive_failures} consecutive failures"
        if not r.rated:
            return None
        since = math.floor(now) - r.window_seconds
        rows = [v for k, v in s.window.items() if k > since]
        calls, failures, slow = (sum(v[i] for v in rows) for i in range(3))
        if calls < r.min_calls:
            return None
        if r.failure_rate is not None and failures >= r.failure_rate * calls:
            return f"failure rate ({failures} of {calls} calls in {r.window_seconds} s)"
        if r.slow_call_rate is not None and slow >= r.slow_call_rate * calls:
            return f"slow call rate ({slow} of {calls} calls in {r.window_seconds} s)"
        return None


def _ms(seconds: float) -> int:
    """Milliseconds until then, rounded up, at least 1 (as ``breaker_ms_until``)."""
    return max(1, math.ceil(seconds * 1000))

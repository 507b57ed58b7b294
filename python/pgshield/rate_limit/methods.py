"""Rate limiting methods: ``shield.rate_limits.<method>(...)``.

The synchronous source. ``methods_async.py`` is generated from it (``python -m pgshield._twin``):
write each method as ``return self._call(<op>, conn)`` with ``conn: psycopg.Connection | None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import psycopg

from pgshield.namespace import Namespace
from pgshield.rate_limit.ops import (
    check_op,
    cleanup_op,
    counters_op,
    define_op,
    drop_op,
    get_usage_op,
    increment_op,
    key_usage_op,
    peek_op,
    policies_op,
    reset_op,
    reset_subject_op,
    storage_op,
    tier_op,
    usage_op,
)
from pgshield.rate_limit.results import Algorithm, Counter, Decision, Policy, Usage, Window


class RateLimits(Namespace):
    """Rate limiting (``sql/rate_limit.sql``): ``shield.rate_limits.<method>(...)``.

    Direct keys (``hit``, ``peek``, ``record``, ``reset``: the caller picks the limit,
    service_role only) and named policies (``check``, ``peek_check``, ``record_usage``, ...:
    limits per tier and window). Every method takes ``conn=`` to run in the caller's own
    transaction.
    """

    def hit(
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
        return self._call(increment_op(key, limit, window, cost, algorithm), conn)

    def peek(
        self,
        key: str,
        *,
        limit: int,
        window: Window,
        cost: int = 1,
        algorithm: Algorithm = "fixed_window",
        conn: psycopg.Connection | None = None,
    ) -> Decision:
        """What :meth:`hit` would answer now, without consuming (service_role)."""
        return self._call(peek_op(key, limit, window, cost, algorithm), conn)

    def record(
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
        return self._call(op, conn)

    def reset(
        self, key: str, window: Window | None = None, conn: psycopg.Connection | None = None
    ) -> int:
        """Forget a key (every window, or one); returns the number of windows forgotten."""
        return self._call(reset_op(key, window), conn)

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
        return self._call(check_op(policy, cost, endpoint, subject), conn)

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
        return self._call(op, conn)

    def record_usage(
        self, policy: str, subject: str, amount: int, conn: psycopg.Connection | None = None
    ) -> Decision:
        """Record usage after the fact (e.g. AI tokens), or refund it with a negative amount.

        Usage past the limits is kept, so the next request is denied. Returns what a request
        of cost 1 would get now (service_role).
        """
        return self._call(usage_op(policy, subject, amount), conn)

    def reset_subject(
        self, subject: str, policy: str | None = None, conn: psycopg.Connection | None = None
    ) -> int:
        """Forget a subject under one policy or all; returns the windows forgotten."""
        return self._call(reset_subject_op(subject, policy), conn)

    def usage(
        self,
        subject: str | None = None,
        policy: str | None = None,
        conn: psycopg.Connection | None = None,
    ) -> list[Usage]:
        """A subject's current usage per policy window (authenticated: only its own)."""
        return self._call(get_usage_op(subject, policy), conn)

    def policies(self, conn: psycopg.Connection | None = None) -> list[Policy]:
        """Every policy (service_role)."""
        return self._call(policies_op(), conn)

    def define_policy(
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
        return self._call(op, conn)

    def drop_policy(self, name: str, conn: psycopg.Connection | None = None) -> bool:
        """Delete a policy with its state and counters; returns whether it existed."""
        return self._call(drop_op(name), conn)

    def set_tier(
        self, subject: str, tier: str | None, conn: psycopg.Connection | None = None
    ) -> str | None:
        """Assign a subject a tier (None: back to each policy's default tier)."""
        return self._call(tier_op(subject, tier), conn)

    def counters(self, conn: psycopg.Connection | None = None) -> list[Counter]:
        """Allowed and denied decisions per policy (service_role or the owner)."""
        return self._call(counters_op(), conn)

    def cleanup(self, batch_size: int = 10000, conn: psycopg.Connection | None = None) -> int:
        """Delete one batch of expired state; returns how many rows went."""
        return self._call(cleanup_op(batch_size), conn)

    def storage(
        self,
        mode: Literal["logged", "unlogged"] | None = None,
        conn: psycopg.Connection | None = None,
    ) -> str:
        """The storage mode of the state table; with ``mode``, switch it (the owner only)."""
        return self._call(storage_op(mode), conn)

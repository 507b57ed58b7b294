"""Circuit breaker methods: ``shield.breakers.<method>(...)``.

The synchronous source. ``methods_async.py`` is generated from it (``python -m pgshield._twin``):
write each method as ``return self._call(<op>, conn)`` with ``conn: psycopg.Connection | None``.
"""

from __future__ import annotations

import psycopg

from pgshield.breaker.ops import (
    acquire_op,
    cleanup_op,
    configure_op,
    drop_op,
    events_op,
    force_op,
    release_op,
    reset_op,
    settings_op,
    status_op,
)
from pgshield.breaker.results import (
    BreakerConfig,
    BreakerEvent,
    BreakerSettings,
    BreakerStatus,
    Decision,
    Outcome,
    Release,
)
from pgshield.namespace import Namespace


class Breakers(Namespace):
    """Circuit breakers (``sql/breaker.sql``): ``shield.breakers.<method>(...)``.

    Every instance shares one state per breaker, kept in the database. Callers: service_role
    and the owner. For a decorator / context manager with fallback, retries and a failure
    policy, use :class:`pgshield.Breaker`. Every method takes ``conn=``.
    """

    def acquire(self, name: str, conn: psycopg.Connection | None = None) -> Decision:
        """May a call through ``name`` go ahead now? Hand ``permit`` back to :meth:`release`.

        Closed: yes, with no row lock. Open: no, until the open period ends; the first call
        after it moves the breaker to half-open. Half-open: a lease on a trial slot, or no.
        An unknown name is created with the defaults unless the installation refuses it
        (NotFound). Raises InvalidInput for a bad name, NotAllowed for other roles.
        """
        return self._call(acquire_op(name), conn)

    def release(
        self,
        name: str,
        permit: int,
        outcome: Outcome,
        duration_ms: int | None = None,
        conn: psycopg.Connection | None = None,
    ) -> Release:
        """Report the outcome of a permitted call: ``success``, ``failure`` or ``ignored``.

        An outcome from an older generation (or of an expired trial lease) changes nothing;
        ``ignored`` is not counted and gives a trial slot back. ``duration_ms`` decides
        whether the call was slow (for breakers with a slow-call rule).
        """
        return self._call(release_op(name, permit, outcome, duration_ms), conn)

    def configure(
        self,
        name: str,
        *,
        failure_threshold: int | None = 5,
        failure_rate: float | None = None,
        min_calls: int = 10,
        window_seconds: int = 60,
        slow_call_ms: int | None = None,
        slow_call_rate: float | None = None,
        open_ms: int = 30000,
        backoff_factor: float = 1.0,
        max_open_ms: int | None = None,
        half_open_permits: int = 1,
        lease_ms: int = 30000,
        success_threshold: int = 2,
        conn: psycopg.Connection | None = None,
    ) -> BreakerConfig:
        """Create a breaker or replace every setting (its state is kept; service_role).

        Trip on ``failure_threshold`` consecutive failures, or when ``failure_rate`` (0-1) of
        at least ``min_calls`` calls in ``window_seconds`` failed, or when ``slow_call_rate``
        of them took ``slow_call_ms`` or more. The n-th consecutive open lasts
        ``min(open_ms * backoff_factor ** (n - 1), max_open_ms)``; then ``half_open_permits``
        trial calls (each leased for ``lease_ms``), ``success_threshold`` successes to close.
        """
        op = configure_op(
            name,
            failure_threshold=failure_threshold,
            failure_rate=failure_rate,
            min_calls=min_calls,
            window_seconds=window_seconds,
            slow_call_ms=slow_call_ms,
            slow_call_rate=slow_call_rate,
            open_ms=open_ms,
            backoff_factor=backoff_factor,
            max_open_ms=max_open_ms,
            half_open_permits=half_open_permits,
            lease_ms=lease_ms,
            success_threshold=success_threshold,
        )
        return self._call(op, conn)

    def reset(
        self, name: str, reason: str, conn: psycopg.Connection | None = None
    ) -> BreakerConfig:
        """Back to closed, counters and backoff cleared, ``reason`` logged (service_role)."""
        return self._call(reset_op(name, reason), conn)

    def force_open(
        self, name: str, reason: str, conn: psycopg.Connection | None = None
    ) -> BreakerConfig:
        """Refuse every call through ``name`` until :meth:`reset` (service_role)."""
        return self._call(force_op(name, "forced_open", reason), conn)

    def disable(
        self, name: str, reason: str, conn: psycopg.Connection | None = None
    ) -> BreakerConfig:
        """Force ``name`` closed: every call goes through, nothing counted, until :meth:`reset`."""
        return self._call(force_op(name, "disabled", reason), conn)

    def drop(self, name: str, conn: psycopg.Connection | None = None) -> bool:
        """Forget a breaker with its counters and events; returns whether it existed."""
        return self._call(drop_op(name), conn)

    def status(
        self, name: str | None = None, conn: psycopg.Connection | None = None
    ) -> list[BreakerStatus]:
        """Every breaker's state and window (or one breaker's), by name (service_role)."""
        return self._call(status_op(name), conn)

    def events(
        self, name: str | None = None, limit: int = 100, conn: psycopg.Connection | None = None
    ) -> list[BreakerEvent]:
        """The newest state changes, of one breaker or of all, newest first (service_role)."""
        return self._call(events_op(name, limit), conn)

    def cleanup(self, batch_size: int = 10000, conn: psycopg.Connection | None = None) -> int:
        """Delete one batch of old counters, expired leases and old events; returns how many."""
        return self._call(cleanup_op(batch_size), conn)

    def settings(
        self,
        *,
        auto_create: bool | None = None,
        max_breakers: int | None = None,
        event_retention_days: int | None = None,
        conn: psycopg.Connection | None = None,
    ) -> BreakerSettings:
        """The installation's breaker settings; with arguments, change them first.

        ``auto_create``: whether acquire creates unknown breakers with the defaults (else
        NotFound), up to ``max_breakers``; events are kept ``event_retention_days``.
        """
        return self._call(settings_op(auto_create, max_breakers, event_retention_days), conn)

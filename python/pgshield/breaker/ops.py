"""Circuit breaker ops: one :class:`~pgshield.client.Op` builder per SQL entry point."""

from __future__ import annotations

import json

from pgshield.breaker.local import SHIFT
from pgshield.breaker.results import (
    OUTCOMES,
    BreakerConfig,
    BreakerEvent,
    BreakerSettings,
    BreakerStatus,
    Decision,
    Release,
    parse_config,
    parse_decision,
    parse_event,
    parse_release,
    parse_settings,
    parse_status,
)
from pgshield.client import Op, Row, scalar

_STATUS_COLUMNS = (
    "name, state, generation, calls, failures, slow_calls, failure_rate, consecutive_failures,"
    " half_open_in_ms, trial_leases, trial_successes, open_until, last_change_at, last_reason"
)


def outcome_name(outcome: str) -> str:
    """``outcome`` when the database knows it, else ValueError naming the argument."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
    return outcome


# The prepared forms of acquire and release (see Op.prepared): one plain indexed read of the
# breaker's row that answers the healthy path itself, the same test as the function's first
# branch, and calls the function in the same statement for everything else (its result as JSON
# text, read with json.loads whatever loaders the connection has). No row: the name is unknown
# (or not readable by this role), and the function call answers.
# pgshield.breakers grants service_role these columns (and nothing else) for this read. The
# statements run under the caller's search_path: every function is schema-qualified (a
# polymorphic to_jsonb could otherwise be shadowed by one for the result type), and the
# operators and casts are built-in exact matches, which pg_catalog, searched first, resolves.
PREPARED_ACQUIRE = (
    "select b.state, b.generation, case when b.state in ('closed', 'disabled') then null"
    " else pg_catalog.to_jsonb(public.acquire_breaker(b.name))::text end as slow"
    " from pgshield.breakers b where b.name = %(name)s::text"
)
PREPARED_RELEASE = (
    "select b.state, b.generation, case when b.state = 'closed'"
    " and %(permit)s::bigint = b.generation * 4294967296 and %(outcome)s::text = 'success'"
    " and b.consecutive_failures = 0 and b.failure_rate is null and b.slow_call_rate is null"
    " and (%(ms)s::integer is null or %(ms)s::integer >= 0) then null"
    " else pg_catalog.to_jsonb(public.release_breaker(b.name, %(permit)s::bigint,"
    " %(outcome)s::text, %(ms)s::integer))::text end as slow"
    " from pgshield.breakers b where b.name = %(name)s::text"
)


def acquire_op(name: str) -> Op[Decision]:
    def fast(rows: list[Row]) -> Decision | None:
        if not rows:
            return None
        r = rows[0]
        if r["slow"] is not None:
            return parse_decision([json.loads(r["slow"])])
        gen = int(r["generation"])
        return Decision(name, True, r["state"], gen, gen * SHIFT, 0)

    params = {"name": name}
    return Op(
        "select allowed, state, generation, permit, retry_after_ms, name"
        " from public.acquire_breaker(%(name)s::text)",
        params,
        parse_decision,
        Op(PREPARED_ACQUIRE, params, fast),
    )


def release_op(name: str, permit: int, outcome: str, duration_ms: int | None) -> Op[Release]:
    def fast(rows: list[Row]) -> Release | None:
        if not rows:
            return None
        r = rows[0]
        if r["slow"] is not None:
            return parse_release([json.loads(r["slow"])])
        return Release(name, r["state"], int(r["generation"]), False, True)

    params = {"name": name, "permit": permit, "outcome": outcome_name(outcome), "ms": duration_ms}
    return Op(
        "select state, generation, changed, counted, name from public.release_breaker("
        "%(name)s::text, %(permit)s::bigint, %(outcome)s::text, %(ms)s::integer)",
        params,
        parse_release,
        Op(PREPARED_RELEASE, params, fast),
    )


def configure_op(
    name: str,
    *,
    failure_threshold: int | None,
    failure_rate: float | None,
    min_calls: int,
    window_seconds: int,
    slow_call_ms: int | None,
    slow_call_rate: float | None,
    open_ms: int,
    backoff_factor: float,
    max_open_ms: int | None,
    half_open_permits: int,
    lease_ms: int,
    success_threshold: int,
) -> Op[BreakerConfig]:
    return Op(
        "select public.configure_breaker(%(name)s::text, %(ft)s::integer, %(fr)s::numeric,"
        " %(mc)s::integer, %(ws)s::integer, %(sms)s::integer, %(sr)s::numeric, %(om)s::integer,"
        " %(bf)s::numeric, %(mom)s::integer, %(hp)s::integer, %(lm)s::integer,"
        " %(st)s::integer) as breaker",
        {
            "name": name,
            "ft": failure_threshold,
            "fr": failure_rate,
            "mc": min_calls,
            "ws": window_seconds,
            "sms": slow_call_ms,
            "sr": slow_call_rate,
            "om": open_ms,
            "bf": backoff_factor,
            "mom": max_open_ms,
            "hp": half_open_permits,
            "lm": lease_ms,
            "st": success_threshold,
        },
        lambda rows: parse_config(scalar(rows)),
    )


def reset_op(name: str, reason: str) -> Op[BreakerConfig]:
    return Op(
        "select public.reset_breaker(%(name)s::text, %(reason)s::text) as breaker",
        {"name": name, "reason": reason},
        lambda rows: parse_config(scalar(rows)),
    )


def force_op(name: str, state: str, reason: str) -> Op[BreakerConfig]:
    return Op(
        "select public.force_breaker(%(name)s::text, %(state)s::text, %(reason)s::text) as breaker",
        {"name": name, "state": state, "reason": reason},
        lambda rows: parse_config(scalar(rows)),
    )


def drop_op(name: str) -> Op[bool]:
    return Op("select public.drop_breaker(%(name)s::text) as dropped", {"name": name}, scalar)


def status_op(name: str | None) -> Op[list[BreakerStatus]]:
    return Op(
        f"select {_STATUS_COLUMNS} from pgshield.breaker_status"
        " where %(name)s::text is null or name = %(name)s::text order by name",
        {"name": name},
        lambda rows: [parse_status(r) for r in rows],
    )


def events_op(name: str | None, limit: int) -> Op[list[BreakerEvent]]:
    return Op(
        "select id, name, at, from_state, to_state, generation, reason, actor"
        " from pgshield.breaker_events_recent(%(name)s::text, %(limit)s::integer)",
        {"name": name, "limit": limit},
        lambda rows: [parse_event(r) for r in rows],
    )


def cleanup_op(batch_size: int) -> Op[int]:
    return Op(
        "select pgshield.breaker_cleanup(%(n)s::integer) as deleted", {"n": batch_size}, scalar
    )


def settings_op(
    auto_create: bool | None, max_breakers: int | None, event_retention_days: int | None
) -> Op[BreakerSettings]:
    if auto_create is None and max_breakers is None and event_retention_days is None:
        return Op(
            "select pgshield.breaker_settings() as settings",
            {},
            lambda rows: parse_settings(scalar(rows)),
        )
    return Op(
        "select pgshield.set_breaker_settings(%(a)s::boolean, %(m)s::integer, %(d)s::integer)"
        " as settings",
        {"a": auto_create, "m": max_breakers, "d": event_retention_days},
        lambda rows: parse_settings(scalar(rows)),
    )

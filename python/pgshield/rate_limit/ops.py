"""Rate limiting ops: one :class:`~pgshield.client.Op` builder per SQL entry point."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from psycopg.types.json import Jsonb

from pgshield.client import Op, Row, scalar
from pgshield.rate_limit.results import (
    ALGORITHMS,
    Counter,
    Decision,
    Policy,
    Usage,
    Window,
    parse_decision,
    parse_policy,
    window_seconds,
)

_DECISION_COLUMNS = 'allowed, "limit", remaining, reset_at, retry_after_ms'
_DIRECT_COLUMNS = f"{_DECISION_COLUMNS}, key, algorithm, window_seconds, cost"
_POLICY_COLUMNS = f"{_DECISION_COLUMNS}, policy, tier, subject, cost, unit, windows, violated"


def algorithm_name(algorithm: str) -> str:
    """``algorithm`` when it is one the database knows, else ValueError naming the argument."""
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
        "algorithm": algorithm_name(algorithm),
    }


def _direct_op(function: str) -> Callable[[str, int, Window, int, str], Op[Decision]]:
    """The Op builder for one of the direct-key entry points (same arguments, same result)."""

    def build(key: str, limit: int, window: Window, cost: int, algorithm: str) -> Op[Decision]:
        return Op(
            f"select {_DIRECT_COLUMNS} from public.{function}(%(key)s::text,"
            " %(limit)s::integer, %(window)s::integer, %(cost)s::integer, %(algorithm)s::text)",
            _direct_params(key, limit, window, cost, algorithm),
            parse_decision,
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
        parse_decision,
    )


def usage_op(policy: str, subject: str, amount: int) -> Op[Decision]:
    return Op(
        f"select {_POLICY_COLUMNS} from public.record_rate_limit_usage(%(policy)s::text,"
        " %(subject)s::text, %(amount)s::integer)",
        {"policy": policy, "subject": subject, "amount": amount},
        parse_decision,
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
        lambda rows: [parse_policy(p) for p in scalar(rows)],
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
            "algorithm": algorithm_name(algorithm),
            "unit": unit,
            "default_tier": default_tier,
            "anonymous": allow_anonymous,
            "endpoints": Jsonb(dict(endpoint_costs or {})),
            "description": description,
        },
        lambda rows: parse_policy(scalar(rows)),
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

"""``pgshield ratelimit``: hit, peek, reset and inspect rate limits from the shell."""

from __future__ import annotations

from typing import Any

import click

from pgshield.cli.context import dsn_option, expected_errors, resolve_dsn
from pgshield.cli.output import emit, emit_json, json_option
from pgshield.rate_limit import ALGORITHMS, Decision
from pgshield.shield import Shield

DECISION_COLUMNS = ["allowed", "limit", "remaining", "reset_at", "retry_after_ms", "target"]
WINDOW_COLUMNS = ["name", "window_seconds", "limit", "used", "remaining", "reset_at", "allowed"]

limit_options = [
    click.option("--policy", help="A named policy; TARGET is then the subject."),
    click.option("--limit", type=click.IntRange(min=1), help="Direct key: the limit."),
    click.option("--window", type=click.IntRange(min=1), help="Direct key: window in seconds."),
    click.option(
        "--algorithm",
        type=click.Choice(ALGORITHMS),
        default="fixed_window",
        show_default=True,
        help="Direct key: the algorithm.",
    ),
    click.option("--cost", type=click.IntRange(min=1), default=1, show_default=True),
    click.option("--endpoint", help="Policy: an endpoint with a cost multiplier."),
]


def _limit_options(func: Any) -> Any:
    for option in reversed(limit_options):
        func = option(func)
    return func


def _decide(
    dsn: str | None,
    target: str,
    policy: str | None,
    limit: int | None,
    window: int | None,
    algorithm: str,
    cost: int,
    endpoint: str | None,
    *,
    peek: bool,
) -> Decision:
    if policy is not None:
        if limit is not None or window is not None:
            raise click.UsageError(
                "--policy takes its limits from the database: drop --limit/--window"
            )
        with Shield(resolve_dsn(dsn)) as shield:
            decide = shield.rate_limits.peek_check if peek else shield.rate_limits.check
            return decide(policy, cost=cost, endpoint=endpoint, subject=target)
    if limit is None or window is None:
        raise click.UsageError("give --policy NAME, or both --limit and --window")
    if endpoint is not None:
        raise click.UsageError("--endpoint needs --policy")
    with Shield(resolve_dsn(dsn)) as shield:
        decide_key = shield.rate_limits.peek if peek else shield.rate_limits.hit
        return decide_key(target, limit=limit, window=window, cost=cost, algorithm=algorithm)  # type: ignore[arg-type]


def _show(decision: Decision, as_json: bool) -> None:
    if as_json:
        emit_json(decision)
        return
    row = {
        "allowed": decision.allowed,
        "limit": decision.limit,
        "remaining": decision.remaining,
        "reset_at": decision.reset_at,
        "retry_after_ms": decision.retry_after_ms,
        "target": decision.key or f"{decision.policy}:{decision.subject} ({decision.tier})",
    }
    emit([row], False, DECISION_COLUMNS)
    if decision.windows:
        click.echo("")
        emit([w.__dict__ for w in decision.windows], False, WINDOW_COLUMNS)


@click.group()
def ratelimit() -> None:
    """Rate limits kept in the database: direct keys and named policies.

    Example: pgshield ratelimit hit user:42 --limit 10 --window 60
    """


@ratelimit.command()
@click.argument("target")
@_limit_options
@dsn_option
@json_option
@expected_errors
def hit(
    target: str,
    policy: str | None,
    limit: int | None,
    window: int | None,
    algorithm: str,
    cost: int,
    endpoint: str | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Consume from a key (--limit/--window) or a subject under --policy; exit 0 either way.

    Example: pgshield ratelimit hit alice --policy api --cost 2
    """
    _show(
        _decide(dsn, target, policy, limit, window, algorithm, cost, endpoint, peek=False), as_json
    )


@ratelimit.command()
@click.argument("target")
@_limit_options
@dsn_option
@json_option
@expected_errors
def peek(
    target: str,
    policy: str | None,
    limit: int | None,
    window: int | None,
    algorithm: str,
    cost: int,
    endpoint: str | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """What hit would answer now, without consuming anything.

    Example: pgshield ratelimit peek user:42 --limit 10 --window 60 --json
    """
    _show(
        _decide(dsn, target, policy, limit, window, algorithm, cost, endpoint, peek=True), as_json
    )


@ratelimit.command()
@click.argument("target")
@click.option("--policy", help="Forget a subject under this policy only.")
@click.option("--subject", "is_subject", is_flag=True, help="TARGET is a subject (all policies).")
@click.option("--window", type=click.IntRange(min=1), help="Direct key: forget one window only.")
@dsn_option
@json_option
@expected_errors
def reset(
    target: str,
    policy: str | None,
    is_subject: bool,
    window: int | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Forget a direct key, or a subject (--subject, or --policy NAME).

    Example: pgshield ratelimit reset alice --policy api
    """
    with Shield(resolve_dsn(dsn)) as shield:
        if policy is not None or is_subject:
            if window is not None:
                raise click.UsageError("--window applies to direct keys only")
            deleted = shield.rate_limits.reset_subject(target, policy)
        else:
            deleted = shield.rate_limits.reset(target, window)
    if as_json:
        emit_json({"target": target, "deleted": deleted})
    else:
        click.echo(f"forgot {deleted} window(s) of {target}")


@ratelimit.command()
@dsn_option
@json_option
@expected_errors
def policies(dsn: str | None, as_json: bool) -> None:
    """List the policies with their windows per tier.

    Example: pgshield ratelimit policies --json
    """
    with Shield(resolve_dsn(dsn)) as shield:
        found = shield.rate_limits.policies()
    if as_json:
        emit_json(found)
        return
    rows = [
        {
            "policy": p.name,
            "tier": tier + (" (default)" if tier == p.default_tier else ""),
            "algorithm": p.algorithm,
            "unit": p.unit,
            "windows": ", ".join(f"{limit}/{name}" for name, _, limit in windows),
            "anonymous": p.allow_anonymous,
        }
        for p in found
        for tier, windows in sorted(p.tiers.items(), key=lambda t: t[1][0][2])
    ]
    emit(rows, False, ["policy", "tier", "algorithm", "unit", "windows", "anonymous"])


@ratelimit.command()
@click.argument("subject", required=False)
@click.option("--policy", help="Only this policy.")
@dsn_option
@json_option
@expected_errors
def usage(subject: str | None, policy: str | None, dsn: str | None, as_json: bool) -> None:
    """A subject's usage per window; without SUBJECT, decisions allowed and denied per policy.

    Example: pgshield ratelimit usage alice --policy api
    """
    with Shield(resolve_dsn(dsn)) as shield:
        if subject is None:
            counters = shield.rate_limits.counters()
            rows = [
                {"policy": c.policy or "(direct keys)", "allowed": c.allowed, "denied": c.denied}
                for c in counters
                if policy is None or c.policy == policy
            ]
            emit(rows, as_json, ["policy", "allowed", "denied"])
            return
        found = shield.rate_limits.usage(subject, policy)
    emit(
        [u.__dict__ for u in found],
        as_json,
        ["policy", "name", "window_seconds", "limit", "used", "remaining", "reset_at"],
    )

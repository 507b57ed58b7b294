"""``pgshield breaker``: list, inspect, configure and control circuit breakers from the shell."""

from __future__ import annotations

import click

from pgshield.cli.context import dsn_option, expected_errors, resolve_dsn
from pgshield.cli.output import emit, emit_json, json_option
from pgshield.shield import Shield

LIST_COLUMNS = ["name", "state", "generation", "calls", "failures", "failure_rate"]
LIST_COLUMNS += ["half_open_in_ms", "last_change_at", "last_reason"]
EVENT_COLUMNS = ["id", "at", "name", "from_state", "to_state", "generation", "reason", "actor"]
reason_option = click.option("--reason", required=True, help="Why, for the events log.")


@click.group()
def breaker() -> None:
    """Circuit breakers kept in the database, shared by every instance.

    Example: pgshield breaker list
    """


@breaker.command("list")
@dsn_option
@json_option
@expected_errors
def list_(dsn: str | None, as_json: bool) -> None:
    """Every breaker: state, generation, its window, time until half-open.

    Example: pgshield breaker list --json
    """
    with Shield(resolve_dsn(dsn)) as shield:
        rows = shield.breakers.status()
    emit([r.__dict__ for r in rows], as_json, LIST_COLUMNS)


@breaker.command()
@click.argument("name")
@dsn_option
@json_option
@expected_errors
def show(name: str, dsn: str | None, as_json: bool) -> None:
    """One breaker's state and window, and its last state changes.

    Example: pgshield breaker show openai
    """
    with Shield(resolve_dsn(dsn)) as shield:
        rows = shield.breakers.status(name)
        if not rows:
            raise click.ClickException(f"unknown breaker {name!r}")
        events = shield.breakers.events(name, limit=10)
    if as_json:
        emit_json({"status": rows[0], "events": events})
        return
    for key, value in rows[0].__dict__.items():
        click.echo(f"{key:21} {value if value is not None else '-'}")
    click.echo("")
    emit([e.__dict__ for e in events], False, EVENT_COLUMNS)


@breaker.command()
@click.argument("name")
@click.option("--failure-threshold", type=click.IntRange(min=0), default=5, show_default=True,
              help="Trip on this many consecutive failures (0: off).")  # fmt: skip
@click.option("--failure-rate", type=click.FloatRange(0, 1, min_open=True),
              help="Trip when this share of calls in the window failed.")  # fmt: skip
@click.option("--min-calls", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--window", "window_seconds", type=click.IntRange(min=1), default=60,
              show_default=True, help="Seconds the rate rules look back.")  # fmt: skip
@click.option("--slow-call-ms", type=click.IntRange(min=1), help="A call this long is slow.")
@click.option("--slow-call-rate", type=click.FloatRange(0, 1, min_open=True))
@click.option("--open-ms", type=click.IntRange(min=1), default=30000, show_default=True)
@click.option("--backoff", "backoff_factor", type=click.FloatRange(1, 10), default=1.0,
              show_default=True, help="Each consecutive open lasts this much longer.")  # fmt: skip
@click.option("--max-open-ms", type=click.IntRange(min=1),
              help="Cap of the backoff (default: --open-ms; set it with --backoff).")  # fmt: skip
@click.option("--permits", "half_open_permits", type=click.IntRange(min=1), default=1,
              show_default=True, help="Trial calls in half-open.")  # fmt: skip
@click.option("--lease-ms", type=click.IntRange(min=1), default=30000, show_default=True)
@click.option("--successes", "success_threshold", type=click.IntRange(min=1), default=2,
              show_default=True, help="Trial successes needed to close.")  # fmt: skip
@dsn_option
@json_option
@expected_errors
def configure(
    name: str,
    failure_threshold: int,
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
    dsn: str | None,
    as_json: bool,
) -> None:
    """Create a breaker or replace its settings (its state is kept).

    Example: pgshield breaker configure openai --failure-threshold 5 --open-ms 30000 --backoff 2
    --max-open-ms 300000
    """
    with Shield(resolve_dsn(dsn)) as shield:
        config = shield.breakers.configure(
            name,
            failure_threshold=failure_threshold or None,
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
    emit([config.__dict__], as_json)


def _control(dsn: str | None, name: str, reason: str, action: str, as_json: bool) -> None:
    with Shield(resolve_dsn(dsn)) as shield:
        ns = shield.breakers
        do = {"reset": ns.reset, "open": ns.force_open, "close": ns.disable}[action]
        config = do(name, reason)
    if as_json:
        emit_json(config)
    else:
        click.echo(f"{config.name}: {config.state} (generation {config.generation})")


@breaker.command()
@click.argument("name")
@reason_option
@dsn_option
@json_option
@expected_errors
def reset(name: str, reason: str, dsn: str | None, as_json: bool) -> None:
    """Back to closed: counters, trial leases and backoff cleared.

    Example: pgshield breaker reset openai --reason "provider recovered"
    """
    _control(dsn, name, reason, "reset", as_json)


@breaker.command("open")
@click.argument("name")
@reason_option
@dsn_option
@json_option
@expected_errors
def open_(name: str, reason: str, dsn: str | None, as_json: bool) -> None:
    """Force a breaker open: every call refused until reset.

    Example: pgshield breaker open openai --reason "incident 42"
    """
    _control(dsn, name, reason, "open", as_json)


@breaker.command()
@click.argument("name")
@reason_option
@dsn_option
@json_option
@expected_errors
def close(name: str, reason: str, dsn: str | None, as_json: bool) -> None:
    """Force a breaker closed (disabled): every call through, nothing counted, until reset.

    Example: pgshield breaker close openai --reason "false alarm, load test"
    """
    _control(dsn, name, reason, "close", as_json)


@breaker.command()
@click.argument("name", required=False)
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@dsn_option
@json_option
@expected_errors
def events(name: str | None, limit: int, dsn: str | None, as_json: bool) -> None:
    """The newest state changes, of one breaker or of all, newest first.

    Example: pgshield breaker events openai --limit 20
    """
    with Shield(resolve_dsn(dsn)) as shield:
        rows = shield.breakers.events(name, limit=limit)
    emit([e.__dict__ for e in rows], as_json, EVENT_COLUMNS)

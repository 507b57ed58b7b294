"""``pgshield guard``: install the Data API guard and edit its rules from the shell."""

from __future__ import annotations

import click

from pgshield.cli.context import dsn_option, expected_errors, resolve_dsn
from pgshield.cli.output import emit, emit_json, json_option
from pgshield.guard.ops import METHODS, ROLES
from pgshield.shield import Shield

RULE_COLUMNS = ["id", "position", "role", "method", "path", "action", "policy", "cost"]


@click.group()
def guard() -> None:
    """Rate limit the Data API itself (PostgREST's pre-request hook).

    Example: pgshield guard add-rule api --role authenticated --method POST --path '/rpc/*'
    """


@guard.command()
@click.option("--chain", is_flag=True, help="Keep an existing pre-request function; run it first.")
@dsn_option
@json_option
@expected_errors
def install(chain: bool, dsn: str | None, as_json: bool) -> None:
    """Make PostgREST call pgshield.request_guard() before every request (the owner).

    Example: pgshield guard install --dsn "$DATABASE_URL"
    """
    with Shield(resolve_dsn(dsn)) as shield:
        status = shield.guard.install(chain=chain)
    _print_status(status, as_json)


@guard.command()
@dsn_option
@json_option
@expected_errors
def remove(dsn: str | None, as_json: bool) -> None:
    """Stop PostgREST calling the guard (a chained function is put back).

    Example: pgshield guard remove
    """
    with Shield(resolve_dsn(dsn)) as shield:
        status = shield.guard.uninstall()
    _print_status(status, as_json)


@guard.command()
@dsn_option
@json_option
@expected_errors
def status(dsn: str | None, as_json: bool) -> None:
    """Whether PostgREST calls the guard here, what it chains, how many rules.

    Example: pgshield guard status --json
    """
    with Shield(resolve_dsn(dsn)) as shield:
        found = shield.guard.status()
    _print_status(found, as_json)


@guard.command()
@dsn_option
@json_option
@expected_errors
def rules(dsn: str | None, as_json: bool) -> None:
    """List the rules in the order they are tried.

    Example: pgshield guard rules --json
    """
    with Shield(resolve_dsn(dsn)) as shield:
        found = shield.guard.rules()
    emit(found, as_json, RULE_COLUMNS)  # type: ignore[arg-type]


@guard.command("add-rule")
@click.argument("policy", required=False)
@click.option("--role", type=click.Choice(ROLES), default="*", show_default=True)
@click.option(
    "--method", type=click.Choice(METHODS, case_sensitive=False), default="*", show_default=True
)
@click.option("--path", default="*", show_default=True, help="Exact, or ending in * (/rpc/*).")
@click.option("--cost", type=click.IntRange(1, 1_000_000), default=1, show_default=True)
@click.option("--position", type=click.IntRange(0, 1_000_000), default=100, show_default=True)
@click.option("--exempt", is_flag=True, help="Let matching requests through uncounted.")
@click.option("--description")
@dsn_option
@json_option
@expected_errors
def add_rule(
    policy: str | None,
    role: str,
    method: str,
    path: str,
    cost: int,
    position: int,
    exempt: bool,
    description: str | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Add a rule: requests that match cost COST under POLICY (or, --exempt, nothing).

    Example: pgshield guard add-rule api --method POST --path /todos --cost 2
    """
    if exempt == (policy is not None):
        raise click.UsageError("give a POLICY, or --exempt without one")
    with Shield(resolve_dsn(dsn)) as shield:
        rule = shield.guard.define_rule(
            policy,
            role=role,
            method=method.upper(),
            path=path,
            cost=cost,
            position=position,
            action="exempt" if exempt else "limit",
            description=description,
        )
    if as_json:
        emit_json(rule)
    else:
        click.echo(
            f"rule {rule.id}: {rule.role} {rule.method} {rule.path} -> "
            + (f"{rule.policy} (cost {rule.cost})" if rule.policy else "exempt")
        )


@guard.command("drop-rule")
@click.argument("rule_id", type=int)
@dsn_option
@json_option
@expected_errors
def drop_rule(rule_id: int, dsn: str | None, as_json: bool) -> None:
    """Delete a rule by id (exits 1 when there is none).

    Example: pgshield guard drop-rule 3 --json
    """
    with Shield(resolve_dsn(dsn)) as shield:
        dropped = shield.guard.drop_rule(rule_id)
    if as_json:
        emit_json({"id": rule_id, "dropped": dropped})
        if not dropped:
            raise SystemExit(1)
        return
    if not dropped:
        raise click.ClickException(f"no rule {rule_id}")
    click.echo(f"dropped rule {rule_id}")


def _print_status(found: object, as_json: bool) -> None:
    if as_json:
        emit_json(found)
        return
    from dataclasses import asdict

    emit([{"setting": k, "value": v} for k, v in asdict(found).items()], False)  # type: ignore[call-overload]

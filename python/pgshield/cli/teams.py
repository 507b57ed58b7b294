"""``pgshield teams``: create teams, look at them and their audit trail, invite members."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import click

from pgshield.cli.context import dsn_option, expected_errors, resolve_dsn
from pgshield.cli.output import emit, emit_json, json_option
from pgshield.shield import Shield
from pgshield.teams import ROLES, Team

MEMBER_COLUMNS = ["user_id", "email", "role", "permissions"]
AUDIT_COLUMNS = ["id", "at", "team_id", "actor_role", "actor_id", "action", "outcome", "message"]


def _team(shield: Shield, ref: str) -> Team:
    """TEAM given as an id or a slug."""
    try:
        return shield.teams.get(team_id=uuid.UUID(ref))
    except ValueError:
        return shield.teams.get(slug=ref)


@click.group()
def teams() -> None:
    """Teams with an owner, roles, invitations and an audit trail.

    Example: pgshield teams members acme-corp --json
    """


@teams.command()
@click.argument("name")
@click.argument("slug")
@click.option("--owner", "owner_id", required=True, type=click.UUID, help="The owner's user id.")
@click.option("--billing-email", help="The team's billing email.")
@dsn_option
@json_option
@expected_errors
def create(
    name: str,
    slug: str,
    owner_id: uuid.UUID,
    billing_email: str | None,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Create team NAME with SLUG and its owner, in one transaction.

    Example: pgshield teams create "Acme Corp" acme-corp --owner "$USER_ID"
    """
    with Shield(resolve_dsn(dsn)) as shield:
        created = shield.teams.create(name, slug, owner_id, billing_email)
    if as_json:
        emit_json(created)
    else:
        click.echo(f"created team {created.slug} ({created.id}), owner {owner_id}")


@teams.command()
@click.argument("team")
@dsn_option
@json_option
@expected_errors
def show(team: str, dsn: str | None, as_json: bool) -> None:
    """Show one team (TEAM: its id or slug) with its member and owner counts.

    Example: pgshield teams show acme-corp --json
    """
    with Shield(resolve_dsn(dsn)) as shield:
        found = _team(shield, team)
    if as_json:
        emit_json(found)
    else:
        fields = ["id", "name", "slug", "billing_email", "members", "owners", "created_at"]
        row = dataclasses.asdict(found)
        emit([{"field": f, "value": row[f]} for f in fields], False, ["field", "value"])


@teams.command()
@click.argument("team")
@dsn_option
@json_option
@expected_errors
def members(team: str, dsn: str | None, as_json: bool) -> None:
    """List the members of TEAM (id or slug), owners first.

    Example: pgshield teams members acme-corp
    """
    with Shield(resolve_dsn(dsn)) as shield:
        rows = shield.teams.members(_team(shield, team).id)
    data = [dataclasses.asdict(m) for m in rows]
    if not as_json:
        for row in data:
            row["permissions"] = ",".join(row["permissions"])
    emit(data, as_json, None if as_json else MEMBER_COLUMNS)


@teams.command()
@click.argument("team")
@click.option(
    "--role", type=click.Choice(ROLES), default="member", show_default=True, help="Role to grant."
)
@click.option("--email", help="Only the user with this email may accept it.")
@click.option(
    "--expires-in-days",
    type=click.FloatRange(min=0.001, max=90),
    default=7,
    show_default=True,
    help="How long the invitation stays valid.",
)
@dsn_option
@json_option
@expected_errors
def invite(
    team: str,
    role: str,
    email: str | None,
    expires_in_days: float,
    dsn: str | None,
    as_json: bool,
) -> None:
    """Create an invitation to TEAM; print its token (shown only now).

    Example: pgshield teams invite acme-corp --role admin --email ana@example.com
    """
    with Shield(resolve_dsn(dsn)) as shield:
        made = shield.teams.invite(
            _team(shield, team).id, role, email, dt.timedelta(days=expires_in_days)
        )
    if as_json:
        emit_json(made)
    else:
        bound = f" for {made.email}" if made.email else ""
        click.echo(f"invitation {made.id} ({made.role}{bound}) until {made.expires_at.isoformat()}")
        click.echo(f"token: {made.token}")


@teams.command()
@click.argument("team", required=False)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--denied", "denied_only", is_flag=True, help="Only refused calls.")
@dsn_option
@json_option
@expected_errors
def audit(team: str | None, limit: int, denied_only: bool, dsn: str | None, as_json: bool) -> None:
    """Show the audit trail, newest first: of TEAM (id or slug), or of every team.

    Example: pgshield teams audit acme-corp --denied --limit 20
    """
    with Shield(resolve_dsn(dsn)) as shield:
        team_id = _team(shield, team).id if team else None
        rows = shield.teams.audit(team_id, limit, denied_only)
    emit([dataclasses.asdict(r) for r in rows], as_json, None if as_json else AUDIT_COLUMNS)

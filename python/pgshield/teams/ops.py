"""Teams ops: one :class:`~pgshield.client.Op` builder per SQL entry point."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pgshield.client import Op, Row, scalar
from pgshield.teams.results import (
    AuditEntry,
    Invitation,
    Member,
    Team,
    TeamsStatus,
    audit_entry,
    invitation,
    member,
    parse_status,
    team,
    unwrap,
)

T = TypeVar("T")
Id = uuid.UUID | str


def _one(parse: Callable[[Any], T]) -> Callable[[list[Row]], T]:
    return lambda rows: parse(unwrap(rows))


def _many(parse: Callable[[Any], T]) -> Callable[[list[Row]], list[T]]:
    return lambda rows: [parse(v) for v in unwrap(rows)]


def _id(value: Id | None) -> str | None:
    return None if value is None else str(uuid.UUID(str(value)))


def _permissions(permissions: Sequence[str] | None) -> list[str] | None:
    if isinstance(permissions, str):
        raise TypeError("permissions must be a sequence of names, not a string")
    return None if permissions is None else [str(p) for p in permissions]


def create_op(
    name: str, slug: str, owner_id: Id | None = None, billing_email: str | None = None
) -> Op[Team]:
    return Op(
        "select public.create_team_with_owner(%(name)s::text, %(slug)s::text, %(owner)s::uuid,"
        " %(email)s::text) as result",
        {"name": name, "slug": slug, "owner": _id(owner_id), "email": billing_email},
        _one(team),
    )


def update_op(
    team_id: Id, name: str | None = None, slug: str | None = None, billing_email: str | None = None
) -> Op[Team]:
    return Op(
        "select public.update_team(%(team)s::uuid, %(name)s::text, %(slug)s::text,"
        " %(email)s::text) as result",
        {"team": _id(team_id), "name": name, "slug": slug, "email": billing_email},
        _one(team),
    )


def delete_op(team_id: Id) -> Op[Team]:
    return Op(
        "select public.delete_team(%(team)s::uuid) as result", {"team": _id(team_id)}, _one(team)
    )


def get_op(team_id: Id | None = None, slug: str | None = None) -> Op[Team]:
    return Op(
        "select public.get_team(%(team)s::uuid, %(slug)s::text) as result",
        {"team": _id(team_id), "slug": slug},
        _one(team),
    )


def mine_op(user_id: Id | None = None) -> Op[list[Team]]:
    return Op(
        "select public.list_my_teams(%(user)s::uuid) as result",
        {"user": _id(user_id)},
        _many(team),
    )


def members_op(team_id: Id) -> Op[list[Member]]:
    return Op(
        "select public.list_team_members(%(team)s::uuid) as result",
        {"team": _id(team_id)},
        _many(member),
    )


def add_member_op(
    team_id: Id, user_id: Id, role: str = "member", permissions: Sequence[str] = ()
) -> Op[Member]:
    return Op(
        "select public.add_team_member(%(team)s::uuid, %(user)s::uuid, %(role)s::text,"
        " %(perms)s::text[]) as result",
        {
            "team": _id(team_id),
            "user": _id(user_id),
            "role": role,
            "perms": _permissions(permissions),
        },
        _one(member),
    )


def set_role_op(
    team_id: Id, user_id: Id, role: str, permissions: Sequence[str] | None = None
) -> Op[Member]:
    return Op(
        "select public.set_team_member_role(%(team)s::uuid, %(user)s::uuid, %(role)s::text,"
        " %(perms)s::text[]) as result",
        {
            "team": _id(team_id),
            "user": _id(user_id),
            "role": role,
            "perms": _permissions(permissions),
        },
        _one(member),
    )


def remove_member_op(team_id: Id, user_id: Id) -> Op[Member]:
    return Op(
        "select public.remove_team_member(%(team)s::uuid, %(user)s::uuid) as result",
        {"team": _id(team_id), "user": _id(user_id)},
        _one(member),
    )


def transfer_op(team_id: Id, new_owner_id: Id) -> Op[list[Member]]:
    return Op(
        "select public.transfer_team_ownership(%(team)s::uuid, %(owner)s::uuid) as result",
        {"team": _id(team_id), "owner": _id(new_owner_id)},
        _many(member),
    )


def leave_op(team_id: Id) -> Op[Member]:
    return Op(
        "select public.leave_team(%(team)s::uuid) as result", {"team": _id(team_id)}, _one(member)
    )


def invite_op(
    team_id: Id,
    role: str = "member",
    email: str | None = None,
    expires_in: dt.timedelta = dt.timedelta(days=7),
    permissions: Sequence[str] = (),
) -> Op[Invitation]:
    return Op(
        "select public.create_team_invitation(%(team)s::uuid, %(role)s::text, %(email)s::text,"
        " %(expires)s::interval, %(perms)s::text[]) as result",
        {
            "team": _id(team_id),
            "role": role,
            "email": email,
            "expires": expires_in,
            "perms": _permissions(permissions),
        },
        _one(invitation),
    )


def accept_op(token: str) -> Op[Member]:
    return Op(
        "select public.accept_team_invitation(%(token)s::text) as result",
        {"token": token},
        _one(member),
    )


def revoke_op(invitation_id: Id) -> Op[Invitation]:
    return Op(
        "select public.revoke_team_invitation(%(inv)s::uuid) as result",
        {"inv": _id(invitation_id)},
        _one(invitation),
    )


def invitations_op(team_id: Id) -> Op[list[Invitation]]:
    return Op(
        "select public.list_team_invitations(%(team)s::uuid) as result",
        {"team": _id(team_id)},
        _many(invitation),
    )


def audit_op(
    team_id: Id | None = None, limit: int = 100, denied_only: bool = False
) -> Op[list[AuditEntry]]:
    return Op(
        "select public.get_team_audit(%(team)s::uuid, %(limit)s::integer, %(denied)s::boolean)"
        " as result",
        {"team": _id(team_id), "limit": limit, "denied": denied_only},
        _many(audit_entry),
    )


def has_permission_op(team_id: Id, permission: str) -> Op[bool]:
    return Op(
        "select pgshield.has_team_permission(%(team)s::uuid, %(perm)s::text) as allowed",
        {"team": _id(team_id), "perm": permission},
        scalar,
    )


def set_role_permissions_op(role: str, permissions: Sequence[str]) -> Op[tuple[str, ...]]:
    return Op(
        "select pgshield.set_team_role_permissions(%(role)s::text, %(perms)s::text[]) as perms",
        {"role": role, "perms": _permissions(permissions)},
        lambda rows: tuple(scalar(rows)),
    )


def set_limits_op(teams_per_user: int | None, open_invitations: int | None) -> Op[dict]:
    return Op(
        "select pgshield.set_teams_limits(%(teams)s::integer, %(invitations)s::integer) as limits",
        {"teams": teams_per_user, "invitations": open_invitations},
        scalar,
    )


def cleanup_op(batch_size: int = 10000) -> Op[int]:
    return Op(
        "select pgshield.teams_cleanup(%(batch)s::integer) as deleted",
        {"batch": batch_size},
        scalar,
    )


def status_op() -> Op[TeamsStatus]:
    return Op(
        "select teams, memberships, teams_without_owner, pending_invitations, audit_rows,"
        " denied_last_day, audit_retention from pgshield.teams_status",
        {},
        parse_status,
    )

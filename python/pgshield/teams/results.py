"""Teams results: frozen dataclasses with the fields users read, and their parsers.

Every team entry point answers one JSON value: the result, or a refusal
``{"code", "message", "details", "hint"}`` (sql/teams/, ``pgshield.teams_call``). A refusal
is answered rather than raised so that its audit row commits; :func:`unwrap` turns it into the
matching exception (``NotAllowed``, ``NotFound``, ``Conflict``) after the call.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pgshield.client import Row, scalar
from pgshield.errors import ShieldError, error_class

ROLES = ("owner", "admin", "member", "viewer")
PERMISSIONS = ("read", "write", "delete", "admin")
_REFUSAL_KEYS = {"code", "message", "details", "hint"}
_FRACTION = re.compile(r"\.(\d+)")


def is_refusal(value: Any) -> bool:
    """True for the ``{code, message, details, hint}`` object of a refused call."""
    return isinstance(value, dict) and set(value) == _REFUSAL_KEYS


def refusal_error(value: Mapping[str, Any]) -> ShieldError:
    """The exception for a refusal object, keeping its SQLSTATE and hint."""
    code = str(value["code"])
    message = str(value["message"])
    if value.get("details"):
        message = f"{message} ({value['details']})"
    return error_class(code)(message, sqlstate=code, hint=value.get("hint"))


def unwrap(rows: list[Row]) -> Any:
    """The JSON value of a team call; a refusal raises its exception (its audit row stays)."""
    value = scalar(rows)
    if is_refusal(value):
        raise refusal_error(value)
    return value


def timestamp(text: str | None) -> dt.datetime | None:
    """A timestamp from JSON (``2026-12-01T21:55:00.9549+00:00``), on any Python >= 3.10."""
    if text is None:
        return None
    fixed = _FRACTION.sub(lambda m: "." + m.group(1)[:6].ljust(6, "0"), text, count=1)
    return dt.datetime.fromisoformat(fixed.replace("Z", "+00:00"))


def _uuid(text: str | None) -> uuid.UUID | None:
    return None if text is None else uuid.UUID(text)


@dataclass(frozen=True)
class Team:
    """A team. ``role`` and ``permissions`` are the caller's (None / () for service_role);
    ``members`` and ``owners`` are counted by :meth:`Teams.get` only."""

    id: uuid.UUID
    name: str
    slug: str
    billing_email: str | None
    created_by: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime
    role: str | None = None
    permissions: tuple[str, ...] = ()
    members: int | None = None
    owners: int | None = None


def team(value: Mapping[str, Any]) -> Team:
    """A :class:`Team` from its JSON object."""
    return Team(
        id=uuid.UUID(value["id"]),
        name=value["name"],
        slug=value["slug"],
        billing_email=value.get("billing_email"),
        created_by=_uuid(value.get("created_by")),
        created_at=timestamp(value["created_at"]),  # type: ignore[arg-type]
        updated_at=timestamp(value["updated_at"]),  # type: ignore[arg-type]
        role=value.get("role"),
        permissions=tuple(value.get("permissions") or ()),
        members=value.get("members"),
        owners=value.get("owners"),
    )


@dataclass(frozen=True)
class Member:
    """A membership: the member's role, effective ``permissions`` (role plus overrides) and the
    overrides alone (``extra_permissions``). ``removed`` is True in the answer to a removal."""

    team_id: uuid.UUID
    user_id: uuid.UUID
    email: str | None
    role: str
    permissions: tuple[str, ...]
    extra_permissions: tuple[str, ...]
    granted_by: uuid.UUID | None
    created_at: dt.datetime
    updated_at: dt.datetime
    removed: bool = False


def member(value: Mapping[str, Any]) -> Member:
    """A :class:`Member` from its JSON object."""
    return Member(
        team_id=uuid.UUID(value["team_id"]),
        user_id=uuid.UUID(value["user_id"]),
        email=value.get("email"),
        role=value["role"],
        permissions=tuple(value["permissions"]),
        extra_permissions=tuple(value["extra_permissions"]),
        granted_by=_uuid(value.get("granted_by")),
        created_at=timestamp(value["created_at"]),  # type: ignore[arg-type]
        updated_at=timestamp(value["updated_at"]),  # type: ignore[arg-type]
        removed=bool(value.get("removed", False)),
    )


@dataclass(frozen=True)
class Invitation:
    """An invitation. ``token`` is set only in the answer to its creation (it is stored as a
    hash); ``status`` is pending, accepted, revoked or expired."""

    id: uuid.UUID
    team_id: uuid.UUID
    role: str
    email: str | None
    status: str
    expires_at: dt.datetime
    created_at: dt.datetime
    invited_by: uuid.UUID | None
    extra_permissions: tuple[str, ...] = ()
    accepted_at: dt.datetime | None = None
    accepted_by: uuid.UUID | None = None
    revoked_at: dt.datetime | None = None
    token: str | None = None


def invitation(value: Mapping[str, Any]) -> Invitation:
    """An :class:`Invitation` from its JSON object."""
    return Invitation(
        id=uuid.UUID(value["id"]),
        team_id=uuid.UUID(value["team_id"]),
        role=value["role"],
        email=value.get("email"),
        status=value["status"],
        expires_at=timestamp(value["expires_at"]),  # type: ignore[arg-type]
        created_at=timestamp(value["created_at"]),  # type: ignore[arg-type]
        invited_by=_uuid(value.get("invited_by")),
        extra_permissions=tuple(value.get("extra_permissions") or ()),
        accepted_at=timestamp(value.get("accepted_at")),
        accepted_by=_uuid(value.get("accepted_by")),
        revoked_at=timestamp(value.get("revoked_at")),
        token=value.get("token"),
    )


@dataclass(frozen=True)
class AuditEntry:
    """One audit row: a change (``outcome`` ok) or a refused call (denied, with its SQLSTATE
    and message). ``action`` is the operation (create_team, add_member, accept_invitation, ...);
    ``actor_id`` is the user (None for service_role)."""

    id: int
    at: dt.datetime
    team_id: uuid.UUID | None
    actor_id: uuid.UUID | None
    actor_role: str
    action: str
    outcome: str
    target_user_id: uuid.UUID | None
    sqlstate: str | None
    message: str | None
    details: dict[str, Any]


def audit_entry(value: Mapping[str, Any]) -> AuditEntry:
    """An :class:`AuditEntry` from its JSON object."""
    return AuditEntry(
        id=int(value["id"]),
        at=timestamp(value["at"]),  # type: ignore[arg-type]
        team_id=_uuid(value.get("team_id")),
        actor_id=_uuid(value.get("actor_id")),
        actor_role=value["actor_role"],
        action=value["action"],
        outcome=value["outcome"],
        target_user_id=_uuid(value.get("target_user_id")),
        sqlstate=value.get("sqlstate"),
        message=value.get("message"),
        details=dict(value.get("details") or {}),
    )


@dataclass(frozen=True)
class TeamsStatus:
    """The counts of ``pgshield.teams_status``; ``teams_without_owner`` is always 0."""

    teams: int
    memberships: int
    teams_without_owner: int
    pending_invitations: int
    audit_rows: int
    denied_last_day: int
    audit_retention: dt.timedelta


def parse_status(rows: list[Row]) -> TeamsStatus:
    """The one row of pgshield.teams_status."""
    (row,) = rows
    return TeamsStatus(**row)

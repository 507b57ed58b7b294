"""Teams methods: ``shield.teams.<method>(...)``.

The synchronous source. ``methods_async.py`` is generated from it (``python -m pgshield._twin``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import psycopg

from pgshield.namespace import Namespace
from pgshield.teams.ops import (
    Id,
    accept_op,
    add_member_op,
    audit_op,
    cleanup_op,
    create_op,
    delete_op,
    get_op,
    has_permission_op,
    invitations_op,
    invite_op,
    leave_op,
    members_op,
    mine_op,
    remove_member_op,
    revoke_op,
    set_limits_op,
    set_role_op,
    set_role_permissions_op,
    status_op,
    transfer_op,
    update_op,
)
from pgshield.teams.results import AuditEntry, Invitation, Member, Team, TeamsStatus


class Teams(Namespace):
    """Teams with owners, roles, invitations and an audit trail (``sql/teams/``).

    The connection's role decides what is allowed: service_role (or the owner) may do
    everything; a connection acting as ``authenticated`` acts as ``auth.uid()``. A refused call
    raises NotAllowed (42501), NotFound (PT404) or Conflict (PT409, 23505) *after* its audit row
    was committed (in autocommit; with ``conn=`` the row is in your transaction). Bad input
    raises InvalidInput and writes nothing. Every method takes ``conn=``.
    """

    def create(
        self,
        name: str,
        slug: str,
        owner_id: Id | None = None,
        billing_email: str | None = None,
        conn: psycopg.Connection | None = None,
    ) -> Team:
        """Create a team and its owner membership in one transaction (``create_team_with_owner``).

        ``owner_id`` is required for service_role; a user may only name themselves. Raises
        Conflict when the slug (normalised, case-insensitive) is taken.
        """
        return self._call(create_op(name, slug, owner_id, billing_email), conn)

    def update(
        self,
        team_id: Id,
        name: str | None = None,
        slug: str | None = None,
        billing_email: str | None = None,
        conn: psycopg.Connection | None = None,
    ) -> Team:
        """Change a team's name, slug or billing email (None: unchanged; "" clears the email)."""
        return self._call(update_op(team_id, name, slug, billing_email), conn)

    def delete(self, team_id: Id, conn: psycopg.Connection | None = None) -> Team:
        """Delete a team with its members and invitations (owners and service_role)."""
        return self._call(delete_op(team_id), conn)

    def get(
        self,
        team_id: Id | None = None,
        slug: str | None = None,
        conn: psycopg.Connection | None = None,
    ) -> Team:
        """One team by id or slug, with the caller's role and the member and owner counts."""
        return self._call(get_op(team_id, slug), conn)

    def mine(self, user_id: Id | None = None, conn: psycopg.Connection | None = None) -> list[Team]:
        """The caller's teams with role and permissions (service_role: ``user_id``'s)."""
        return self._call(mine_op(user_id), conn)

    def members(self, team_id: Id, conn: psycopg.Connection | None = None) -> list[Member]:
        """A team's members, owners first."""
        return self._call(members_op(team_id), conn)

    def add_member(
        self,
        team_id: Id,
        user_id: Id,
        role: str = "member",
        permissions: Sequence[str] = (),
        conn: psycopg.Connection | None = None,
    ) -> Member:
        """Add an existing auth user with a role and permission overrides (admin permission).

        Nobody grants a role or permission above their own (NotAllowed).
        """
        return self._call(add_member_op(team_id, user_id, role, permissions), conn)

    def set_role(
        self,
        team_id: Id,
        user_id: Id,
        role: str,
        permissions: Sequence[str] | None = None,
        conn: psycopg.Connection | None = None,
    ) -> Member:
        """Change a member's role, and with ``permissions`` replace their overrides.

        Raises Conflict when it would leave the team without an owner.
        """
        return self._call(set_role_op(team_id, user_id, role, permissions), conn)

    def remove_member(
        self, team_id: Id, user_id: Id, conn: psycopg.Connection | None = None
    ) -> Member:
        """Remove a member (admin permission; Conflict for the team's last owner)."""
        return self._call(remove_member_op(team_id, user_id), conn)

    def transfer_ownership(
        self, team_id: Id, new_owner_id: Id, conn: psycopg.Connection | None = None
    ) -> list[Member]:
        """Make a member owner; the calling owner becomes admin. Returns the owners."""
        return self._call(transfer_op(team_id, new_owner_id), conn)

    def leave(self, team_id: Id, conn: psycopg.Connection | None = None) -> Member:
        """The calling user leaves a team (Conflict for its last owner)."""
        return self._call(leave_op(team_id), conn)

    def invite(
        self,
        team_id: Id,
        role: str = "member",
        email: str | None = None,
        expires_in: dt.timedelta = dt.timedelta(days=7),
        permissions: Sequence[str] = (),
        conn: psycopg.Connection | None = None,
    ) -> Invitation:
        """Create an invitation; its ``token`` is in this answer only (stored as sha256)."""
        return self._call(invite_op(team_id, role, email, expires_in, permissions), conn)

    def accept(self, token: str, conn: psycopg.Connection | None = None) -> Member:
        """Join the team of an invitation token as the calling user (single use, expiring)."""
        return self._call(accept_op(token), conn)

    def revoke_invitation(
        self, invitation_id: Id, conn: psycopg.Connection | None = None
    ) -> Invitation:
        """Revoke an unused invitation (admin permission)."""
        return self._call(revoke_op(invitation_id), conn)

    def invitations(self, team_id: Id, conn: psycopg.Connection | None = None) -> list[Invitation]:
        """A team's invitations with their status, newest first (admin permission)."""
        return self._call(invitations_op(team_id), conn)

    def audit(
        self,
        team_id: Id | None = None,
        limit: int = 100,
        denied_only: bool = False,
        conn: psycopg.Connection | None = None,
    ) -> list[AuditEntry]:
        """Audit rows, newest first: a team's (its admins), or everything (service_role)."""
        return self._call(audit_op(team_id, limit, denied_only), conn)

    def has_permission(
        self, team_id: Id, permission: str, conn: psycopg.Connection | None = None
    ) -> bool:
        """Whether the calling user has ``permission`` on the team (the RLS helper)."""
        return self._call(has_permission_op(team_id, permission), conn)

    def set_role_permissions(
        self, role: str, permissions: Sequence[str], conn: psycopg.Connection | None = None
    ) -> tuple[str, ...]:
        """Set the permissions of admin, member or viewer (service_role/owner)."""
        return self._call(set_role_permissions_op(role, permissions), conn)

    def set_limits(
        self,
        teams_per_user: int | None = None,
        open_invitations_per_team: int | None = None,
        conn: psycopg.Connection | None = None,
    ) -> dict:
        """Set what one signed-in user may create (None keeps a limit); returns both limits.

        ``teams_per_user``: existing teams created by or for a user (default 100);
        ``open_invitations_per_team``: invitations neither accepted, revoked nor expired (default
        1000). Past a limit a call is refused with Conflict (PT409). service_role/owner only.
        """
        return self._call(set_limits_op(teams_per_user, open_invitations_per_team), conn)

    def cleanup(self, batch_size: int = 10000, conn: psycopg.Connection | None = None) -> int:
        """Delete unusable invitations and audit rows past the retention; returns the count."""
        return self._call(cleanup_op(batch_size), conn)

    def status(self, conn: psycopg.Connection | None = None) -> TeamsStatus:
        """Counts for dashboards (service_role/owner)."""
        return self._call(status_op(), conn)

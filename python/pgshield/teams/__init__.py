"""The teams module (``sql/teams/``): a team and its owner in one transaction.

``shield.teams.create`` (SQL ``create_team_with_owner``) creates the team and its owner
membership at once, so no team is ever left without one; roles (owner, admin, member, viewer)
map to permissions (read, write, delete, admin) in an editable table, invitations are single
use and expiring, and every change and every refused call is in the audit trail.
"""

from pgshield.teams.methods import Teams
from pgshield.teams.methods_async import AsyncTeams
from pgshield.teams.results import (
    PERMISSIONS,
    ROLES,
    AuditEntry,
    Invitation,
    Member,
    Team,
    TeamsStatus,
)

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "AsyncTeams",
    "AuditEntry",
    "Invitation",
    "Member",
    "Team",
    "Teams",
    "TeamsStatus",
]

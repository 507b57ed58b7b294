-- =============================================================================
-- pgshield teams: a team and its owner in one transaction, roles and
-- permissions enforced in the database, invitations and an audit trail.
--
-- Entry points (schema public, all run as the invoker and reach the security
-- definer logic through pgshield.teams_call; anon may call none of them):
--   create_team_with_owner   a team and its owner membership, at once    authenticated (self), service_role
--   update_team              name, slug, billing email (write)           authenticated, service_role
--   delete_team              the team and everything in it (owner)       authenticated, service_role
--   get_team                 one team by id or slug (read)               authenticated, service_role
--   list_my_teams            the caller's teams, role and permissions    authenticated, service_role (p_user_id)
--   list_team_members        a team's members (read)                     authenticated, service_role
--   add_team_member          add a user with a role (admin)              authenticated, service_role
--   set_team_member_role     change a role and overrides (admin)         authenticated, service_role
--   remove_team_member       remove a member (admin)                     authenticated, service_role
--   transfer_team_ownership  make a member owner (owner)                 authenticated, service_role
--   leave_team               the caller leaves                           authenticated
--   create_team_invitation   an invitation token (admin)                 authenticated, service_role
--   accept_team_invitation   join with a token                           authenticated
--   revoke_team_invitation   revoke an unused invitation (admin)         authenticated, service_role
--   list_team_invitations    a team's invitations (admin)                authenticated, service_role
--   get_team_audit           the audit trail (admin per team; service_role all)
-- RLS helpers (schema pgshield, for the project's own policies):
--   has_team_permission(team, permission), teams_with_permission(permission)
-- Operator functions (service_role): set_team_role_permissions,
-- set_teams_audit_retention, set_teams_limits, teams_cleanup, the view
-- teams_status.
--
-- Refusals are answered, not raised. A refused call (42501 not allowed, PT404
-- not found or hidden, PT409 or 23505 conflict) writes a denied row to the
-- audit trail and RETURNS an error object {code, message, details, hint}
-- with response.status 403 / 404 / 409: PostgREST commits a function that
-- returns normally, so the audit row survives, and supabase-js reports the
-- object as the call's error. The Python client raises the matching
-- exception. Bad input (22023 and class 22) raises and writes nothing. A
-- call in a read-only transaction (PostgREST GET/HEAD) raises 25006 first:
-- call the entry points with POST. A denied row names its team only when
-- the caller is a member of it, and keeps at most 1,000 characters of the
-- arguments.
--
-- Invariant: a team never has zero owners. Every change to a team's members
-- first locks the team row (one update of teams.revision: the same order
-- everywhere, and a serialization failure under REPEATABLE READ), then a
-- trigger on team_members refuses (PT409) any update or delete that leaves
-- no owner: demotion, removal, leaving, transfer, and the cascade from
-- deleting the last owner's auth.users row (that deletion is refused; the
-- owner transfers ownership or deletes the team first). A deferred trigger
-- refuses to commit a team without an owner.
-- =============================================================================

-- Applied in one transaction: never wait long for a lock on the user's database.
set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- ------------------------------------------------------------------ tables ----
-- Slugs are stored normalised (see pgshield.team_slug), so the unique index
-- on slug is unique case-insensitively. revision counts changes to the team
-- and its members; updating it is the team lock every change takes first.

create table if not exists pgshield.teams (
  id uuid primary key default gen_random_uuid(),
  name text not null
    constraint teams_name_check check (length(name) between 1 and 200),
  slug text not null
    constraint teams_slug_check check (length(slug) <= 63 and slug ~ '^[a-z0-9]+(-[a-z0-9]+)*$'),
  billing_email text
    constraint teams_billing_email_check check (length(billing_email) <= 320),
  created_by uuid,
  revision bigint not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint teams_slug_key unique (slug)
);
comment on table pgshield.teams is
  'Teams. Change them through the public team entry points; every team has at least one owner.';
alter table pgshield.teams enable row level security;
revoke all on table pgshield.teams from public, anon, authenticated, service_role;
-- A signed-in user's creations are counted by created_by (pgshield.set_teams_limits).
create index if not exists teams_created_by_idx on pgshield.teams (created_by);

-- The editable role -> permission table. Roles are ranked owner > admin >

-- member > viewer (pgshield.team_role_rank); owner always has every permission.
create table if not exists pgshield.team_role_permissions (
  role text not null
    constraint team_role_permissions_role_check check (role in ('owner', 'admin', 'member', 'viewer')),
  permission text not null
    constraint team_role_permissions_permission_check check (permission in ('read', 'write', 'delete', 'admin')),
  primary key (role, permission)
);
comment on table pgshield.team_role_permissions is
  'Which permissions each team role has. Edit with pgshield.set_team_role_permissions().';
alter table pgshield.team_role_permissions enable row level security;
revoke all on table pgshield.team_role_permissions from public, anon, authenticated, service_role;

-- One row per member. extra_permissions are per-member overrides added to the
-- role's permissions (never more than the grantor had). Deleting the auth
-- user deletes the membership (on delete cascade), which the owner trigger
-- refuses for a team's last owner.
create table if not exists pgshield.team_members (
  team_id uuid not null references pgshield.teams (id) on delete cascade,
  user_id uuid not null references auth.users (id) on delete cascade,
  role text not null
    constraint team_members_role_check check (role in ('owner', 'admin', 'member', 'viewer')),
  extra_permissions text[] not null default '{}'
    constraint team_members_extra_permissions_check
    check (extra_permissions <@ array['read', 'write', 'delete', 'admin']),
  granted_by uuid,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  primary key (team_id, user_id)
);
-- How the member joined: 'created' the team, accepted an 'invitation', was
-- added by a trusted caller ('service'), or 'added' by a team admin without
-- being asked. Only the last never agreed to join, and the team is not shown
-- such a member's email (team_member_json).
alter table pgshield.team_members add column if not exists joined_via text not null default 'added'
  constraint team_members_joined_via_check check (joined_via in ('created', 'invitation', 'service', 'added'));
comment on table pgshield.team_members is
  'Team memberships: role and per-member permission overrides.';
alter table pgshield.team_members enable row level security;
revoke all on table pgshield.team_members from public, anon, authenticated, service_role;
-- Policies look up the caller's teams by user_id: keep it an index-only scan.
create index if not exists team_members_user_id_idx
  on pgshield.team_members (user_id) include (team_id, role, extra_permissions);

-- Invitations: the token is shown once, at creation; only its sha256 is kept.
create table if not exists pgshield.team_invitations (
  id uuid primary key default gen_random_uuid(),
  team_id uuid not null references pgshield.teams (id) on delete cascade,
  token_hash bytea not null,
  role text not null
    constraint team_invitations_role_check check (role in ('owner', 'admin', 'member', 'viewer')),
  extra_permissions text[] not null default '{}'
    constraint team_invitations_extra_permissions_check
    check (extra_permissions <@ array['read', 'write', 'delete', 'admin']),
  email text
    constraint team_invitations_email_check check (length(email) <= 320),
  invited_by uuid,
  created_at timestamptz not null default now(),
  expires_at timestamptz not null,
  accepted_at timestamptz,
  accepted_by uuid,
  revoked_at timestamptz,
  constraint team_invitations_token_hash_key unique (token_hash)
);
comment on table pgshield.team_invitations is
  'Team invitations: single use, expiring, optionally bound to an email; tokens stored as sha256.';
alter table pgshield.team_invitations enable row level security;
revoke all on table pgshield.team_invitations from public, anon, authenticated, service_role;
create index if not exists team_invitations_team_id_idx on pgshield.team_invitations (team_id);

-- The audit trail: one row per successful change (written in the change's
-- transaction) and per refused call (written after the refused work was
-- rolled back, in the caller's transaction, which commits: see teams_call).
-- No foreign keys: rows outlive deleted teams and users until the retention.
create table if not exists pgshield.team_audit (
  id bigint generated always as identity primary key,
  at timestamptz not null default now(),
  team_id uuid,
  actor_id uuid,
  actor_role text not null,
  action text not null,
  outcome text not null
    constraint team_audit_outcome_check check (outcome in ('ok', 'denied')),
  target_user_id uuid,
  sqlstate text,
  message text,
  details jsonb not null default '{}'
);
comment on table pgshield.team_audit is
  'Team activity: every change (outcome ok) and every refused call (outcome denied).';
alter table pgshield.team_audit enable row level security;
revoke all on table pgshield.team_audit from public, anon, authenticated, service_role;
create index if not exists team_audit_team_id_idx on pgshield.team_audit (team_id, id);
create index if not exists team_audit_at_idx on pgshield.team_audit (at);

create table if not exists pgshield.teams_settings (
  id boolean primary key default true
    constraint teams_settings_id_check check (id),
  audit_retention interval not null default interval '180 days'
    constraint teams_settings_audit_retention_check check (audit_retention >= interval '1 day'),
  updated_at timestamptz not null default now(),
  max_teams_per_user integer not null default 100
    constraint teams_settings_max_teams_per_user_check check (max_teams_per_user between 1 and 1000000),
  max_open_invitations_per_team integer not null default 1000
    constraint teams_settings_max_open_invitations_check
    check (max_open_invitations_per_team between 1 and 1000000)
);
comment on table pgshield.teams_settings is
  'How long teams_cleanup() keeps audit rows, and how much one signed-in user may create. Edit with pgshield.set_teams_audit_retention() and pgshield.set_teams_limits().';
alter table pgshield.teams_settings enable row level security;
revoke all on table pgshield.teams_settings from public, anon, authenticated, service_role;

-- One row per signed-in user who created a team: every creation by that user
-- writes it first (creations counts them, ever), so one user's creations
-- queue on it and the count of their teams that follows is exact; under
-- REPEATABLE READ a creation whose snapshot misses another that committed
-- meanwhile fails with 40001 instead of counting from that old snapshot.
create table if not exists pgshield.team_creators (
  user_id uuid primary key references auth.users (id) on delete cascade,
  creations bigint not null default 0
);
comment on table pgshield.team_creators is
  'Per signed-in user: how many teams they ever created; the row every creation by them writes first (the per-user teams limit).';
alter table pgshield.team_creators enable row level security;
revoke all on table pgshield.team_creators from public, anon, authenticated, service_role;

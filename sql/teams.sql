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

-- ---------------------------------------------------------------- helpers ----

-- The rank of a role (owner 4, admin 3, member 2, viewer 1; null: no role).
-- Callers: pack functions. Errors: none.
create or replace function pgshield.team_role_rank(p_role text) returns integer
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case p_role when 'owner' then 4 when 'admin' then 3 when 'member' then 2 when 'viewer' then 1 end
$$;

revoke all on function pgshield.team_role_rank(text) from public, anon, authenticated, service_role;

-- Checks a role name. Callers: pack functions. Errors: 22023.
create or replace function pgshield.team_role(p_role text, p_param text) returns text
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if pgshield.team_role_rank(p_role) is null then
    raise exception using errcode = '22023',
      message = format('%s must be owner, admin, member or viewer', p_param),
      hint = format('got %L', left(p_role, 64));
  end if;
  return p_role;
end
$$;

revoke all on function pgshield.team_role(text, text) from public, anon, authenticated, service_role;

-- A permission list, checked, without duplicates, in the order read, write,
-- delete, admin. Callers: pack functions. Errors: 22023 unknown permission.
create or replace function pgshield.team_permission_list(p_permissions text[], p_param text)
returns text[]
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_bad text;
begin
  select p into v_bad from unnest(coalesce(p_permissions, '{}')) p
   where p is null or p not in ('read', 'write', 'delete', 'admin') limit 1;
  if found then
    raise exception using errcode = '22023',
      message = format('%s: permissions are read, write, delete and admin', p_param),
      hint = format('got %L', left(v_bad, 64));
  end if;
  return array(select k from unnest(array['read', 'write', 'delete', 'admin']) with ordinality a(k, n)
                where k = any(p_permissions) order by n);
end
$$;

revoke all on function pgshield.team_permission_list(text[], text) from public, anon, authenticated, service_role;

-- The normalised slug: trimmed, lowercased, runs of spaces and underscores
-- made one hyphen; then it must be 1 to 63 characters of a-z, 0-9 and single
-- hyphens, starting and ending with a letter or digit (a DNS label).
-- Callers: pack functions. Errors: 22023.
create or replace function pgshield.team_slug(p_slug text) returns text
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text := regexp_replace(lower(btrim(coalesce(p_slug, ''))), '[[:space:]_]+', '-', 'g');
begin
  if length(v_slug) not between 1 and 63 or v_slug !~ '^[a-z0-9]+(-[a-z0-9]+)*$' then
    raise exception using errcode = '22023',
      message = 'p_slug must be 1 to 63 letters a-z, digits and single hyphens, starting and ending with a letter or digit',
      hint = format('got %L; spaces and underscores become hyphens, capitals are lowered', left(p_slug, 80));
  end if;
  return v_slug;
end
$$;

revoke all on function pgshield.team_slug(text) from public, anon, authenticated, service_role;

-- A team name: trimmed, 1 to 200 characters, no control characters and no
-- invisible format characters (zero-width spaces and joiners, bidirectional
-- overrides and isolates, the byte order mark), which would make a name look
-- blank or read in another order than it is stored.
-- Callers: pack functions. Errors: 22023.
create or replace function pgshield.team_name(p_name text) returns text
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_name text := btrim(coalesce(p_name, ''));
begin
  if length(v_name) not between 1 and 200 or v_name ~ '[[:cntrl:]]'
     or v_name ~ '[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]' then
    raise exception using errcode = '22023',
      message = 'p_name must be 1 to 200 characters without control or invisible format characters';
  end if;
  return v_name;
end
$$;

revoke all on function pgshield.team_name(text) from public, anon, authenticated, service_role;

-- An email address: trimmed and lowercased, one @, a dot in the domain, at
-- most 320 characters, no control or invisible format characters (terminal
-- escapes would reach the CLI and dashboards); null stays null.
-- Callers: pack functions. Errors: 22023.
create or replace function pgshield.team_email(p_email text, p_param text) returns text
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_email text := lower(btrim(p_email));
begin
  if v_email is null then
    return null;
  end if;
  if length(v_email) > 320 or v_email !~ '^[^@[:space:]]+@[^@[:space:]]+\.[^@[:space:]]+$'
     or v_email ~ '[[:cntrl:]\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]' then
    raise exception using errcode = '22023', message = format('%s must be an email address', p_param),
      hint = format('got %L', left(p_email, 80));
  end if;
  return v_email;
end
$$;

revoke all on function pgshield.team_email(text, text) from public, anon, authenticated, service_role;

-- The acting user: auth.uid() for API callers, null for trusted callers
-- (service_role, the owner), who act with every right. A JWT outlives the
-- user it was issued to (until it expires): a user id that is no longer in
-- auth.users is refused.
-- Callers: pack functions. Errors: 42501 an API caller without a user id, or
-- whose user was deleted.
create or replace function pgshield.team_actor() returns uuid
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_uid uuid;
begin
  if pgshield.caller_is_trusted() then
    return null;
  end if;
  v_uid := auth.uid();
  if v_uid is null then
    raise exception using errcode = '42501', message = 'team operations need a signed-in user',
      hint = 'call with a user''s JWT (authenticated), or as service_role';
  end if;
  if not exists (select 1 from auth.users u where u.id = v_uid) then
    raise exception using errcode = '42501', message = 'this user no longer exists',
      hint = 'sign in again';
  end if;
  return v_uid;
end
$$;

revoke all on function pgshield.team_actor() from public, anon, authenticated, service_role;

-- Checks that p_user_id names an auth user. Callers: pack functions.
-- Errors: 22023 null or unknown user.
create or replace function pgshield.team_user(p_user_id uuid, p_param text) returns uuid
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_user_id is null or not exists (select 1 from auth.users u where u.id = p_user_id) then
    raise exception using errcode = '22023', message = format('%s must name an existing auth user', p_param),
      hint = format('got %s', coalesce(p_user_id::text, 'null'));
  end if;
  return p_user_id;
end
$$;

revoke all on function pgshield.team_user(uuid, text) from public, anon, authenticated, service_role;

-- A member's effective permissions: the role's and the overrides.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.team_effective_permissions(p_role text, p_extra text[]) returns text[]
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select array(select k from unnest(array['read', 'write', 'delete', 'admin']) with ordinality a(k, n)
                where k = any(p_extra)
                   or exists (select 1 from pgshield.team_role_permissions rp
                               where rp.role = p_role and rp.permission = k)
                order by n)
$$;

revoke all on function pgshield.team_effective_permissions(text, text[]) from public, anon, authenticated, service_role;

-- Finds (p_lock: locks, by updating its revision) team p_team_id and checks
-- that the actor may use p_permission on it (null: membership suffices). A
-- signed-in actor who is not a member is refused before the team is locked.
-- Trusted actors (null) pass with rank 5 and every permission. Teams the
-- actor is not a member of are "not found", so that nobody learns which exist.
-- Callers: pack functions. Errors: PT404 no such team or not a member;
-- 42501 the member lacks p_permission.
create or replace function pgshield.team_guard(
  p_team_id uuid, p_actor uuid, p_permission text, p_lock boolean,
  out o_slug text, out o_role text, out o_rank integer, out o_permissions text[]
)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_extra text[];
begin
  if p_team_id is null then
    raise exception using errcode = '22023', message = 'p_team_id must not be null';
  end if;
  -- A stranger's call takes no lock and writes no row version of the team.
  if p_lock and p_actor is not null
     and not exists (select 1 from pgshield.team_members m where m.team_id = p_team_id and m.user_id = p_actor) then
    raise exception using errcode = 'PT404', message = format('no team with id %s', p_team_id),
      hint = 'it does not exist, or you are not a member';
  end if;
  if p_lock then
    update pgshield.teams t set revision = t.revision + 1 where t.id = p_team_id returning t.slug into o_slug;
  else
    select t.slug into o_slug from pgshield.teams t where t.id = p_team_id;
  end if;
  if p_actor is null then
    if o_slug is null then
      raise exception using errcode = 'PT404', message = format('no team with id %s', p_team_id);
    end if;
    o_role := null;
    o_rank := 5;
    o_permissions := array['read', 'write', 'delete', 'admin'];
    return;
  end if;
  select m.role, m.extra_permissions into o_role, v_extra
    from pgshield.team_members m where m.team_id = p_team_id and m.user_id = p_actor;
  if o_slug is null or o_role is null then
    raise exception using errcode = 'PT404', message = format('no team with id %s', p_team_id),
      hint = 'it does not exist, or you are not a member';
  end if;
  o_rank := pgshield.team_role_rank(o_role);
  o_permissions := pgshield.team_effective_permissions(o_role, v_extra);
  if p_permission is not null and not p_permission = any(o_permissions) then
    raise exception using errcode = '42501',
      message = format('you need the %s permission on team %L', p_permission, o_slug),
      hint = format('your role there is %s', o_role);
  end if;
end
$$;

revoke all on function pgshield.team_guard(uuid, uuid, text, boolean) from public, anon, authenticated, service_role;

-- True when an actor of rank p_actor_rank holding p_actor_permissions may
-- grant p_role with the overrides p_extra: the role ranks no higher than the
-- actor's, and its permissions plus the overrides are among the actor's.
-- Callers: pack functions (team_check_grant, accepting an invitation).
-- Errors: none.
create or replace function pgshield.team_can_grant(
  p_actor_rank integer, p_actor_permissions text[], p_role text, p_extra text[]
) returns boolean
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(pgshield.team_role_rank(p_role) <= p_actor_rank
                  and pgshield.team_effective_permissions(p_role, p_extra) <@ p_actor_permissions, false)
$$;

revoke all on function pgshield.team_can_grant(integer, text[], text, text[])
  from public, anon, authenticated, service_role;

-- Refuses (42501) granting p_role with p_extra to someone, or changing a
-- member of rank p_target_rank, above what the granting actor holds.
-- Callers: pack functions. Errors: 42501.
create or replace function pgshield.team_check_grant(
  p_slug text, p_actor_rank integer, p_actor_permissions text[], p_role text, p_extra text[],
  p_target_rank integer
) returns void
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_wanted text[] := pgshield.team_effective_permissions(p_role, p_extra);
begin
  if coalesce(p_target_rank, 0) > p_actor_rank then
    raise exception using errcode = '42501',
      message = format('on team %L you cannot change a member whose role is above yours', p_slug);
  end if;
  if not pgshield.team_can_grant(p_actor_rank, p_actor_permissions, p_role, p_extra) then
    raise exception using errcode = '42501',
      message = format('on team %L you cannot grant the role %s with permissions %s: that is above your own',
                       p_slug, p_role, array_to_string(v_wanted, ', ')),
      hint = format('your permissions: %s', array_to_string(p_actor_permissions, ', '));
  end if;
end
$$;

revoke all on function pgshield.team_check_grant(text, integer, text[], text, text[], integer)
  from public, anon, authenticated, service_role;

-- Writes one audit row. Callers: pack functions. Errors: none.
create or replace function pgshield.team_audit_write(
  p_team_id uuid, p_action text, p_outcome text, p_target uuid,
  p_sqlstate text, p_message text, p_details jsonb
) returns void
language sql volatile
set search_path = pg_catalog, pg_temp
as $$
  insert into pgshield.team_audit (at, team_id, actor_id, actor_role, action, outcome, target_user_id,
                                   sqlstate, message, details)
  values (pgshield.now(), p_team_id, auth.uid(), pgshield.caller_role(), p_action, p_outcome, p_target,
          p_sqlstate, p_message, coalesce(p_details, '{}'::jsonb));
$$;

revoke all on function pgshield.team_audit_write(uuid, text, text, uuid, text, text, jsonb)
  from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- objects ----
-- The JSON objects the entry points answer with.

-- A team. Callers: pack functions. Errors: none.
create or replace function pgshield.team_json(p_team pgshield.teams) returns jsonb
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object('id', p_team.id, 'name', p_team.name, 'slug', p_team.slug,
                            'billing_email', p_team.billing_email, 'created_by', p_team.created_by,
                            'created_at', p_team.created_at, 'updated_at', p_team.updated_at)
$$;

revoke all on function pgshield.team_json(pgshield.teams) from public, anon, authenticated, service_role;

-- A membership, with the member's email and effective permissions. The
-- email of a member an admin added without asking ('added') is shown only to
-- that member and to trusted callers: an admin cannot learn any user's
-- address by adding their id; everyone else joined by their own act.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.team_member_json(p_member pgshield.team_members) returns jsonb
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object('team_id', p_member.team_id, 'user_id', p_member.user_id,
                            'email', case when p_member.joined_via <> 'added'
                                            or p_member.user_id = auth.uid()
                                            or pgshield.caller_is_trusted()
                                          then (select u.email from auth.users u where u.id = p_member.user_id) end,
                            'role', p_member.role,
                            'permissions', pgshield.team_effective_permissions(p_member.role, p_member.extra_permissions),
                            'extra_permissions', p_member.extra_permissions,
                            'granted_by', p_member.granted_by,
                            'created_at', p_member.created_at, 'updated_at', p_member.updated_at)
$$;

revoke all on function pgshield.team_member_json(pgshield.team_members) from public, anon, authenticated, service_role;

-- An invitation (never its token or hash), with its status now.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.team_invitation_json(p_inv pgshield.team_invitations) returns jsonb
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object('id', p_inv.id, 'team_id', p_inv.team_id, 'role', p_inv.role,
                            'extra_permissions', p_inv.extra_permissions, 'email', p_inv.email,
                            'invited_by', p_inv.invited_by, 'created_at', p_inv.created_at,
                            'expires_at', p_inv.expires_at, 'accepted_at', p_inv.accepted_at,
                            'accepted_by', p_inv.accepted_by, 'revoked_at', p_inv.revoked_at,
                            'status', case when p_inv.accepted_at is not null then 'accepted'
                                           when p_inv.revoked_at is not null then 'revoked'
                                           when p_inv.expires_at <= pgshield.now() then 'expired'
                                           else 'pending' end)
$$;

revoke all on function pgshield.team_invitation_json(pgshield.team_invitations)
  from public, anon, authenticated, service_role;

-- -------------------------------------------------------------- invariant ----

-- After a member's update or delete: the team (if it still exists) must keep
-- an owner. Locks the team first (the entry points hold that lock already; a
-- cascade from auth.users takes it here), then counts with a fresh snapshot,
-- so two owners demoting each other at once cannot both succeed.
-- Security definer: it also fires for whoever deletes an auth user (the
-- cascade) and must read the team. Callers: trigger team_members_keep_an_owner.
-- Errors: PT409.
create or replace function pgshield.team_members_keep_an_owner() returns trigger
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_slug text;
begin
  if tg_op = 'UPDATE' and new.role = 'owner' and new.team_id = old.team_id then
    return null;
  end if;
  select t.slug into v_slug from pgshield.teams t where t.id = old.team_id for update;
  if not found then
    return null;  -- the team itself is being deleted
  end if;
  if not exists (select 1 from pgshield.team_members m where m.team_id = old.team_id and m.role = 'owner') then
    raise exception using errcode = 'PT409',
      message = format('team %L must keep an owner', v_slug),
      detail = format('this would remove the last owner (user %s)', old.user_id),
      hint = 'make another member owner first (transfer_team_ownership), or delete the team';
  end if;
  return null;
end
$$;

revoke all on function pgshield.team_members_keep_an_owner() from public, anon, authenticated, service_role;

drop trigger if exists team_members_keep_an_owner on pgshield.team_members;
create trigger team_members_keep_an_owner
  after update of role, team_id or delete on pgshield.team_members
  for each row when (old.role = 'owner')
  execute function pgshield.team_members_keep_an_owner();

-- At commit: a team created in this transaction has an owner. Security
-- definer: it fires at commit, outside teams_call, as the API caller.
-- Callers: trigger teams_have_an_owner. Errors: PT409.
create or replace function pgshield.teams_have_an_owner() returns trigger
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if exists (select 1 from pgshield.teams t where t.id = new.id)
     and not exists (select 1 from pgshield.team_members m where m.team_id = new.id and m.role = 'owner') then
    raise exception using errcode = 'PT409', message = format('team %L has no owner', new.slug),
      hint = 'create teams with public.create_team_with_owner()';
  end if;
  return null;
end
$$;

revoke all on function pgshield.teams_have_an_owner() from public, anon, authenticated, service_role;

drop trigger if exists teams_have_an_owner on pgshield.teams;
create constraint trigger teams_have_an_owner
  after insert on pgshield.teams
  deferrable initially deferred
  for each row execute function pgshield.teams_have_an_owner();

-- ----------------------------------------------------------------- teams ----

-- Creates a team and its owner membership. Callers: through teams_call.
-- Errors: 22023 bad name, slug, email or owner; 42501 another user as owner;
-- 23505 slug taken; PT409 the caller's teams limit (set_teams_limits).
create or replace function pgshield.team_create(
  p_name text, p_slug text, p_owner_id uuid, p_billing_email text
) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_name text := pgshield.team_name(p_name);
  v_slug text := pgshield.team_slug(p_slug);
  v_email text := pgshield.team_email(p_billing_email, 'p_billing_email');
  v_owner uuid := coalesce(p_owner_id, v_actor);
  v_now timestamptz := pgshield.now();
  v_team pgshield.teams;
  v_max integer;
begin
  if v_actor is not null and v_owner <> v_actor then
    raise exception using errcode = '42501', message = 'you can only create teams you own yourself',
      hint = 'omit p_owner_id; service_role may name another owner';
  end if;
  if v_owner is null then
    raise exception using errcode = '22023', message = 'p_owner_id is required for trusted callers';
  end if;
  perform pgshield.team_user(v_owner, 'p_owner_id');
  if v_actor is not null then
    -- One creation at a time per user, so that the count below is exact.
    perform pg_advisory_xact_lock(747378437, hashtext(v_actor::text));
    v_max := coalesce((select s.max_teams_per_user from pgshield.teams_settings s where s.id), 100);
    if (select count(*) from (select 1 from pgshield.teams t where t.created_by = v_actor limit v_max) x) >= v_max then
      raise exception using errcode = 'PT409',
        message = format('you have created %s teams, the most one user may', v_max),
        hint = 'delete one of them; the project sets the limit with pgshield.set_teams_limits()';
    end if;
  end if;
  begin
    insert into pgshield.teams (name, slug, billing_email, created_by, created_at, updated_at)
    values (v_name, v_slug, v_email, coalesce(v_actor, v_owner), v_now, v_now)
    returning * into v_team;
  exception when unique_violation then
    raise exception using errcode = '23505', message = format('the team slug %L is taken', v_slug),
      hint = 'choose another slug';
  end;
  insert into pgshield.team_members (team_id, user_id, role, granted_by, created_at, updated_at, joined_via)
  values (v_team.id, v_owner, 'owner', v_actor, v_now, v_now,
          case when v_actor is null then 'service' else 'created' end);
  perform pgshield.team_audit_write(v_team.id, 'create_team', 'ok', v_owner, null, null,
                                    jsonb_build_object('slug', v_slug, 'name', v_name));
  return pgshield.team_json(v_team);
end
$$;

revoke all on function pgshield.team_create(text, text, uuid, text) from public, anon, authenticated, service_role;

-- Changes a team's name, slug or billing email (null: unchanged; '' clears
-- the billing email). Callers: through teams_call (write).
-- Errors: 22023, PT404, 42501, 23505 slug taken.
create or replace function pgshield.team_update(
  p_team_id uuid, p_name text, p_slug text, p_billing_email text
) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_name text := case when p_name is not null then pgshield.team_name(p_name) end;
  v_slug text := case when p_slug is not null then pgshield.team_slug(p_slug) end;
  v_email text := case when nullif(btrim(p_billing_email), '') is not null
                       then pgshield.team_email(p_billing_email, 'p_billing_email') end;
  v_team pgshield.teams;
begin
  perform pgshield.team_guard(p_team_id, v_actor, 'write', true);
  begin
    update pgshield.teams t
       set name = coalesce(v_name, t.name),
           slug = coalesce(v_slug, t.slug),
           billing_email = case when p_billing_email is null then t.billing_email else v_email end,
           updated_at = pgshield.now()
     where t.id = p_team_id
    returning * into v_team;
  exception when unique_violation then
    raise exception using errcode = '23505', message = format('the team slug %L is taken', v_slug),
      hint = 'choose another slug';
  end;
  perform pgshield.team_audit_write(p_team_id, 'update_team', 'ok', null, null, null,
    jsonb_strip_nulls(jsonb_build_object('name', v_name, 'slug', v_slug,
                                         'billing_email', case when p_billing_email is not null then coalesce(v_email, '') end)));
  return pgshield.team_json(v_team);
end
$$;

revoke all on function pgshield.team_update(uuid, text, text, text) from public, anon, authenticated, service_role;

-- Deletes a team, its members and invitations. Callers: through teams_call
-- (owners only). Errors: PT404, 42501.
create or replace function pgshield.team_delete(p_team_id uuid) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_role text;
  v_team pgshield.teams;
begin
  select g.o_role into v_role from pgshield.team_guard(p_team_id, v_actor, null, true) g;
  if v_actor is not null and v_role <> 'owner' then
    raise exception using errcode = '42501', message = 'only an owner can delete a team';
  end if;
  delete from pgshield.teams t where t.id = p_team_id returning * into v_team;
  perform pgshield.team_audit_write(p_team_id, 'delete_team', 'ok', null, null, null,
                                    jsonb_build_object('slug', v_team.slug, 'name', v_team.name));
  return pgshield.team_json(v_team) || jsonb_build_object('deleted', true);
end
$$;

revoke all on function pgshield.team_delete(uuid) from public, anon, authenticated, service_role;

-- One team by id or by slug, with the caller's role and permissions.
-- Callers: through teams_call (read). Errors: 22023, PT404, 42501.
create or replace function pgshield.team_get(p_team_id uuid, p_slug text) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_id uuid := p_team_id;
  v_guard record;
  v_team pgshield.teams;
begin
  if (p_team_id is null) = (p_slug is null) then
    raise exception using errcode = '22023', message = 'give exactly one of p_team_id and p_slug';
  end if;
  if v_id is null then
    -- API callers find only their own teams by slug: a team they are not in
    -- is answered exactly like one that does not exist (no id, no hint).
    select t.id into v_id from pgshield.teams t
     where t.slug = pgshield.team_slug(p_slug)
       and (v_actor is null
            or exists (select 1 from pgshield.team_members m where m.team_id = t.id and m.user_id = v_actor));
    if v_id is null then
      raise exception using errcode = 'PT404', message = format('no team with slug %L', pgshield.team_slug(p_slug)),
        hint = 'it does not exist, or you are not a member';
    end if;
  end if;
  select * into v_guard from pgshield.team_guard(v_id, v_actor, 'read', false);
  select * into v_team from pgshield.teams t where t.id = v_id;
  return pgshield.team_json(v_team)
         || jsonb_build_object('role', v_guard.o_role, 'permissions', v_guard.o_permissions,
                               'members', (select count(*) from pgshield.team_members m where m.team_id = v_id),
                               'owners', (select count(*) from pgshield.team_members m
                                           where m.team_id = v_id and m.role = 'owner'));
end
$$;

revoke all on function pgshield.team_get(uuid, text) from public, anon, authenticated, service_role;

-- The teams of a user (the caller; trusted callers name p_user_id), each
-- with the user's role and permissions, by slug; of a team where the user
-- lacks read, only its id, slug, name and timestamps (get_team refuses the
-- rest: its billing email and creator).
-- Callers: through teams_call. Errors: 22023, 42501 another user's teams.
create or replace function pgshield.team_list_mine(p_user_id uuid) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_user uuid := coalesce(p_user_id, v_actor);
begin
  if v_actor is not null and v_user <> v_actor then
    raise exception using errcode = '42501', message = 'you can only list your own teams',
      hint = 'omit p_user_id';
  end if;
  if v_user is null then
    raise exception using errcode = '22023', message = 'p_user_id is required for trusted callers';
  end if;
  return coalesce((
    select jsonb_agg(case when 'read' = any(x.permissions) then pgshield.team_json(t)
                          else jsonb_build_object('id', t.id, 'slug', t.slug, 'name', t.name,
                                                  'created_at', t.created_at, 'updated_at', t.updated_at) end
                     || jsonb_build_object('role', m.role, 'permissions', x.permissions)
                     order by t.slug)
      from pgshield.team_members m join pgshield.teams t on t.id = m.team_id
           cross join lateral (select pgshield.team_effective_permissions(m.role, m.extra_permissions) as permissions) x
     where m.user_id = v_user), '[]'::jsonb);
end
$$;

revoke all on function pgshield.team_list_mine(uuid) from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- members ----

-- A team's members, owners first. Callers: through teams_call (read).
-- Errors: PT404, 42501.
create or replace function pgshield.team_list_members(p_team_id uuid) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  perform pgshield.team_guard(p_team_id, pgshield.team_actor(), 'read', false);
  return coalesce((
    select jsonb_agg(pgshield.team_member_json(m)
                     order by pgshield.team_role_rank(m.role) desc, m.created_at, m.user_id)
      from pgshield.team_members m where m.team_id = p_team_id), '[]'::jsonb);
end
$$;

revoke all on function pgshield.team_list_members(uuid) from public, anon, authenticated, service_role;

-- Adds a user to a team. Callers: through teams_call (admin; never above
-- the caller's own role and permissions; a user makes nobody owner this
-- way: owners join by invitation, or a trusted caller adds them).
-- Errors: 22023, PT404, 42501, 23505 already a member.
create or replace function pgshield.team_add_member(
  p_team_id uuid, p_user_id uuid, p_role text, p_permissions text[]
) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_role text := pgshield.team_role(coalesce(p_role, 'member'), 'p_role');
  v_extra text[] := pgshield.team_permission_list(p_permissions, 'p_permissions');
  v_guard record;
  v_member pgshield.team_members;
  v_now timestamptz := pgshield.now();
begin
  -- The team and the caller's admin permission first: only then say whether
  -- p_user_id is an auth user (nobody else learns which user ids exist).
  select * into v_guard from pgshield.team_guard(p_team_id, v_actor, 'admin', true);
  perform pgshield.team_user(p_user_id, 'p_user_id');
  perform pgshield.team_check_grant(v_guard.o_slug, v_guard.o_rank, v_guard.o_permissions, v_role, v_extra, null);
  if v_actor is not null and v_role = 'owner' then
    -- An owner is bound to the team (their account cannot be deleted while
    -- they are its last owner): nobody is made one unasked.
    raise exception using errcode = '42501',
      message = format('on team %L nobody is made owner unasked', v_guard.o_slug),
      hint = 'invite them with role owner: accepting the invitation makes them owner';
  end if;
  insert into pgshield.team_members
    (team_id, user_id, role, extra_permissions, granted_by, created_at, updated_at, joined_via)
  values (p_team_id, p_user_id, v_role, v_extra, v_actor, v_now, v_now,
          case when v_actor is null then 'service' else 'added' end)
  on conflict (team_id, user_id) do nothing
  returning * into v_member;
  if v_member.user_id is null then
    raise exception using errcode = '23505',
      message = format('user %s is already a member of team %L', p_user_id, v_guard.o_slug),
      hint = 'change the role with set_team_member_role';
  end if;
  perform pgshield.team_audit_write(p_team_id, 'add_member', 'ok', p_user_id, null, null,
                                    jsonb_build_object('role', v_role, 'extra_permissions', v_extra));
  return pgshield.team_member_json(v_member);
end
$$;

revoke all on function pgshield.team_add_member(uuid, uuid, text, text[]) from public, anon, authenticated, service_role;

-- Changes a member's role and (p_permissions not null) replaces their
-- overrides. Callers: through teams_call (admin; the member's current role
-- ranks no higher than the caller's, and the new role and permissions are
-- within the caller's own; a member added unasked is made owner only by a
-- trusted caller).
-- Errors: 22023, PT404 team or member, 42501, PT409 the last owner.
create or replace function pgshield.team_set_member_role(
  p_team_id uuid, p_user_id uuid, p_role text, p_permissions text[]
) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_role text := pgshield.team_role(p_role, 'p_role');
  v_extra text[] := case when p_permissions is not null
                         then pgshield.team_permission_list(p_permissions, 'p_permissions') end;
  v_guard record;
  v_member pgshield.team_members;
begin
  select * into v_guard from pgshield.team_guard(p_team_id, v_actor, 'admin', true);
  select * into v_member from pgshield.team_members m
   where m.team_id = p_team_id and m.user_id = p_user_id for update;
  if v_member.user_id is null then
    raise exception using errcode = 'PT404',
      message = format('user %s is not a member of team %L', p_user_id, v_guard.o_slug);
  end if;
  v_extra := coalesce(v_extra, v_member.extra_permissions);
  perform pgshield.team_check_grant(v_guard.o_slug, v_guard.o_rank, v_guard.o_permissions, v_role, v_extra,
                                    pgshield.team_role_rank(v_member.role));
  if v_actor is not null and v_role = 'owner' and v_member.role <> 'owner' and v_member.joined_via = 'added' then
    raise exception using errcode = '42501',
      message = format('user %s was added to team %L unasked: only a member who joined by their own act is made owner',
                       p_user_id, v_guard.o_slug),
      hint = 'invite them with role owner: accepting the invitation makes them owner';
  end if;
  update pgshield.team_members m
     set role = v_role, extra_permissions = v_extra, granted_by = v_actor, updated_at = pgshield.now()
   where m.team_id = p_team_id and m.user_id = p_user_id
  returning * into v_member;
  perform pgshield.team_audit_write(p_team_id, 'set_member_role', 'ok', p_user_id, null, null,
                                    jsonb_build_object('role', v_role, 'extra_permissions', v_extra));
  return pgshield.team_member_json(v_member);
end
$$;

revoke all on function pgshield.team_set_member_role(uuid, uuid, text, text[]) from public, anon, authenticated, service_role;

-- Removes a member (p_leaving: the caller leaves; no admin permission
-- needed). Callers: through teams_call.
-- Errors: PT404 team or member, 42501, PT409 the last owner.
create or replace function pgshield.team_remove_member(p_team_id uuid, p_user_id uuid, p_leaving boolean)
returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_user uuid := case when p_leaving then v_actor else p_user_id end;
  v_guard record;
  v_member pgshield.team_members;
begin
  if p_leaving and v_actor is null then
    raise exception using errcode = '42501', message = 'leave_team is for signed-in users',
      hint = 'trusted callers use remove_team_member';
  end if;
  if v_user is null then
    raise exception using errcode = '22023', message = 'p_user_id must not be null';
  end if;
  select * into v_guard from pgshield.team_guard(p_team_id, v_actor,
                                                 case when v_user = v_actor then null else 'admin' end, true);
  select * into v_member from pgshield.team_members m
   where m.team_id = p_team_id and m.user_id = v_user for update;
  if v_member.user_id is null then
    raise exception using errcode = 'PT404',
      message = format('user %s is not a member of team %L', v_user, v_guard.o_slug);
  end if;
  if v_user is distinct from v_actor and pgshield.team_role_rank(v_member.role) > v_guard.o_rank then
    raise exception using errcode = '42501',
      message = format('on team %L you cannot remove a member whose role is above yours', v_guard.o_slug);
  end if;
  delete from pgshield.team_members m where m.team_id = p_team_id and m.user_id = v_user;
  perform pgshield.team_audit_write(p_team_id, case when p_leaving then 'leave_team' else 'remove_member' end,
                                    'ok', v_user, null, null, jsonb_build_object('role', v_member.role));
  return pgshield.team_member_json(v_member) || jsonb_build_object('removed', true);
end
$$;

revoke all on function pgshield.team_remove_member(uuid, uuid, boolean) from public, anon, authenticated, service_role;

-- Makes member p_new_owner_id an owner. An owner calling it becomes admin;
-- a trusted caller makes every other owner admin. Returns the team's owners.
-- A member added unasked must first accept an invitation (their consent).
-- Callers: through teams_call (owners). Errors: 22023, PT404, 42501.
create or replace function pgshield.team_transfer_ownership(p_team_id uuid, p_new_owner_id uuid) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_guard record;
  v_now timestamptz := pgshield.now();
begin
  if p_new_owner_id is null then
    raise exception using errcode = '22023', message = 'p_new_owner_id must not be null';
  end if;
  select * into v_guard from pgshield.team_guard(p_team_id, v_actor, null, true);
  if v_actor is not null and v_guard.o_role <> 'owner' then
    raise exception using errcode = '42501', message = 'only an owner can transfer ownership';
  end if;
  if p_new_owner_id = v_actor then
    raise exception using errcode = '22023', message = 'p_new_owner_id is you: name another member';
  end if;
  -- Promote first, then demote: the owner trigger never sees a team without
  -- one. A member added unasked is not made owner by a user (team_add_member).
  update pgshield.team_members m set role = 'owner', granted_by = v_actor, updated_at = v_now
   where m.team_id = p_team_id and m.user_id = p_new_owner_id
     and (v_actor is null or m.joined_via <> 'added' or m.role = 'owner');
  if not found then
    if exists (select 1 from pgshield.team_members m
                where m.team_id = p_team_id and m.user_id = p_new_owner_id) then
      raise exception using errcode = '42501',
        message = format('user %s was added to team %L unasked: only a member who joined by their own act is made owner',
                         p_new_owner_id, v_guard.o_slug),
        hint = 'invite them (any role): accepting it is their consent, then transfer';
    end if;
    raise exception using errcode = 'PT404',
      message = format('user %s is not a member of team %L', p_new_owner_id, v_guard.o_slug),
      hint = 'add or invite them first';
  end if;
  update pgshield.team_members m set role = 'admin', granted_by = v_actor, updated_at = v_now
   where m.team_id = p_team_id and m.role = 'owner' and m.user_id <> p_new_owner_id
     and (v_actor is null or m.user_id = v_actor);
  perform pgshield.team_audit_write(p_team_id, 'transfer_ownership', 'ok', p_new_owner_id, null, null,
                                    jsonb_build_object('from', v_actor));
  return (select jsonb_agg(pgshield.team_member_json(m) order by m.user_id)
            from pgshield.team_members m where m.team_id = p_team_id and m.role = 'owner');
end
$$;

revoke all on function pgshield.team_transfer_ownership(uuid, uuid) from public, anon, authenticated, service_role;

-- ------------------------------------------------------------ invitations ----

-- Creates an invitation and returns it with its token (shown only here).
-- Callers: through teams_call (admin; role within the caller's own).
-- Errors: 22023 bad role, email or expiry; PT404; 42501; PT409 the team's
-- open invitations limit (set_teams_limits).
create or replace function pgshield.team_create_invitation(
  p_team_id uuid, p_role text, p_email text, p_expires_in interval, p_permissions text[]
) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_role text := pgshield.team_role(coalesce(p_role, 'member'), 'p_role');
  v_extra text[] := pgshield.team_permission_list(p_permissions, 'p_permissions');
  v_email text := pgshield.team_email(p_email, 'p_email');
  v_expires_in interval := coalesce(p_expires_in, interval '7 days');
  -- 244 random bits from the server's strong random source (two v4 uuids).
  v_token text := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
  v_guard record;
  v_inv pgshield.team_invitations;
  v_now timestamptz := pgshield.now();
  v_max integer;
begin
  -- On the clock, not as intervals: comparing intervals counts a month as 30
  -- days and a year as 360, so '100 years -35910 days' compared as 90 days.
  if v_now + v_expires_in not between v_now + interval '1 minute' and v_now + interval '90 days' then
    raise exception using errcode = '22023', message = 'p_expires_in must be between 1 minute and 90 days';
  end if;
  select * into v_guard from pgshield.team_guard(p_team_id, v_actor, 'admin', true);
  perform pgshield.team_check_grant(v_guard.o_slug, v_guard.o_rank, v_guard.o_permissions, v_role, v_extra, null);
  if v_actor is not null then
    -- Counted under the team's row lock (team_guard), so exact.
    v_max := coalesce((select s.max_open_invitations_per_team from pgshield.teams_settings s where s.id), 1000);
    if (select count(*) from (select 1 from pgshield.team_invitations i
                               where i.team_id = p_team_id and i.accepted_at is null
                                 and i.revoked_at is null and i.expires_at > v_now
                               limit v_max) x) >= v_max then
      raise exception using errcode = 'PT409',
        message = format('team %L has %s open invitations, the most a team may', v_guard.o_slug, v_max),
        hint = 'revoke some or let them expire; the project sets the limit with pgshield.set_teams_limits()';
    end if;
  end if;
  insert into pgshield.team_invitations (team_id, token_hash, role, extra_permissions, email, invited_by,
                                         created_at, expires_at)
  values (p_team_id, sha256(convert_to(v_token, 'UTF8')), v_role, v_extra, v_email, v_actor,
          v_now, v_now + v_expires_in)
  returning * into v_inv;
  perform pgshield.team_audit_write(p_team_id, 'create_invitation', 'ok', null, null, null,
    jsonb_build_object('invitation_id', v_inv.id, 'role', v_role, 'email', v_email, 'expires_at', v_inv.expires_at));
  return pgshield.team_invitation_json(v_inv) || jsonb_build_object('token', v_token);
end
$$;

revoke all on function pgshield.team_create_invitation(uuid, text, text, interval, text[])
  from public, anon, authenticated, service_role;

-- Joins the caller to the invitation's team. Single use; refused once
-- expired or revoked, when bound to an email that is not the caller's
-- confirmed auth.users email, or when its sender can no longer grant its
-- role and overrides (the same check as at creation, with the sender's role
-- and permissions now). A member an admin added unasked may accept one:
-- their membership becomes what it offers, and counts as joined by consent.
-- Callers: through teams_call (authenticated).
-- Errors: 22023 bad token; PT404 unknown token (or deleted meanwhile);
-- PT409 used, revoked, expired, sender can no longer grant it; 42501
-- another or unconfirmed email, not a user; 23505 already a member.
create or replace function pgshield.team_accept_invitation(p_token text) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_hash bytea;
  v_inv pgshield.team_invitations;
  v_email text;
  v_inviter pgshield.team_members;
  v_member pgshield.team_members;
  v_now timestamptz;
begin
  if p_token is null or p_token !~ '^[0-9a-f]{64}$' then
    raise exception using errcode = '22023', message = 'p_token must be the 64 hex characters of an invitation';
  end if;
  if v_actor is null then
    raise exception using errcode = '42501', message = 'an invitation is accepted by the invited user',
      hint = 'trusted callers add members with add_team_member';
  end if;
  v_hash := sha256(convert_to(p_token, 'UTF8'));
  select * into v_inv from pgshield.team_invitations i where i.token_hash = v_hash;
  if v_inv.id is null then
    raise exception using errcode = 'PT404', message = 'no such invitation';
  end if;
  -- Team first, then the invitation: the lock order of every team change.
  perform pgshield.team_guard(v_inv.team_id, null, null, true);
  select * into v_inv from pgshield.team_invitations i where i.id = v_inv.id for update;
  if not found then  -- deleted (cleanup, its team) while this call waited for the team
    raise exception using errcode = 'PT404', message = 'no such invitation';
  end if;
  v_now := pgshield.now();
  if v_inv.accepted_at is not null then
    raise exception using errcode = 'PT409', message = 'this invitation has been used';
  elsif v_inv.revoked_at is not null then
    raise exception using errcode = 'PT409', message = 'this invitation was revoked';
  elsif v_inv.expires_at <= v_now then
    raise exception using errcode = 'PT409', message = format('this invitation expired at %s', v_inv.expires_at),
      hint = 'ask for a new one';
  end if;
  if v_inv.email is not null then
    -- Only a confirmed address counts: an unconfirmed one is merely claimed.
    select lower(u.email) into v_email from auth.users u
     where u.id = v_actor and u.email_confirmed_at is not null;
    if v_email is distinct from v_inv.email then
      raise exception using errcode = '42501',
        message = 'this invitation is for another email address, or yours is not confirmed',
        hint = 'sign in with the invited address, once it is confirmed';
    end if;
  end if;
  if v_inv.invited_by is not null then
    -- The grant check of creation, with the sender's role and permissions now.
    select * into v_inviter from pgshield.team_members m
     where m.team_id = v_inv.team_id and m.user_id = v_inv.invited_by;
    if v_inviter.user_id is null
       or not pgshield.team_can_grant(pgshield.team_role_rank(v_inviter.role),
                                      pgshield.team_effective_permissions(v_inviter.role, v_inviter.extra_permissions),
                                      v_inv.role, v_inv.extra_permissions) then
      raise exception using errcode = 'PT409',
        message = 'the member who sent this invitation can no longer grant its role and permissions',
        hint = 'ask a team admin for a new invitation';
    end if;
  end if;
  insert into pgshield.team_members
    (team_id, user_id, role, extra_permissions, granted_by, created_at, updated_at, joined_via)
  values (v_inv.team_id, v_actor, v_inv.role, v_inv.extra_permissions, v_inv.invited_by, v_now, v_now,
          'invitation')
  on conflict (team_id, user_id) do nothing
  returning * into v_member;
  if v_member.user_id is null then
    -- A member an admin added unasked: accepting is their consent, and the
    -- membership becomes what the invitation offers.
    update pgshield.team_members m
       set role = v_inv.role, extra_permissions = v_inv.extra_permissions, granted_by = v_inv.invited_by,
           joined_via = 'invitation', updated_at = v_now
     where m.team_id = v_inv.team_id and m.user_id = v_actor and m.joined_via = 'added'
    returning * into v_member;
  end if;
  if v_member.user_id is null then
    raise exception using errcode = '23505', message = 'you are already a member of this team',
      hint = 'the invitation stays unused';
  end if;
  update pgshield.team_invitations i set accepted_at = v_now, accepted_by = v_actor where i.id = v_inv.id;
  perform pgshield.team_audit_write(v_inv.team_id, 'accept_invitation', 'ok', v_actor, null, null,
                                    jsonb_build_object('invitation_id', v_inv.id, 'role', v_inv.role));
  return pgshield.team_member_json(v_member);
end
$$;

revoke all on function pgshield.team_accept_invitation(text) from public, anon, authenticated, service_role;

-- Revokes an unused invitation (again: no change). An invitation of a team
-- the caller is not a member of is answered like one that does not exist.
-- Callers: through teams_call (admin of its team). Errors: 22023, PT404,
-- 42501, PT409 used.
create or replace function pgshield.team_revoke_invitation(p_invitation_id uuid) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
  v_team uuid;
  v_inv pgshield.team_invitations;
begin
  if p_invitation_id is null then
    raise exception using errcode = '22023', message = 'p_invitation_id must not be null';
  end if;
  select i.team_id into v_team from pgshield.team_invitations i
   where i.id = p_invitation_id
     and (v_actor is null
          or exists (select 1 from pgshield.team_members m where m.team_id = i.team_id and m.user_id = v_actor));
  if v_team is null then
    raise exception using errcode = 'PT404', message = format('no invitation with id %s', p_invitation_id);
  end if;
  perform pgshield.team_guard(v_team, v_actor, 'admin', true);
  update pgshield.team_invitations i set revoked_at = coalesce(i.revoked_at, pgshield.now())
   where i.id = p_invitation_id
  returning * into v_inv;
  if v_inv.accepted_at is not null then
    raise exception using errcode = 'PT409', message = 'this invitation has been used: remove the member instead';
  end if;
  perform pgshield.team_audit_write(v_team, 'revoke_invitation', 'ok', null, null, null,
                                    jsonb_build_object('invitation_id', p_invitation_id));
  return pgshield.team_invitation_json(v_inv);
end
$$;

revoke all on function pgshield.team_revoke_invitation(uuid) from public, anon, authenticated, service_role;

-- A team's invitations, newest first (until teams_cleanup removes them).
-- Callers: through teams_call (admin). Errors: PT404, 42501.
create or replace function pgshield.team_list_invitations(p_team_id uuid) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  perform pgshield.team_guard(p_team_id, pgshield.team_actor(), 'admin', false);
  return coalesce((
    select jsonb_agg(pgshield.team_invitation_json(i) order by i.created_at desc, i.id)
      from pgshield.team_invitations i where i.team_id = p_team_id), '[]'::jsonb);
end
$$;

revoke all on function pgshield.team_list_invitations(uuid) from public, anon, authenticated, service_role;

-- ------------------------------------------------------------------ audit ----

-- Audit rows, newest first: of one team (its admins, trusted callers) or of
-- every team and team-less refusal (trusted callers, p_team_id null).
-- Callers: through teams_call. Errors: 22023, PT404, 42501.
create or replace function pgshield.team_list_audit(p_team_id uuid, p_limit integer, p_denied_only boolean)
returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_actor uuid := pgshield.team_actor();
begin
  if p_limit is null or p_limit not between 1 and 1000 then
    raise exception using errcode = '22023', message = 'p_limit must be between 1 and 1000';
  end if;
  if p_team_id is null and v_actor is not null then
    raise exception using errcode = '22023', message = 'p_team_id is required',
      hint = 'only service_role reads the audit of every team';
  end if;
  if p_team_id is not null and v_actor is not null then
    perform pgshield.team_guard(p_team_id, v_actor, 'admin', false);
  end if;
  return coalesce((
    select jsonb_agg(jsonb_build_object('id', a.id, 'at', a.at, 'team_id', a.team_id, 'actor_id', a.actor_id,
                                        'actor_role', a.actor_role, 'action', a.action, 'outcome', a.outcome,
                                        'target_user_id', a.target_user_id, 'sqlstate', a.sqlstate,
                                        'message', a.message, 'details', a.details)
                     order by a.id desc)
      from (select * from pgshield.team_audit x
             where (p_team_id is null or x.team_id = p_team_id)
               and (not coalesce(p_denied_only, false) or x.outcome = 'denied')
             order by x.id desc limit p_limit) a), '[]'::jsonb);
end
$$;

revoke all on function pgshield.team_list_audit(uuid, integer, boolean) from public, anon, authenticated, service_role;

-- ------------------------------------------------------------- dispatcher ----

-- The text of p_args ->> p_key as a uuid, or null when it is not one.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.team_arg_uuid(p_args jsonb, p_key text) returns uuid
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case when p_args ->> p_key ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
              then (p_args ->> p_key)::uuid end
$$;

revoke all on function pgshield.team_arg_uuid(jsonb, text) from public, anon, authenticated, service_role;

-- A text[] argument (null when absent or JSON null). Callers: pack functions.
-- Errors: none.
create or replace function pgshield.team_arg_array(p_args jsonb, p_key text) returns text[]
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case when jsonb_typeof(p_args -> p_key) = 'array'
              then array(select jsonb_array_elements_text(p_args -> p_key)) end
$$;

revoke all on function pgshield.team_arg_array(jsonb, text) from public, anon, authenticated, service_role;

-- Runs one team operation. Callers: pgshield.teams_call. Errors: those of
-- the operation; 22023 unknown operation.
create or replace function pgshield.team_dispatch(p_op text, p_args jsonb) returns jsonb
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  case p_op
    when 'create_team' then
      return pgshield.team_create(p_args ->> 'name', p_args ->> 'slug', (p_args ->> 'owner_id')::uuid,
                                  p_args ->> 'billing_email');
    when 'update_team' then
      return pgshield.team_update((p_args ->> 'team_id')::uuid, p_args ->> 'name', p_args ->> 'slug',
                                  p_args ->> 'billing_email');
    when 'delete_team' then
      return pgshield.team_delete((p_args ->> 'team_id')::uuid);
    when 'get_team' then
      return pgshield.team_get((p_args ->> 'team_id')::uuid, p_args ->> 'slug');
    when 'list_my_teams' then
      return pgshield.team_list_mine((p_args ->> 'user_id')::uuid);
    when 'list_members' then
      return pgshield.team_list_members((p_args ->> 'team_id')::uuid);
    when 'add_member' then
      return pgshield.team_add_member((p_args ->> 'team_id')::uuid, (p_args ->> 'user_id')::uuid,
                                      p_args ->> 'role', pgshield.team_arg_array(p_args, 'permissions'));
    when 'set_member_role' then
      return pgshield.team_set_member_role((p_args ->> 'team_id')::uuid, (p_args ->> 'user_id')::uuid,
                                           p_args ->> 'role', pgshield.team_arg_array(p_args, 'permissions'));
    when 'remove_member' then
      return pgshield.team_remove_member((p_args ->> 'team_id')::uuid, (p_args ->> 'user_id')::uuid, false);
    when 'leave_team' then
      return pgshield.team_remove_member((p_args ->> 'team_id')::uuid, null, true);
    when 'transfer_ownership' then
      return pgshield.team_transfer_ownership((p_args ->> 'team_id')::uuid, (p_args ->> 'new_owner_id')::uuid);
    when 'create_invitation' then
      return pgshield.team_create_invitation((p_args ->> 'team_id')::uuid, p_args ->> 'role', p_args ->> 'email',
                                             (p_args ->> 'expires_in')::interval,
                                             pgshield.team_arg_array(p_args, 'permissions'));
    when 'accept_invitation' then
      return pgshield.team_accept_invitation(p_args ->> 'token');
    when 'revoke_invitation' then
      return pgshield.team_revoke_invitation((p_args ->> 'invitation_id')::uuid);
    when 'list_invitations' then
      return pgshield.team_list_invitations((p_args ->> 'team_id')::uuid);
    when 'list_audit' then
      return pgshield.team_list_audit((p_args ->> 'team_id')::uuid, (p_args ->> 'limit')::integer,
                                      (p_args ->> 'denied_only')::boolean);
    else
      raise exception using errcode = '22023', message = format('unknown team operation %L', left(p_op, 64));
  end case;
end
$$;

revoke all on function pgshield.team_dispatch(text, jsonb) from public, anon, authenticated, service_role;

-- The security definer logic behind every public team entry point. Runs the
-- operation; when it is refused (42501, PT404, PT409, 23505) its work is
-- rolled back to before the operation, a denied audit row is written, the
-- PostgREST response status is set (403, 404, 409) and the refusal is
-- RETURNED as {code, message, details, hint}, so the caller's transaction
-- can commit the audit row. Bad input (class 22) and everything else raise.
-- Every call needs a read-write transaction (PostgREST: POST), since a
-- refusal writes its audit row and a change its own: a read-only one (GET,
-- HEAD, supabase-js rpc(..., { get: true }), a standby) is refused up front.
-- A denied row names the team only when the caller is a member of it (or
-- trusted), so that strangers cannot write into a team's audit, and keeps
-- only the arguments the operation takes (at most 1,000 characters of
-- them): its team and target come from those, so a direct call cannot
-- plant a team, a target or a note in an audit row the operation would not
-- write.
-- Callers: authenticated, service_role (through the public entry points).
-- Errors: 25006 read-only transaction; 22023 and class 22 bad input;
-- refusals are answered, not raised.
create or replace function pgshield.teams_call(p_op text, p_args jsonb) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_state text;
  v_message text;
  v_detail text;
  v_hint text;
  v_team uuid;
  v_details jsonb;
  v_args jsonb;
begin
  if current_setting('transaction_read_only') = 'on' then
    raise exception using errcode = '25006', message = 'call team operations with POST',
      detail = 'this transaction is read-only (GET or HEAD through PostgREST, or a standby)',
      hint = 'team calls write their audit trail: drop { get: true } from supabase.rpc(), use POST /rpc/...';
  end if;
  begin
    return pgshield.team_dispatch(p_op, coalesce(p_args, '{}'::jsonb));
  exception when sqlstate '42501' or sqlstate 'PT404' or sqlstate 'PT409' or sqlstate '23505' then
    get stacked diagnostics v_state = returned_sqlstate, v_message = message_text,
                            v_detail = pg_exception_detail, v_hint = pg_exception_hint;
  end;
  -- The arguments team_dispatch reads for this operation, and no others.
  select coalesce(jsonb_object_agg(e.key, e.value), '{}'::jsonb) into v_args
    from jsonb_each(case when jsonb_typeof(p_args) = 'object' then p_args else '{}'::jsonb end) e
   where e.key = any (case p_op
           when 'create_team' then array['name', 'slug', 'owner_id', 'billing_email']
           when 'update_team' then array['team_id', 'name', 'slug', 'billing_email']
           when 'list_my_teams' then array['user_id']
           when 'add_member' then array['team_id', 'user_id', 'role', 'permissions']
           when 'set_member_role' then array['team_id', 'user_id', 'role', 'permissions']
           when 'remove_member' then array['team_id', 'user_id']
           when 'transfer_ownership' then array['team_id', 'new_owner_id']
           when 'create_invitation' then array['team_id', 'role', 'email', 'expires_in', 'permissions']
           when 'accept_invitation' then array['token']
           when 'revoke_invitation' then array['invitation_id']
           when 'list_audit' then array['team_id', 'limit', 'denied_only']
           when 'get_team' then array['team_id', 'slug']
           else array['team_id'] end);
  v_team := coalesce(
    pgshield.team_arg_uuid(v_args, 'team_id'),
    (select i.team_id from pgshield.team_invitations i
      where i.id = pgshield.team_arg_uuid(v_args, 'invitation_id')),
    (select i.team_id from pgshield.team_invitations i
      where v_args ->> 'token' ~ '^[0-9a-f]{64}$'
        and i.token_hash = sha256(convert_to(v_args ->> 'token', 'UTF8'))));
  -- Only into the audit of a team the caller is in (trusted callers: any).
  if v_team is not null and not pgshield.caller_is_trusted()
     and not exists (select 1 from pgshield.team_members m where m.team_id = v_team and m.user_id = auth.uid()) then
    v_team := null;
  end if;
  v_details := v_args - 'token';
  if length(v_details::text) > 1000 then
    v_details := jsonb_build_object('truncated', true, 'arguments', left(v_details::text, 1000));
  end if;
  perform pgshield.team_audit_write(
    v_team, p_op, 'denied',
    coalesce(pgshield.team_arg_uuid(v_args, 'user_id'), pgshield.team_arg_uuid(v_args, 'owner_id'),
             pgshield.team_arg_uuid(v_args, 'new_owner_id')),
    v_state, v_message, v_details);
  perform set_config('response.status',
                     case v_state when '42501' then '403' when 'PT404' then '404' else '409' end, true);
  return jsonb_build_object('code', v_state, 'message', v_message,
                            'details', nullif(v_detail, ''), 'hint', nullif(v_hint, ''));
end
$$;

revoke all on function pgshield.teams_call(text, jsonb) from public, anon, authenticated, service_role;
grant execute on function pgshield.teams_call(text, jsonb) to authenticated, service_role;

-- ------------------------------------------------------------ entry points ----
-- Each runs as the invoker and returns one JSON value: the result, or a
-- refusal {code, message, details, hint} with response.status set (see
-- pgshield.teams_call). Callers: authenticated and service_role unless
-- noted; anon may call none. Refusals: 42501 not allowed, PT404 team or
-- member not found (or not yours), PT409 / 23505 conflict.
-- Errors (raised): 22023 bad input, nothing written.

-- What: creates a team and its owner membership in one transaction; returns
-- the team. authenticated callers own it themselves (p_owner_id null or
-- auth.uid()); service_role names any existing auth user.
-- Callers: authenticated, service_role.
-- Errors: 22023 bad name, slug (see pgshield.team_slug), billing email or
-- owner; refusals 42501 another owner, 23505 the slug is taken, PT409 the
-- caller's teams limit (pgshield.set_teams_limits).
create or replace function public.create_team_with_owner(
  p_name text,
  p_slug text,
  p_owner_id uuid default null,
  p_billing_email text default null
) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('create_team', jsonb_build_object(
    'name', p_name, 'slug', p_slug, 'owner_id', p_owner_id, 'billing_email', p_billing_email));
end
$$;

revoke all on function public.create_team_with_owner(text, text, uuid, text) from public, anon, authenticated, service_role;
grant execute on function public.create_team_with_owner(text, text, uuid, text) to authenticated, service_role;

-- What: changes a team's name, slug or billing email (null: unchanged; ''
-- clears the billing email); returns the team.
-- Callers: members with write, service_role.
-- Errors: 22023; refusals 404, 42501, 23505 slug taken.
create or replace function public.update_team(
  p_team_id uuid,
  p_name text default null,
  p_slug text default null,
  p_billing_email text default null
) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('update_team', jsonb_build_object(
    'team_id', p_team_id, 'name', p_name, 'slug', p_slug, 'billing_email', p_billing_email));
end
$$;

revoke all on function public.update_team(uuid, text, text, text) from public, anon, authenticated, service_role;
grant execute on function public.update_team(uuid, text, text, text) to authenticated, service_role;

-- What: deletes a team with its members and invitations; returns it with
-- "deleted": true. Callers: owners, service_role.
-- Errors: 22023; refusals PT404, 42501.
create or replace function public.delete_team(p_team_id uuid) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('delete_team', jsonb_build_object('team_id', p_team_id));
end
$$;

revoke all on function public.delete_team(uuid) from public, anon, authenticated, service_role;
grant execute on function public.delete_team(uuid) to authenticated, service_role;

-- What: one team by id or slug, with the caller's role, permissions and
-- member counts; a team the caller is not in is "not found" by id and by
-- slug alike. Callers: members with read, service_role.
-- Errors: 22023 neither or both of id and slug; refusals PT404, 42501.
create or replace function public.get_team(p_team_id uuid default null, p_slug text default null) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('get_team', jsonb_build_object('team_id', p_team_id, 'slug', p_slug));
end
$$;

revoke all on function public.get_team(uuid, text) from public, anon, authenticated, service_role;
grant execute on function public.get_team(uuid, text) to authenticated, service_role;

-- What: the caller's teams (service_role: p_user_id's), each with role and
-- permissions, by slug. Callers: authenticated (own), service_role.
-- Errors: 22023 service_role without p_user_id; refusal 42501 another user.
create or replace function public.list_my_teams(p_user_id uuid default null) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('list_my_teams', jsonb_build_object('user_id', p_user_id));
end
$$;

revoke all on function public.list_my_teams(uuid) from public, anon, authenticated, service_role;
grant execute on function public.list_my_teams(uuid) to authenticated, service_role;

-- What: a team's members (email, role, permissions), owners first.
-- Callers: members with read, service_role. Errors: 22023; refusals PT404, 42501.
create or replace function public.list_team_members(p_team_id uuid) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('list_members', jsonb_build_object('team_id', p_team_id));
end
$$;

revoke all on function public.list_team_members(uuid) from public, anon, authenticated, service_role;
grant execute on function public.list_team_members(uuid) to authenticated, service_role;

-- What: adds an existing auth user with a role and permission overrides;
-- returns the membership. Callers: members with admin (never above their
-- own role and permissions), service_role.
-- Errors: 22023 bad user, role or permission; refusals PT404, 42501, 23505 already a member.
create or replace function public.add_team_member(
  p_team_id uuid,
  p_user_id uuid,
  p_role text default 'member',
  p_permissions text[] default '{}'
) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('add_member', jsonb_build_object(
    'team_id', p_team_id, 'user_id', p_user_id, 'role', p_role, 'permissions', to_jsonb(p_permissions)));
end
$$;

revoke all on function public.add_team_member(uuid, uuid, text, text[]) from public, anon, authenticated, service_role;
grant execute on function public.add_team_member(uuid, uuid, text, text[]) to authenticated, service_role;

-- What: changes a member's role, and with p_permissions their overrides
-- (null: kept); returns the membership. Callers: members with admin, for
-- members not above them and roles not above their own; service_role.
-- Errors: 22023; refusals PT404, 42501, PT409 the team's last owner.
create or replace function public.set_team_member_role(
  p_team_id uuid,
  p_user_id uuid,
  p_role text,
  p_permissions text[] default null
) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('set_member_role', jsonb_build_object(
    'team_id', p_team_id, 'user_id', p_user_id, 'role', p_role, 'permissions', to_jsonb(p_permissions)));
end
$$;

revoke all on function public.set_team_member_role(uuid, uuid, text, text[]) from public, anon, authenticated, service_role;
grant execute on function public.set_team_member_role(uuid, uuid, text, text[]) to authenticated, service_role;

-- What: removes a member; returns the membership with "removed": true.
-- Callers: members with admin, for members not above them; service_role.
-- Errors: 22023; refusals PT404, 42501, PT409 the team's last owner.
create or replace function public.remove_team_member(p_team_id uuid, p_user_id uuid) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('remove_member', jsonb_build_object('team_id', p_team_id, 'user_id', p_user_id));
end
$$;

revoke all on function public.remove_team_member(uuid, uuid) from public, anon, authenticated, service_role;
grant execute on function public.remove_team_member(uuid, uuid) to authenticated, service_role;

-- What: makes member p_new_owner_id an owner; an owner calling it becomes
-- admin, service_role makes every other owner admin. Returns the owners.
-- Callers: owners, service_role. Errors: 22023; refusals PT404, 42501.
create or replace function public.transfer_team_ownership(p_team_id uuid, p_new_owner_id uuid) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('transfer_ownership', jsonb_build_object(
    'team_id', p_team_id, 'new_owner_id', p_new_owner_id));
end
$$;

revoke all on function public.transfer_team_ownership(uuid, uuid) from public, anon, authenticated, service_role;
grant execute on function public.transfer_team_ownership(uuid, uuid) to authenticated, service_role;

-- What: the caller leaves a team; returns the membership with "removed": true.
-- Callers: authenticated (service_role: refused, use remove_team_member).
-- Errors: 22023; refusals PT404, 42501, PT409 the team's last owner.
create or replace function public.leave_team(p_team_id uuid) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('leave_team', jsonb_build_object('team_id', p_team_id));
end
$$;

revoke all on function public.leave_team(uuid) from public, anon, authenticated, service_role;
grant execute on function public.leave_team(uuid) to authenticated, service_role;

-- What: an invitation to join with p_role (default member), optionally bound
-- to an email and with overrides, valid for p_expires_in (1 minute to 90
-- days, default 7 days). Returns it with "token": shown only here.
-- Callers: members with admin (roles not above their own), service_role.
-- Errors: 22023; refusals PT404, 42501, PT409 the team's open invitations
-- limit (pgshield.set_teams_limits).
create or replace function public.create_team_invitation(
  p_team_id uuid,
  p_role text default 'member',
  p_email text default null,
  p_expires_in interval default interval '7 days',
  p_permissions text[] default '{}'
) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('create_invitation', jsonb_build_object(
    'team_id', p_team_id, 'role', p_role, 'email', p_email, 'expires_in', p_expires_in,
    'permissions', to_jsonb(p_permissions)));
end
$$;

revoke all on function public.create_team_invitation(uuid, text, text, interval, text[])
  from public, anon, authenticated, service_role;
grant execute on function public.create_team_invitation(uuid, text, text, interval, text[])
  to authenticated, service_role;

-- What: the caller joins the team of the invitation p_token names; single
-- use, until it expires, only as the email it is bound to (the caller's
-- auth.users.email, confirmed), and while its sender can still grant it.
-- Returns the membership.
-- Callers: authenticated. Errors: 22023 malformed token; refusals PT404
-- unknown token, PT409 used / revoked / expired, 42501 another email or
-- service_role, 23505 already a member.
create or replace function public.accept_team_invitation(p_token text) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('accept_invitation', jsonb_build_object('token', p_token));
end
$$;

revoke all on function public.accept_team_invitation(text) from public, anon, authenticated, service_role;
grant execute on function public.accept_team_invitation(text) to authenticated, service_role;

-- What: revokes an unused invitation; returns it. Callers: members with
-- admin on its team, service_role. Errors: 22023; refusals PT404, 42501,
-- PT409 already used.
create or replace function public.revoke_team_invitation(p_invitation_id uuid) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('revoke_invitation', jsonb_build_object('invitation_id', p_invitation_id));
end
$$;

revoke all on function public.revoke_team_invitation(uuid) from public, anon, authenticated, service_role;
grant execute on function public.revoke_team_invitation(uuid) to authenticated, service_role;

-- What: a team's invitations with their status, newest first.
-- Callers: members with admin, service_role. Errors: 22023; refusals PT404, 42501.
create or replace function public.list_team_invitations(p_team_id uuid) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('list_invitations', jsonb_build_object('team_id', p_team_id));
end
$$;

revoke all on function public.list_team_invitations(uuid) from public, anon, authenticated, service_role;
grant execute on function public.list_team_invitations(uuid) to authenticated, service_role;

-- What: audit rows, newest first (at most p_limit, 1 to 1000): changes and
-- refused calls of one team, or of everything (service_role, p_team_id null).
-- Callers: members with admin (their team), service_role.
-- Errors: 22023; refusals PT404, 42501.
create or replace function public.get_team_audit(
  p_team_id uuid default null,
  p_limit integer default 100,
  p_denied_only boolean default false
) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.teams_call('list_audit', jsonb_build_object(
    'team_id', p_team_id, 'limit', p_limit, 'denied_only', p_denied_only));
end
$$;

revoke all on function public.get_team_audit(uuid, integer, boolean) from public, anon, authenticated, service_role;
grant execute on function public.get_team_audit(uuid, integer, boolean) to authenticated, service_role;

-- ------------------------------------------------------------ RLS helpers ----
-- For the project's own policies, e.g. on public.documents(team_id uuid):
--   create policy documents_read on public.documents for select to authenticated
--     using (team_id in (select pgshield.teams_with_permission('read')));
-- The set-returning form runs once per query (a hashed subplan); the boolean
-- form runs once per row and suits single-row checks (with check, triggers).

-- True when the signed-in caller (auth.uid()) has p_permission on team
-- p_team_id (anyone else: false).
-- Callers: authenticated, service_role. Errors: 22023 unknown permission.
create or replace function pgshield.has_team_permission(p_team_id uuid, p_permission text) returns boolean
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_permission is null or p_permission not in ('read', 'write', 'delete', 'admin') then
    raise exception using errcode = '22023', message = 'p_permission must be read, write, delete or admin';
  end if;
  return exists (
    select 1 from pgshield.team_members m
     where m.team_id = p_team_id and m.user_id = auth.uid()
       and (p_permission = any(m.extra_permissions)
            or exists (select 1 from pgshield.team_role_permissions rp
                        where rp.role = m.role and rp.permission = p_permission)));
end
$$;

revoke all on function pgshield.has_team_permission(uuid, text) from public, anon, authenticated, service_role;
grant execute on function pgshield.has_team_permission(uuid, text) to authenticated, service_role;

-- The teams where the signed-in caller has p_permission (none for anyone
-- else). Reads the caller's memberships through team_members_user_id_idx.
-- Callers: authenticated, service_role. Errors: 22023 unknown permission.
create or replace function pgshield.teams_with_permission(p_permission text) returns setof uuid
language plpgsql stable security definer rows 10
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_permission is null or p_permission not in ('read', 'write', 'delete', 'admin') then
    raise exception using errcode = '22023', message = 'p_permission must be read, write, delete or admin';
  end if;
  return query
  select m.team_id from pgshield.team_members m
   where m.user_id = auth.uid()
     and (p_permission = any(m.extra_permissions)
          or m.role in (select rp.role from pgshield.team_role_permissions rp where rp.permission = p_permission));
end
$$;

revoke all on function pgshield.teams_with_permission(text) from public, anon, authenticated, service_role;
grant execute on function pgshield.teams_with_permission(text) to authenticated, service_role;

-- ------------------------------------------------------------- operators ----

-- Sets the permissions of a role (not owner: owners always have all four);
-- returns them. Callers: service_role, the owner.
-- Errors: 22023 bad role or permission; 42501 others.
create or replace function pgshield.set_team_role_permissions(p_role text, p_permissions text[]) returns text[]
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role text;
  v_permissions text[];
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may change role permissions';
  end if;
  v_role := pgshield.team_role(p_role, 'p_role');
  v_permissions := pgshield.team_permission_list(p_permissions, 'p_permissions');
  if v_role = 'owner' then
    raise exception using errcode = '22023', message = 'owners always have every permission';
  end if;
  delete from pgshield.team_role_permissions rp where rp.role = v_role and rp.permission <> all(v_permissions);
  insert into pgshield.team_role_permissions (role, permission)
  select v_role, p from unnest(v_permissions) p
  on conflict do nothing;
  perform pgshield.team_audit_write(null, 'set_role_permissions', 'ok', null, null, null,
                                    jsonb_build_object('role', v_role, 'permissions', v_permissions));
  return v_permissions;
end
$$;

revoke all on function pgshield.set_team_role_permissions(text, text[]) from public, anon, authenticated, service_role;
grant execute on function pgshield.set_team_role_permissions(text, text[]) to service_role;

-- Sets how long teams_cleanup keeps audit rows (at least 1 day); returns it.
-- Callers: service_role, the owner. Errors: 22023; 42501 others.
create or replace function pgshield.set_teams_audit_retention(p_retention interval) returns interval
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may set the audit retention';
  end if;
  if p_retention is null or p_retention < interval '1 day' then
    raise exception using errcode = '22023', message = 'p_retention must be at least 1 day';
  end if;
  insert into pgshield.teams_settings as s (id, audit_retention, updated_at)
  values (true, p_retention, now())
  on conflict (id) do update set audit_retention = excluded.audit_retention, updated_at = now();
  return p_retention;
end
$$;

revoke all on function pgshield.set_teams_audit_retention(interval) from public, anon, authenticated, service_role;
grant execute on function pgshield.set_teams_audit_retention(interval) to service_role;

-- Sets how much one signed-in user may create (null keeps a limit): teams
-- created by or for them that still exist (created_by), and open invitations
-- (neither accepted, revoked nor expired) per team. A call past a limit is
-- refused with PT409 (audited); trusted callers are not limited. Returns both.
-- Callers: service_role, the owner. Errors: 22023; 42501 others.
create or replace function pgshield.set_teams_limits(
  p_max_teams_per_user integer default null,
  p_max_open_invitations_per_team integer default null
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row pgshield.teams_settings;
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may set the teams limits';
  end if;
  if p_max_teams_per_user not between 1 and 1000000 then
    raise exception using errcode = '22023', message = 'p_max_teams_per_user must be between 1 and 1000000';
  end if;
  if p_max_open_invitations_per_team not between 1 and 1000000 then
    raise exception using errcode = '22023',
      message = 'p_max_open_invitations_per_team must be between 1 and 1000000';
  end if;
  insert into pgshield.teams_settings (id) values (true) on conflict (id) do nothing;
  update pgshield.teams_settings s
     set max_teams_per_user = coalesce(p_max_teams_per_user, s.max_teams_per_user),
         max_open_invitations_per_team = coalesce(p_max_open_invitations_per_team, s.max_open_invitations_per_team),
         updated_at = now()
   where s.id
  returning * into v_row;
  return jsonb_build_object('max_teams_per_user', v_row.max_teams_per_user,
                            'max_open_invitations_per_team', v_row.max_open_invitations_per_team);
end
$$;

revoke all on function pgshield.set_teams_limits(integer, integer) from public, anon, authenticated, service_role;
grant execute on function pgshield.set_teams_limits(integer, integer) to service_role;

-- Deletes up to p_batch_size invitations that can no longer be accepted
-- (expired, used or revoked) and up to p_batch_size audit rows older than
-- the retention; returns how many rows it deleted. Call it in a loop until
-- it returns less than the batch. Callers: service_role, the owner.
-- Errors: 22023 bad batch size.
create or replace function pgshield.teams_cleanup(p_batch_size integer default 10000) returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
  v_retention interval;
  v_invitations integer;
  v_audit integer;
begin
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023', message = 'p_batch_size must be a positive integer';
  end if;
  select s.audit_retention into v_retention from pgshield.teams_settings s where s.id;
  delete from pgshield.team_invitations i
   using (select x.id from pgshield.team_invitations x
           where x.expires_at <= v_now or x.accepted_at is not null or x.revoked_at is not null
           limit p_batch_size for update skip locked) d
   where i.id = d.id;
  get diagnostics v_invitations = row_count;
  delete from pgshield.team_audit a
   using (select x.id from pgshield.team_audit x
           where x.at < v_now - coalesce(v_retention, interval '180 days')
           order by x.at limit p_batch_size for update skip locked) d
   where a.id = d.id;
  get diagnostics v_audit = row_count;
  return v_invitations + v_audit;
end
$$;

revoke all on function pgshield.teams_cleanup(integer) from public, anon, authenticated, service_role;
grant execute on function pgshield.teams_cleanup(integer) to service_role;

-- One row of counts for the status view. Callers: the owner, service_role
-- (through the view). Errors: none.
create or replace function pgshield.teams_status_row()
returns table (
  teams bigint, memberships bigint, teams_without_owner bigint, pending_invitations bigint,
  audit_rows bigint, denied_last_day bigint, audit_retention interval
)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
begin
  return query
  select (select count(*) from pgshield.teams),
         (select count(*) from pgshield.team_members),
         (select count(*) from pgshield.teams t
           where not exists (select 1 from pgshield.team_members m where m.team_id = t.id and m.role = 'owner')),
         (select count(*) from pgshield.team_invitations i
           where i.accepted_at is null and i.revoked_at is null and i.expires_at > v_now),
         (select count(*) from pgshield.team_audit),
         (select count(*) from pgshield.team_audit a where a.outcome = 'denied' and a.at > v_now - interval '1 day'),
         (select s.audit_retention from pgshield.teams_settings s where s.id);
end
$$;

revoke all on function pgshield.teams_status_row() from public, anon, authenticated, service_role;
grant execute on function pgshield.teams_status_row() to service_role;

-- Counts for dashboards; teams_without_owner is always 0.
create or replace view pgshield.teams_status as
select s.teams, s.memberships, s.teams_without_owner, s.pending_invitations, s.audit_rows,
       s.denied_last_day, s.audit_retention
  from pgshield.teams_status_row() s;
comment on view pgshield.teams_status is
  'Teams, memberships, teams without an owner (always 0), pending invitations, audit rows, refusals in the last day.';
revoke all on table pgshield.teams_status from public, anon, authenticated, service_role;
grant select on table pgshield.teams_status to service_role;

-- ------------------------------------------------------------------ seeds ----
-- The default permissions of each role; edit them with
-- pgshield.set_team_role_permissions (existing rows are left as they are).

insert into pgshield.team_role_permissions (role, permission)
values ('owner', 'read'), ('owner', 'write'), ('owner', 'delete'), ('owner', 'admin'),
       ('admin', 'read'), ('admin', 'write'), ('admin', 'delete'), ('admin', 'admin'),
       ('member', 'read'), ('member', 'write'),
       ('viewer', 'read')
on conflict do nothing;

insert into pgshield.teams_settings (id) values (true) on conflict (id) do nothing;

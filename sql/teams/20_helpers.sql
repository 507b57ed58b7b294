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
-- an owner. Locks the team by writing it (an update of revision, as
-- team_guard does: the entry points hold that lock already; a cascade from
-- auth.users takes it here), then counts owners, so two owners demoting each
-- other, leaving or being deleted at once cannot both succeed: under READ
-- COMMITTED the count's snapshot is taken after the lock; under REPEATABLE
-- READ a transaction whose snapshot misses a change committed meanwhile
-- fails with 40001 at the update (a plain FOR UPDATE would not: a cascade
-- that only locked the team would leave no newer version to conflict with).
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
  update pgshield.teams t set revision = t.revision + 1 where t.id = old.team_id returning t.slug into v_slug;
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

-- teams: what one signed-in user can create is bounded, and a stranger's
-- call on a team takes no lock on it.
-- * teams_settings.max_teams_per_user (100): an authenticated user may have
--   created at most that many existing teams (created_by; service_role is
--   not limited); the count runs under a per-user advisory lock, so
--   concurrent creations cannot pass it. Refused with PT409 (audited).
-- * teams_settings.max_open_invitations_per_team (1000): open invitations
--   of a team (not accepted, revoked or expired), counted under the team's
--   row lock. Refused with PT409.
-- * set_teams_limits(p_max_teams_per_user, p_max_open_invitations_per_team).
-- * team_guard: a signed-in caller who is not a member is refused (PT404)
--   before the team row is locked and rewritten.
-- * the index teams_created_by_idx for the count.

-- The limits are integers checked to a range.
-- squawk-ignore-file prefer-bigint-over-int

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

alter table pgshield.teams_settings
  add column if not exists max_teams_per_user integer not null default 100
    constraint teams_settings_max_teams_per_user_check check (max_teams_per_user between 1 and 1000000),
  add column if not exists max_open_invitations_per_team integer not null default 1000
    constraint teams_settings_max_open_invitations_check
    check (max_open_invitations_per_team between 1 and 1000000);
comment on table pgshield.teams_settings is
  'How long teams_cleanup() keeps audit rows, and how much one signed-in user may create. Edit with pgshield.set_teams_audit_retention() and pgshield.set_teams_limits().';

-- A signed-in user's creations are counted by created_by (pgshield.set_teams_limits).
-- squawk-ignore require-concurrent-index-creation
create index if not exists teams_created_by_idx on pgshield.teams (created_by);

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
  insert into pgshield.team_members (team_id, user_id, role, granted_by, created_at, updated_at)
  values (v_team.id, v_owner, 'owner', v_actor, v_now, v_now);
  perform pgshield.team_audit_write(v_team.id, 'create_team', 'ok', v_owner, null, null,
                                    jsonb_build_object('slug', v_slug, 'name', v_name));
  return pgshield.team_json(v_team);
end
$$;

revoke all on function pgshield.team_create(text, text, uuid, text) from public, anon, authenticated, service_role;

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
  if v_expires_in not between interval '1 minute' and interval '90 days' then
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


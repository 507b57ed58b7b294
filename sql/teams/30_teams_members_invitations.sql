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
    -- One creation at a time per user, so that the count below is exact:
    -- each writes the user's team_creators row first (under REPEATABLE READ,
    -- 40001 when another creation committed after this snapshot was taken).
    -- The user's auth.users row is locked (key share) before it, in the order
    -- an account deletion takes them (the user, then this row by its cascade):
    -- a creation racing its user's deletion waits, then fails with 23503,
    -- never deadlocks.
    perform 1 from auth.users u where u.id = v_actor for key share;
    insert into pgshield.team_creators as c (user_id, creations) values (v_actor, 1)
    on conflict (user_id) do update set creations = c.creations + 1;
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
  v_now := greatest(v_now, pgshield.now());  -- dated once the team is locked
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
  v_now := greatest(v_now, pgshield.now());  -- dated once the team is locked
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
  -- days and a year as 360, so '100 years -35910 days' compared as 90 days
  -- (and one past the timestamp range is refused here, not with 22008).
  if pgshield.time_moved(v_now, v_expires_in, false)
       between v_now + interval '1 minute' and v_now + interval '90 days' is not true then
    raise exception using errcode = '22023', message = 'p_expires_in must be between 1 minute and 90 days';
  end if;
  select * into v_guard from pgshield.team_guard(p_team_id, v_actor, 'admin', true);
  -- The time once the team is locked (the lock may have been waited for): the
  -- open invitations are counted, and this one dated, then, never before.
  v_now := greatest(v_now, pgshield.now());
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

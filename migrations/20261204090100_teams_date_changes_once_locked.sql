-- teams: changes are dated, and invitations counted, at the time the team's
-- lock was got.
-- team_create_invitation read the clock before it waited for the team's row
-- lock and used that time to count the team's open invitations and to date
-- the new one: after a long wait it could refuse at the limit although every
-- counted invitation had expired meanwhile, or create an invitation already
-- expired. It reads the clock again once it holds the lock (never earlier
-- than the first read), as accept_team_invitation does; add_team_member and
-- transfer_team_ownership date their changes the same way.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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

-- teams: members join by their own act before the team may use their
-- address or their ownership.
-- An admin can no longer learn any user's email by adding their id.
-- Any signed-in user becomes an admin by creating a team, and
-- add_team_member's answer and list_team_members showed the added user's
-- auth.users.email. team_members.joined_via records how a member joined
-- ('created', 'invitation', 'service': by a trusted caller, 'added': by a team
-- admin, unasked); the email of an 'added' member is shown only to that member
-- and to trusted callers. Existing rows: the team's creator 'created', an
-- accepted invitation 'invitation', no granter 'service', else 'added'.
-- Nobody is made owner unasked: an owner cannot be deleted from auth while
-- they are a team's last owner, so a user who made a stranger owner and left
-- could block that account's deletion (a hundred times per account). A user
-- no longer adds an owner directly, nor promotes or transfers to a member
-- added unasked; owners join by invitation (accepting one also turns an
-- unasked member into one who agreed). Trusted callers are unchanged.
-- Owners made unasked before this migration keep their role (demoting them
-- could take a team from its rightful co-owner); the backfill below errs
-- toward 'added', so in doubt they cannot hand the team on either.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

alter table pgshield.team_members add column if not exists joined_via text not null default 'added'
  constraint team_members_joined_via_check check (joined_via in ('created', 'invitation', 'service', 'added'));

-- Existing rows, by what made this membership (not an earlier one of the same
-- user): the team's creation (same user and instant), an invitation accepted
-- at the instant the row was made, or an add by a trusted caller (no granter
-- and never changed since, or the add's audit row names no actor). Anything
-- else stays 'added': in doubt, the email is hidden.
update pgshield.team_members m
   set joined_via = case
         when exists (select 1 from pgshield.teams t
                       where t.id = m.team_id and t.created_by = m.user_id and t.created_at = m.created_at)
           then 'created'
         when exists (select 1 from pgshield.team_invitations i
                       where i.team_id = m.team_id and i.accepted_by = m.user_id
                         and i.accepted_at = m.created_at)
           then 'invitation'
         when m.granted_by is null and m.updated_at = m.created_at then 'service'
         when (select a.actor_id is null from pgshield.team_audit a
                where a.team_id = m.team_id and a.target_user_id = m.user_id
                  and a.action = 'add_member' and a.outcome = 'ok'
                  and a.at >= m.created_at and a.at < m.created_at + interval '1 minute'
                order by a.at, a.id limit 1)
           then 'service'
         else 'added' end
 where m.joined_via = 'added';

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

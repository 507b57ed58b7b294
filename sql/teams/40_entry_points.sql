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

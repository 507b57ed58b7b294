-- teams: what a hostile member or a stale token can no longer do.
-- * create_team_invitation checks p_expires_in on the clock: comparing
--   intervals counts a month as 30 days and a year as 360, so
--   '100 years -35910 days' passed as 90 days and made an invitation valid
--   for 614 days.
-- * team_actor refuses (42501, answered and audited) a JWT whose user was
--   deleted; accepting an invitation with one raised a bare 23503 and wrote
--   no audit row.
-- * teams_call keeps only the arguments the operation takes: a direct call
--   could plant a team, a target and a 1,000-character note in a denied
--   audit row of the caller's own team.
-- * team names refuse invisible format characters (a name of a zero-width
--   space looked blank, bidirectional overrides reorder it), emails control
--   and format characters (terminal escapes reached the CLI).
-- * list_my_teams shows a team where the user lacks read (after
--   set_team_role_permissions) as id, slug, name and timestamps only, as
--   get_team refuses the rest (billing_email was shown).

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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

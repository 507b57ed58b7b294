-- rate limit and guard: a Supabase anonymous sign-in no longer gets a quota
-- of its own per sign-in. Anonymous sign-ins (JWT claim is_anonymous true,
-- role authenticated) each get a new user id, and a client can sign in again
-- whenever a quota is used up (Supabase Auth only limits anonymous sign-ins
-- per IP address per hour, to a number the project sets): keyed by user id,
-- every per-user limit was that many times wider. They are now limited as
-- anonymous callers, by client address ('anon:<address>'), in
-- check_rate_limit, the Data API guard and get_rate_limit_usage alike;
-- pgshield.set_anonymous_users('user') keys them by user id as before. Other
-- signed-in users are unchanged.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

alter table pgshield.client_address_source add column if not exists anonymous_users text not null default 'address'
  constraint client_address_source_anonymous_users_check check (anonymous_users in ('address', 'user'));

-- The current client address source as JSON.
-- Callers: service_role, the owner. Errors: 42501 others.
create or replace function pgshield.client_address_source() returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may read the client address source';
  end if;
  return (select jsonb_build_object('header', s.header, 'trusted_hops', s.trusted_hops,
                                    'ipv4_prefix', s.ipv4_prefix, 'ipv6_prefix', s.ipv6_prefix,
                                    'anonymous_users', s.anonymous_users, 'updated_at', s.updated_at)
            from pgshield.client_address_source s where s.id);
end
$$;

revoke all on function pgshield.client_address_source() from public, anon, authenticated, service_role;
grant execute on function pgshield.client_address_source() to service_role;

-- The subject of a Supabase anonymous sign-in: 'anon:<client address>' (or
-- 'anon:unknown'), the key of anonymous callers, or null when the project
-- keys them by user (set_anonymous_users('user')).
-- Callers: pack functions (runs as the owner). Errors: none.
create or replace function pgshield.anonymous_user_subject() returns text
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if (select s.anonymous_users from pgshield.client_address_source s where s.id) = 'user' then
    return null;
  end if;
  return 'anon:' || coalesce(pgshield.client_address(), 'unknown');
end
$$;

revoke all on function pgshield.anonymous_user_subject() from public, anon, authenticated, service_role;

-- How Supabase anonymous sign-ins are limited: p_keyed_by 'address' (the
-- default: as anonymous callers, by client address) or 'user' (each by its
-- user id: a client then gets a fresh quota with every sign-in). Returns the
-- client address source.
-- Callers: service_role, the owner. Errors: 22023 bad mode; 42501 others.
create or replace function pgshield.set_anonymous_users(p_keyed_by text) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may set how anonymous users are limited';
  end if;
  if p_keyed_by is null or p_keyed_by not in ('address', 'user') then
    raise exception using errcode = '22023', message = 'p_keyed_by must be address or user',
      hint = 'address: as anonymous callers, by client address; user: each sign-in by its user id';
  end if;
  update pgshield.client_address_source s set anonymous_users = p_keyed_by, updated_at = now() where s.id;
  return pgshield.client_address_source();
end
$$;

revoke all on function pgshield.set_anonymous_users(text) from public, anon, authenticated, service_role;
grant execute on function pgshield.set_anonymous_users(text) to service_role;

-- The rate limit subject of a signed-in caller, from the JWT's sub as
-- PostgREST sets it (request.jwt.claim.sub, else request.jwt.claims ->>
-- 'sub'): a sub that is a UUID (a Supabase Auth user id) as auth.uid()::text
-- gives it (the uuid cast's canonical text); any other sub (a third-party
-- auth provider's: Clerk, Firebase, Auth0, Cognito), where auth.uid() fails
-- with 22P02, as 'sub:' || sub, or 'subh:' || md5(sub) past 200
-- characters; null without a sub. A Supabase anonymous sign-in (claim
-- is_anonymous true) is keyed as an anonymous caller, 'anon:<address>'
-- (pgshield.anonymous_user_subject()), unless set_anonymous_users('user'):
-- each sign-in is a new user id, and a client may sign in as often as Auth
-- lets it.
-- rate_limit_check and request_guard_decide compute the same inline (a call
-- costs more than the block in a request's transaction; the uuid cast in an
-- exception block costs about 15k instructions per request, a regular
-- expression test about 50k).
-- Callers: pack functions. Errors: none.
create or replace function pgshield.caller_subject() returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_claims jsonb := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
  v_sub text := nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''), v_claims ->> 'sub'), '');
  v_anon text;
begin
  if v_claims ->> 'is_anonymous' = 'true' then
    -- A Supabase anonymous sign-in: keyed by its address unless the project
    -- chose otherwise (pgshield.set_anonymous_users).
    v_anon := pgshield.anonymous_user_subject();
    if v_anon is not null then
      return v_anon;
    end if;
  end if;
  return v_sub::uuid::text;
exception when invalid_text_representation then
  return case when length(v_sub) <= 200 then 'sub:' || v_sub else 'subh:' || md5(v_sub) end;
end
$$;

revoke all on function pgshield.caller_subject() from public, anon, authenticated, service_role;

-- A policy call for the current caller: the policy, then the subject (which
-- refuses callers that may not use the policy), then the cost, so a caller
-- that may not use a policy learns nothing about its endpoints either. With
-- p_peek nothing is consumed or counted. The logic behind check_rate_limit
-- and peek_check_rate_limit, which run as the invoker in public.
-- authenticated and service_role callers without an endpoint take a path
-- with no nested calls (the same checks in the same order, written out);
-- everything else goes through rate_limit_policy, rate_limit_subject and
-- rate_limit_cost.
-- Callers: anon, authenticated, service_role (through those entry points).
-- Errors: 22023 unknown policy or endpoint, bad cost or subject; 42501 not allowed.
create or replace function pgshield.rate_limit_check(
  p_policy text, p_cost integer, p_endpoint text, p_subject text, p_peek boolean
) returns public.rate_limit_check_result
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role text := current_setting('role');
  v_policy pgshield.rate_limit_policies;
  v_sub text;
  v_claims jsonb;
begin
  if p_endpoint is null and v_role in ('authenticated', 'service_role') then
    select * into v_policy from pgshield.rate_limit_policies p where p.name = p_policy;
    if v_policy.name is null then
      perform pgshield.rate_limit_policy(p_policy);  -- raises its 22023
    end if;
    if p_subject is not null and length(p_subject) not between 1 and 256 then
      raise exception using errcode = '22023', message = 'p_subject must be 1 to 256 characters';
    end if;
    if v_role = 'authenticated' then
      -- pgshield.caller_subject(), inline.
      v_claims := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
      v_sub := nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''), v_claims ->> 'sub'), '');
      begin
        v_sub := v_sub::uuid::text;
      exception when invalid_text_representation then
        v_sub := case when length(v_sub) <= 200 then 'sub:' || v_sub else 'subh:' || md5(v_sub) end;
      end;
      if v_claims ->> 'is_anonymous' = 'true' then  -- a Supabase anonymous sign-in
        v_sub := coalesce(pgshield.anonymous_user_subject(), v_sub);
      end if;
      if v_sub is null then
        raise exception using errcode = '42501', message = 'no user id (sub) in the JWT';
      end if;
      if p_subject is not null and p_subject <> v_sub then
        raise exception using errcode = '42501',
          message = 'p_subject is only honoured for service_role',
          hint = 'authenticated callers are always limited as themselves: omit p_subject';
      end if;
      p_subject := v_sub;
    elsif p_subject is null then
      raise exception using errcode = '22023', message = 'p_subject is required for trusted callers',
        hint = 'pass the user id or API key to limit';
    end if;
    if p_cost is null or p_cost < 1 then
      raise exception using errcode = '22023', message = 'p_cost must be a positive integer';
    end if;
    return pgshield.rate_limit_decide(v_policy, p_subject, p_cost,
                                      case when p_peek then 'peek' else 'check' end);
  end if;
  v_policy := pgshield.rate_limit_policy(p_policy);
  return pgshield.rate_limit_decide(v_policy, pgshield.rate_limit_subject(v_policy, p_subject),
                                    pgshield.rate_limit_cost(p_policy, p_cost, p_endpoint),
                                    case when p_peek then 'peek' else 'check' end);
end
$$;

revoke all on function pgshield.rate_limit_check(text, integer, text, text, boolean)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.rate_limit_check(text, integer, text, text, boolean)
  to anon, authenticated, service_role;

-- The decision behind request_guard(): the first matching rule, the subject,
-- the rate limit decision, and the answer. The subject is the user id for
-- authenticated callers (pgshield.caller_subject(): a third-party auth
-- provider's sub as 'sub:<sub>'), the client address (pgshield.client_address(): the
-- configured header and trusted proxy hops, never the first x-forwarded-for
-- entry) for anon, 'service_role' for service_role. Read-only transactions
-- are checked, not counted (on a read replica with unlogged state: not
-- checked). Allowed: the rate limit headers are appended to
-- response.headers (what the project's hook set stays). Denied: SQLSTATE
-- PGRST, which PostgREST turns into HTTP 429 with the headers. The rule, its
-- policy and the options are one read.
-- Callers: request_guard (anon, authenticated, service_role).
-- Errors: PGRST (429) when the quota is used up.
create or replace function pgshield.request_guard_decide() returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role text := current_setting('role');
  v_method text := upper(coalesce(nullif(current_setting('request.method', true), ''), 'GET'));
  -- A GET rule covers HEAD too (the same read, without the body).
  v_read text := case when v_method = 'HEAD' then 'GET' else v_method end;
  -- PostgREST routes by the decoded path but sets request.path as sent.
  v_path text := case when strpos(current_setting('request.path', true), '%') > 0
                      then pgshield.guard_decoded_path(current_setting('request.path', true))
                      else coalesce(nullif(current_setting('request.path', true), ''), '/') end;
  v_rule record;
  v_policy pgshield.rate_limit_policies;
  v_subject text;
  v_claims jsonb;
  v_res public.rate_limit_check_result;
begin
  if v_role = 'none' then
    v_role := session_user;
  end if;
  select x.cost, p as policy,
         (select o.allowed_headers from pgshield.guard_options o where o.id) as allowed_headers
    into v_rule
    from (select r.cost, r.policy from pgshield.guard_rules r
           where (r.role = v_role or (r.role = '*' and v_role in ('anon', 'authenticated')))
             and r.method in ('*', v_method, v_read)
             and v_path like r.path_like
           order by r.position, r.id
           limit 1) x
    left join pgshield.rate_limit_policies p on p.name = x.policy;
  if not found or v_rule.policy is null then
    return;  -- no rule, or an exempt one
  end if;
  v_policy := v_rule.policy;
  -- Each branch is its own statement: only the one taken is prepared.
  if v_role = 'authenticated' then
    -- pgshield.caller_subject(), inline.
    v_claims := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
    v_subject := nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                                 v_claims ->> 'sub'), '');
    begin
      v_subject := v_subject::uuid::text;
    exception when invalid_text_representation then
      v_subject := case when length(v_subject) <= 200 then 'sub:' || v_subject
                        else 'subh:' || md5(v_subject) end;
    end;
    if v_claims ->> 'is_anonymous' = 'true' then  -- a Supabase anonymous sign-in
      v_subject := coalesce(pgshield.anonymous_user_subject(), v_subject);
    end if;
  elsif v_role <> 'anon' then
    v_subject := v_role;
  end if;
  if v_subject is null then  -- anon, or authenticated without a user id
    v_subject := 'anon:' || coalesce(pgshield.client_address(), 'unknown');
  end if;
  -- Allowed: the decision appends the rate limit headers (the IETF httpapi
  -- draft's RateLimit and RateLimit-Policy) to response.headers, unless the
  -- owner turned them off; what the project's hook set stays. Denied: its
  -- windows is the headers object (Retry-After too when a wait can help).
  if current_setting('transaction_read_only') = 'on' then
    -- A read (GET, HEAD) is checked, not counted. On a read replica (Supabase
    -- sends GETs there through its API load balancer) unlogged state cannot
    -- be read at all: the read passes unchecked rather than failing (0A000).
    -- With logged state (set_rate_limit_storage('logged')) the replica checks
    -- it against the replicated counts, a moment behind the primary's.
    if pg_is_in_recovery() then
      if (select c.relpersistence from pg_class c
           where c.oid = 'pgshield.rate_limit_policy_state'::regclass) = 'u' then
        return;
      end if;
    end if;
    v_res := pgshield.rate_limit_decide(v_policy, v_subject, v_rule.cost,
      case when coalesce(v_rule.allowed_headers, true) then 'guard_peek' else 'guard_silent_peek' end);
  else
    v_res := pgshield.rate_limit_decide(v_policy, v_subject, v_rule.cost,
      case when coalesce(v_rule.allowed_headers, true) then 'guard' else 'guard_silent' end);
  end if;
  if v_res is null or v_res.allowed then  -- null: allowed (the decision builds no result)
    return;
  end if;
  -- PostgREST's form: a JSON message (the body) and a JSON detail (status
  -- and headers), written as text (no jsonb built only to be printed).
  raise sqlstate 'PGRST' using
    message = format('{"code": "PT429", "message": "Too many requests", "details": %s, "hint": %s}',
      to_json(format('rate limit %s exceeded (%s)', v_policy.name, array_to_string(v_res.violated, ', '))),
      to_json(case when v_res.retry_after_ms > 0 then format('retry after %s ms', v_res.retry_after_ms)
                   else 'this request can never fit the limit' end)),
    detail = format('{"status": 429, "headers": %s}', v_res.windows);
end
$$;

revoke all on function pgshield.request_guard_decide() from public, anon, authenticated, service_role;
grant execute on function pgshield.request_guard_decide() to anon, authenticated, service_role;

-- rate_limit and guard: a signed-in caller whose JWT sub is not a UUID is
-- limited as 'sub:<sub>' instead of failing.
-- Supabase's third-party auth (Clerk, Firebase, Auth0, Cognito) issues
-- authenticated tokens whose sub is the provider's user id; auth.uid() casts
-- sub to uuid and failed with 22P02 (HTTP 400) on every guarded request and
-- every check_rate_limit call. pgshield.caller_subject() gives the subject: a
-- UUID sub as auth.uid()::text (so existing state keeps its keys), any
-- other as 'sub:' || sub ('subh:' || md5(sub) past 200 characters).
-- rate_limit_check and request_guard_decide compute it inline;
-- rate_limit_subject and rate_limit_usage_of call it.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- The rate limit subject of a signed-in caller, from the JWT's sub as
-- PostgREST sets it (request.jwt.claim.sub, else request.jwt.claims ->>
-- 'sub'): a sub that is a UUID (a Supabase Auth user id) as auth.uid()::text
-- gives it (the uuid cast's canonical text); any other sub (a third-party
-- auth provider's: Clerk, Firebase, Auth0, Cognito), where auth.uid() fails
-- with 22P02, as 'sub:' || sub, or 'subh:' || md5(sub) past 200
-- characters; null without a sub.
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
  v_sub text := nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                                nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'), '');
begin
  return v_sub::uuid::text;
exception when invalid_text_representation then
  return case when length(v_sub) <= 200 then 'sub:' || v_sub else 'subh:' || md5(v_sub) end;
end
$$;

revoke all on function pgshield.caller_subject() from public, anon, authenticated, service_role;

-- The subject a policy call acts on, from the caller's role:
--   trusted (service_role, owner): p_subject, which is then required;
--   authenticated: pgshield.caller_subject() (the user id; a third-party
--   provider's sub as 'sub:<sub>'), p_subject must be null or the same;
--   anon: "anon:<client address>" when the policy allows anonymous callers,
--   the address from pgshield.client_address() (the configured header and
--   trusted proxy hops; IPv6 grouped by prefix), "anon:unknown" without one.
-- anon and authenticated are never trusted, so caller_is_trusted() is only
-- asked about other roles.
-- Callers: pack functions. Errors: 22023 missing or bad subject, 42501 not allowed.
create or replace function pgshield.rate_limit_subject(
  p_policy pgshield.rate_limit_policies, p_subject text
) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role name := pgshield.caller_role();
  v_sub text;
begin
  if p_subject is not null and length(p_subject) not between 1 and 256 then
    raise exception using errcode = '22023', message = 'p_subject must be 1 to 256 characters';
  end if;
  if v_role = 'authenticated' then
    v_sub := pgshield.caller_subject();
    if v_sub is null then
      raise exception using errcode = '42501', message = 'no user id (sub) in the JWT';
    end if;
    if p_subject is not null and p_subject <> v_sub then
      raise exception using errcode = '42501',
        message = 'p_subject is only honoured for service_role',
        hint = 'authenticated callers are always limited as themselves: omit p_subject';
    end if;
    return v_sub;
  end if;
  if v_role = 'anon' then
    if not p_policy.allow_anonymous then
      raise exception using errcode = '42501',
        message = 'this policy is not available to anonymous callers',
        hint = 'sign in, or use a policy defined with p_allow_anonymous => true';
    end if;
    if p_subject is not null then
      raise exception using errcode = '42501', message = 'p_subject is only honoured for service_role';
    end if;
    return 'anon:' || coalesce(pgshield.client_address(), 'unknown');
  end if;
  if v_role = 'service_role' or pgshield.caller_is_trusted() then
    if p_subject is null then
      raise exception using errcode = '22023', message = 'p_subject is required for trusted callers',
        hint = 'pass the user id or API key to limit';
    end if;
    return p_subject;
  end if;
  raise exception using errcode = '42501', message = format('role %s may not check rate limits', v_role);
end
$$;

revoke all on function pgshield.rate_limit_subject(pgshield.rate_limit_policies, text)
  from public, anon, authenticated, service_role;

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
      v_sub := nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                               nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'), '');
      begin
        v_sub := v_sub::uuid::text;
      exception when invalid_text_representation then
        v_sub := case when length(v_sub) <= 200 then 'sub:' || v_sub else 'subh:' || md5(v_sub) end;
      end;
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

-- A subject's current usage as a JSON array (one object per policy window).
-- Reads only that subject's rows (the primary key starts with the subject),
-- so its cost does not grow with other subjects' state.
-- Callers: authenticated (own usage only: p_subject null or their subject,
-- pgshield.caller_subject()), service_role (p_subject required), through
-- public.get_rate_limit_usage.
-- Errors: 22023 bad subject or unknown policy; 42501 another user's usage.
create or replace function pgshield.rate_limit_usage_of(p_subject text, p_policy text)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_subject text := p_subject;
  v_now timestamptz := pgshield.now();
  v_now_us bigint := (extract(epoch from v_now) * 1000000)::bigint;
begin
  if p_subject is not null and length(p_subject) not between 1 and 256 then
    raise exception using errcode = '22023', message = 'p_subject must be 1 to 256 characters';
  end if;
  if not pgshield.caller_is_trusted() then
    v_subject := pgshield.caller_subject();
    if v_subject is null or (p_subject is not null and p_subject <> v_subject) then
      raise exception using errcode = '42501', message = 'only your own usage can be read',
        hint = 'omit p_subject';
    end if;
  elsif v_subject is null then
    raise exception using errcode = '22023', message = 'p_subject is required for trusted callers';
  end if;
  if p_policy is not null then
    perform pgshield.rate_limit_policy(p_policy);
  end if;
  return coalesce((
    select jsonb_agg(jsonb_build_object(
             'policy', s.policy, 'window_seconds', s.window_seconds, 'name',
             coalesce(w.name, pgshield.rate_limit_window_name(s.window_seconds)),
             'limit', s.limit_value, 'used', e.used, 'remaining', e.remaining, 'reset_at', e.reset_at)
             order by s.policy, s.window_seconds)
      from pgshield.rate_limit_policy_state_windows s
     cross join lateral pgshield.rate_limit_evaluate(s.algorithm, s.limit_value, s.window_seconds, 0,
              v_now_us, s.algorithm, s.window_start, s.count, s.prev_count, s.tat, true) e
      left join lateral (
        select w.name from pgshield.rate_limit_policy_windows w
         where w.policy = s.policy and w.window_seconds = s.window_seconds limit 1
      ) w on true
     where s.key = v_subject
       and (p_policy is null or s.policy = p_policy)
       and s.expires_at > v_now
  ), '[]'::jsonb);
end
$$;

revoke all on function pgshield.rate_limit_usage_of(text, text) from public, anon, authenticated, service_role;
grant execute on function pgshield.rate_limit_usage_of(text, text) to authenticated, service_role;

-- The decision behind request_guard(): the first matching rule, the subject,
-- the rate limit decision, and the answer. The subject is the user id for
-- authenticated callers (pgshield.caller_subject(): a third-party auth
-- provider's sub as 'sub:<sub>'), the client address (pgshield.client_address(): the
-- configured header and trusted proxy hops, never the first x-forwarded-for
-- entry) for anon, 'service_role' for service_role. Read-only transactions
-- are checked, not counted. Allowed: the rate limit headers are appended to
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
    v_subject := nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                                 nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'), '');
    begin
      v_subject := v_subject::uuid::text;
    exception when invalid_text_representation then
      v_subject := case when length(v_subject) <= 200 then 'sub:' || v_subject
                        else 'subh:' || md5(v_subject) end;
    end;
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
  v_res := pgshield.rate_limit_decide(v_policy, v_subject, v_rule.cost,
    case when coalesce(v_rule.allowed_headers, true) then 'guard' else 'guard_silent' end
    || case when current_setting('transaction_read_only') = 'on' then '_peek' else '' end);
  if v_res.allowed then
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


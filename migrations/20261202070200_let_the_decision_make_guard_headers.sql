-- guard: the decision makes the rate limit headers (rate_limit_decide's
-- 'guard' modes, 20261202070000) instead of the guard reading them back out
-- of the windows JSON.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- The decision behind request_guard(): the first matching rule, the subject,
-- the rate limit decision, and the answer. The subject is auth.uid() for
-- authenticated callers, the client address (pgshield.client_address(): the
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
  v_path text := coalesce(nullif(current_setting('request.path', true), ''), '/');
  v_rule record;
  v_policy pgshield.rate_limit_policies;
  v_subject text;
  v_res public.rate_limit_check_result;
  v_headers jsonb;
  v_sent jsonb;
begin
  if v_role = 'none' then
    v_role := session_user;
  end if;
  select r.cost, p as policy, o.allowed_headers into v_rule
    from pgshield.guard_rules r
    left join pgshield.rate_limit_policies p on p.name = r.policy
    left join pgshield.guard_options o on o.id
   where (r.role = v_role or (r.role = '*' and v_role in ('anon', 'authenticated')))
     and (r.method = '*' or r.method = v_method)
     and v_path like r.path_like
   order by r.position, r.id
   limit 1;
  if not found or v_rule.policy is null then
    return;  -- no rule, or an exempt one
  end if;
  v_policy := v_rule.policy;
  v_subject := case v_role
    when 'authenticated' then coalesce(auth.uid()::text, 'anon:' || coalesce(pgshield.client_address(), 'unknown'))
    when 'anon' then 'anon:' || coalesce(pgshield.client_address(), 'unknown')
    else v_role
  end;
  v_res := pgshield.rate_limit_decide(v_policy, v_subject, v_rule.cost,
    case when current_setting('transaction_read_only') = 'on' then 'guard_peek' else 'guard' end);
  if v_res.allowed and not coalesce(v_rule.allowed_headers, true) then
    return;
  end if;
  -- The rate limit headers (the IETF httpapi draft's RateLimit-Policy and
  -- RateLimit, and Retry-After on a denial that can succeed later) as one
  -- JSON object of header name -> value, made by the decision itself.
  v_headers := v_res.windows;
  if v_res.allowed then
    v_sent := nullif(current_setting('response.headers', true), '')::jsonb;
    if v_sent is null then
      -- Nothing sent yet: the text jsonb would print, without building it.
      perform set_config('response.headers', format('[{"RateLimit": %s}, {"RateLimit-Policy": %s}]',
        v_headers -> 'RateLimit', v_headers -> 'RateLimit-Policy'), true);
      return;
    end if;
    perform set_config('response.headers',
      (case when jsonb_typeof(v_sent) = 'array' then v_sent else '[]'::jsonb end
       || jsonb_build_array(jsonb_build_object('RateLimit', v_headers -> 'RateLimit'),
                            jsonb_build_object('RateLimit-Policy', v_headers -> 'RateLimit-Policy')))::text,
      true);
    return;
  end if;
  raise sqlstate 'PGRST' using
    message = jsonb_build_object(
      'code', 'PT429',
      'message', 'Too many requests',
      'details', format('rate limit %s exceeded (%s)', v_policy.name, array_to_string(v_res.violated, ', ')),
      'hint', case when v_res.retry_after_ms > 0
                   then format('retry after %s ms', v_res.retry_after_ms)
                   else 'this request can never fit the limit' end)::text,
    detail = jsonb_build_object('status', 429, 'headers', v_headers)::text;
end
$$;


revoke all on function pgshield.request_guard_decide() from public, anon, authenticated, service_role;
grant execute on function pgshield.request_guard_decide() to anon, authenticated, service_role;

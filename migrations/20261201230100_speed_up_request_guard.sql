-- pgshield 0.2.0: the Data API guard in fewer statements (issue 13).
--
-- request_guard_decide reads the matching rule, its policy and the guard
-- options in one statement and reads the role setting itself; guard_headers
-- is one statement over the windows instead of three. Rules, answers,
-- headers and their order are unchanged.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- The rate limit headers of a policy decision, as one JSON object of header
-- name -> value (the IETF httpapi draft's RateLimit-Policy and RateLimit, and
-- Retry-After on a denial that can succeed later). One statement over the
-- windows (PL/pgSQL keeps its plan; a SQL function would plan it every call).
-- Callers: pack functions. Errors: none.
create or replace function pgshield.guard_headers(p_res public.rate_limit_check_result, p_now timestamptz)
returns jsonb
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_headers jsonb;
begin
  select jsonb_build_object(
           'RateLimit-Policy',
           string_agg(format('"%s-%s";q=%s;w=%s%s', p_res.policy, w ->> 'name', w ->> 'limit',
                             w ->> 'window_seconds',
                             case when p_res.unit = 'requests' then ';qu="requests"' else '' end), ', '),
           'RateLimit',
           format('"%s-%s";r=%s;t=%s', p_res.policy,
                  coalesce((array_agg(w ->> 'name')
                              filter (where (w ->> 'limit')::integer = p_res."limit"
                                        and (w ->> 'reset_at')::timestamptz = p_res.reset_at))[1],
                           (array_agg(w ->> 'name'))[1]),
                  p_res.remaining,
                  greatest(ceil(extract(epoch from p_res.reset_at - p_now)), 0)::bigint))
         || case when not p_res.allowed and p_res.retry_after_ms > 0
                 then jsonb_build_object('Retry-After', ceil(p_res.retry_after_ms / 1000.0)::bigint::text)
                 else '{}'::jsonb end
    into v_headers
    from jsonb_array_elements(p_res.windows) w;
  return v_headers;
end
$$;

revoke all on function pgshield.guard_headers(public.rate_limit_check_result, timestamptz)
  from public, anon, authenticated, service_role;

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
    case when current_setting('transaction_read_only') = 'on' then 'peek' else 'check' end);
  if v_res.allowed then
    if not coalesce(v_rule.allowed_headers, true) then
      return;
    end if;
    v_headers := pgshield.guard_headers(v_res, pgshield.now());
    v_sent := nullif(current_setting('response.headers', true), '')::jsonb;
    perform set_config('response.headers',
      (case when jsonb_typeof(v_sent) = 'array' then v_sent else '[]'::jsonb end
       || jsonb_build_array(jsonb_build_object('RateLimit', v_headers -> 'RateLimit'),
                            jsonb_build_object('RateLimit-Policy', v_headers -> 'RateLimit-Policy')))::text,
      true);
    return;
  end if;
  v_headers := pgshield.guard_headers(v_res, pgshield.now());
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

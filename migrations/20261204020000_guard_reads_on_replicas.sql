-- guard: a read on a read replica no longer fails. Supabase's API load
-- balancer sends GET requests to read replicas, where the guard's check of a
-- read read the unlogged policy state and failed every guarded GET and HEAD
-- with 0A000 ("cannot access temporary or unlogged relations during
-- recovery"). There, with unlogged state, a read passes unchecked; with
-- logged state (set_rate_limit_storage('logged')) it is checked against the
-- replicated counts. On the primary nothing changes.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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

-- guard: a request target sent without its leading '/' is matched as
-- PostgREST routes it.
-- PostgREST's HTTP server accepts "POST todos HTTP/1.1": request.path is then
-- 'todos', which PostgREST routes as table todos (rpc/f as function f), but
-- which no rule path (they start with '/') matched, so such requests were
-- never counted. A path that does not start with '/' or holds a '%' now goes
-- through guard_decoded_path, which adds the missing '/' after decoding (a
-- missing or empty path is '/', as before); the common path is taken as it
-- is after one test. (Hosted Supabase's gateway refuses such targets;
-- PostgREST reached without a proxy that does took them.)

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- request.path as PostgREST routes it: the first 1,000 characters with their
-- %XX escapes of ASCII characters (but NUL) decoded, then the rest as sent
-- (no rule path is that long), with a leading '/' when it has none (a target
-- sent without it, an empty or missing path). Other escapes stay as they
-- are: no rule can name a character outside [A-Za-z0-9_./-].
-- Callers: request_guard_decide. Errors: none.
create or replace function pgshield.guard_decoded_path(p_path text) returns text
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case when left(d.p, 1) = '/' then d.p else '/' || d.p end
    from (select coalesce(string_agg(case when r.m[1] is not null
                                          then chr(get_byte(decode(r.m[1], 'hex'), 0))
                                          else r.m[2] end, '' order by r.n), '')
                 || coalesce(substr(p_path, 1001), '') as p
            from regexp_matches(left(coalesce(p_path, ''), 1000),
                                '%(0[1-9A-Fa-f]|[1-7][0-9A-Fa-f])|(%|[^%]+)', 'g')
                 with ordinality r(m, n)) d
$$;

revoke all on function pgshield.guard_decoded_path(text) from public, anon, authenticated, service_role;

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
  -- PostgREST routes by the decoded path but sets request.path as sent; a
  -- target sent without its leading '/' (its server takes "POST todos") is
  -- routed as if it had one, so it is matched with one. The common path (a
  -- '/' and no '%') is taken as it is, with one test.
  v_path text := case when current_setting('request.path', true) ~ '^/[^%]*$'
                      then current_setting('request.path', true)
                      else pgshield.guard_decoded_path(current_setting('request.path', true)) end;
  v_rule record;
  v_policy pgshield.rate_limit_policies;
  v_subject text;
  v_claims jsonb;
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
  -- owner turned them off; what the project's hook set stays. Denied: it
  -- raises SQLSTATE PGRST with the 429 and its headers (Retry-After too when
  -- a wait can help).
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
    -- In the guard's modes the decision is null when allowed and raises the
    -- 429 when denied. (A test of an expression, not PERFORM: no query.)
    if pgshield.rate_limit_decide(v_policy, v_subject, v_rule.cost,
         case when coalesce(v_rule.allowed_headers, true) then 'guard_peek' else 'guard_silent_peek' end) is null then
      return;
    end if;
  elsif pgshield.rate_limit_decide(v_policy, v_subject, v_rule.cost,
          case when coalesce(v_rule.allowed_headers, true) then 'guard' else 'guard_silent' end) is null then
    return;
  end if;
end
$$;

revoke all on function pgshield.request_guard_decide() from public, anon, authenticated, service_role;
grant execute on function pgshield.request_guard_decide() to anon, authenticated, service_role;

-- guard: what a client sends buys no way past a rule or into another bucket.
-- * request.path is matched with its %XX escapes decoded, as PostgREST routes
--   it (it sets request.path as sent: /%74odos reached table todos past a
--   /todos rule): pgshield.guard_decoded_path().
-- * a GET rule also matches HEAD (the same read).
-- * client_address: a header longer than 4,096 characters is cut on the left
--   (where a client pads it) instead of read as no address, which moved the
--   client to the shared anon:unknown bucket; an IPv4-mapped IPv6 address
--   (::ffff:a.b.c.d, a dual-stack proxy's view of an IPv4 client) is its IPv4
--   address instead of one /64 for every IPv4 client.
-- * guard_set_chained refuses pgshield's own functions (chaining the guard to
--   itself recursed on every request).

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- The calling client's address as a subject key: '203.0.113.7' (IPv4 /32), or
-- the network for a shorter prefix ('2001:db8:1:2::/64'); null when the
-- configured header is missing, has fewer entries than trusted hops, or its
-- entry is not an address. Reads request.headers as PostgREST sets it; of a
-- header longer than 4,096 characters only the last 4,096 (the proxies'
-- entries). An IPv4-mapped IPv6 address counts as its IPv4 address.
-- Callers: pack functions (runs as the owner). Errors: none.
create or replace function pgshield.client_address() returns text
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_src pgshield.client_address_source;
  v_raw text;
  v_parts text[];
  v_entry text;
  v_ip inet;
begin
  select * into v_src from pgshield.client_address_source s where s.id;
  if v_src.header is null then
    return null;
  end if;
  v_raw := nullif(current_setting('request.headers', true), '')::jsonb ->> v_src.header;
  if v_raw is null then
    return null;
  end if;
  -- Proxies append on the right: a client's padding on the left is cut off,
  -- and never makes the trusted entry unreadable.
  if length(v_raw) > 4096 then
    v_raw := right(v_raw, 4096);
  end if;
  v_parts := string_to_array(v_raw, ',');
  if cardinality(v_parts) < v_src.trusted_hops then
    return null;
  end if;
  v_entry := btrim(v_parts[cardinality(v_parts) - v_src.trusted_hops + 1]);
  if v_entry ~ '^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$' then
    v_entry := substring(v_entry from '^\[([0-9A-Fa-f:.]+)\]');
  elsif v_entry ~ '^[0-9.]{7,15}:[0-9]{1,5}$' then
    v_entry := split_part(v_entry, ':', 1);
  end if;
  if v_entry !~ '^[0-9A-Fa-f:.]{2,45}$' then
    return null;
  end if;
  begin
    v_ip := v_entry::inet;
  exception when invalid_text_representation then
    return null;
  end;
  -- An IPv4 client seen through a dual-stack socket (::ffff:a.b.c.d) is IPv4.
  if family(v_ip) = 6 and v_ip << inet '::ffff:0:0/96' then
    v_ip := substring(host(v_ip) from 8)::inet;
  end if;
  v_ip := network(set_masklen(v_ip,
    case when family(v_ip) = 4 then v_src.ipv4_prefix else v_src.ipv6_prefix end));
  return case when masklen(v_ip) = case when family(v_ip) = 4 then 32 else 128 end
              then host(v_ip) else v_ip::text end;
end
$$;

revoke all on function pgshield.client_address() from public, anon, authenticated, service_role;

-- request.path as PostgREST routes it: the first 1,000 characters with their
-- %XX escapes of ASCII characters (but NUL) decoded, then the rest as sent
-- (no rule path is that long). Other escapes stay as they are: no rule can
-- name a character outside [A-Za-z0-9_./-].
-- Callers: request_guard_decide. Errors: none.
create or replace function pgshield.guard_decoded_path(p_path text) returns text
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(nullif(coalesce(string_agg(case when r.m[1] is not null
                                                  then chr(get_byte(decode(r.m[1], 'hex'), 0))
                                                  else r.m[2] end, '' order by r.n), ''), ''), '/')
         || substr(p_path, 1001)
    from regexp_matches(left(p_path, 1000), '%(0[1-9A-Fa-f]|[1-7][0-9A-Fa-f])|(%|[^%]+)', 'g')
         with ordinality r(m, n)
$$;

revoke all on function pgshield.guard_decoded_path(text) from public, anon, authenticated, service_role;

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
    v_subject := auth.uid()::text;
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

-- Records the pre-request function chained before the guard (schema.name,
-- or null for none) in guard_options, and writes request_guard()'s body to
-- call it first (the hook then finds it without a lookup per request).
-- Callers: install_request_guard, uninstall_request_guard (service_role, the
-- owner). Errors: 22023 not a schema-qualified function without arguments,
-- or one of pgshield's.
create or replace function pgshield.guard_set_chained(p_function text) returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $fn$
begin
  if p_function is not null and (p_function !~ '^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$'
                                 or to_regprocedure(p_function || '()') is null) then
    raise exception using errcode = '22023',
      message = format('%L is not a schema-qualified function without arguments', p_function);
  end if;
  -- The guard chained to itself would recurse (54001) or count twice.
  if split_part(p_function, '.', 1) = 'pgshield' then
    raise exception using errcode = '22023',
      message = format('%L is pgshield''s own: only a project''s pre-request function can be chained', p_function);
  end if;
  update pgshield.guard_options o set chained_function = p_function, updated_at = now() where o.id;
  execute format($ddl$create or replace function pgshield.request_guard() returns void
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $body$
begin
%s  perform pgshield.request_guard_decide();
end
$body$$ddl$,
    case when p_function is null then ''
         else format('  perform %I.%I();', split_part(p_function, '.', 1), split_part(p_function, '.', 2)) || chr(10)
    end);
end
$fn$;

revoke all on function pgshield.guard_set_chained(text) from public, anon, authenticated, service_role;
grant execute on function pgshield.guard_set_chained(text) to service_role;


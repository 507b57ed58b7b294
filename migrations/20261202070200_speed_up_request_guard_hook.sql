-- guard: the decision makes the rate limit headers and sends them itself
-- (rate_limit_decide's 'guard' modes, 20261202070000) instead of the guard
-- reading them back out of the windows JSON; request_guard()'s body is
-- written by guard_set_chained (install_request_guard, uninstall_request_guard)
-- to call the chained pre-request function by name, so a request reads no
-- table and calls no function to find it.

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
-- owner). Errors: 22023 not a schema-qualified function without arguments.
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

-- The db-pre-request hook PostgREST calls before every request, as the
-- request's role. It runs as the invoker: the project's own pre-request
-- function, when one is chained, runs first with the request's own rights
-- (as PostgREST would call it; it sees search_path pg_catalog, pg_temp, so it
-- should pin its own); then pgshield.request_guard_decide() decides. Its body
-- is written by pgshield.guard_set_chained (install_request_guard): with a
-- chained function it calls that first, by name, so a request reads no table
-- to find it. Without one (as here) it only decides.
-- Callers: PostgREST as anon, authenticated, service_role (it only ever
-- limits the caller itself).
-- Errors: PGRST (429) when the quota is used up; whatever the chained hook raises.
create or replace function pgshield.request_guard() returns void
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  perform pgshield.request_guard_decide();
end
$$;

revoke all on function pgshield.request_guard() from public, anon, authenticated, service_role;
grant execute on function pgshield.request_guard() to anon, authenticated, service_role;

-- Makes PostgREST call the guard before every request in this database:
-- ALTER ROLE authenticator IN DATABASE <this> SET pgrst.db_pre_request, then
-- NOTIFY pgrst, 'reload config'. Idempotent. A different pre-request function
-- already configured is refused, unless p_chain: then it is kept and runs
-- first, before the guard. Runs with the caller's rights (altering
-- authenticator needs CREATEROLE: on Supabase, postgres has it; service_role
-- may call it and gets a clear 42501 where it lacks that right).
-- Callers: the owner (service_role). Errors: 55000 another hook without p_chain; 42501 not
-- allowed to alter authenticator; 22023 a hook that is not a function.
create or replace function pgshield.install_request_guard(p_chain boolean default false) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  v_hook text;
  v_fn regprocedure;
begin
  if not exists (select 1 from pg_roles r
                  where r.rolname = current_user and (r.rolsuper or r.rolcreaterole)) then
    raise exception using errcode = '42501',
      message = 'not allowed to alter role authenticator',
      hint = 'run install_request_guard() as the project owner (postgres on Supabase)';
  end if;
  v_hook := pgshield.guard_configured_hook();
  if v_hook is not null and v_hook <> 'pgshield.request_guard' then
    if not coalesce(p_chain, false) then
      raise exception using errcode = '55000',
        message = format('PostgREST already calls %s before each request', v_hook),
        hint = 'install_request_guard(p_chain => true) keeps it and runs it before the guard';
    end if;
    v_fn := to_regprocedure(v_hook || '()');
    if v_fn is null or v_hook !~ '^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$' then
      raise exception using errcode = '22023',
        message = format('the configured pre-request %L is not a schema-qualified function without arguments', v_hook);
    end if;
    perform pgshield.guard_set_chained(v_hook);
  elsif v_hook is null then
    -- nothing else is configured: a function chained by an earlier install is gone
    perform pgshield.guard_set_chained(null);
  end if;
  begin
    execute format('alter role authenticator in database %I set pgrst.db_pre_request = %L',
                   current_database(), 'pgshield.request_guard');
  exception when insufficient_privilege then
    raise exception using errcode = '42501',
      message = 'not allowed to alter role authenticator',
      hint = 'run install_request_guard() as the project owner (postgres on Supabase)';
  end;
  perform pg_notify('pgrst', 'reload config');
  return pgshield.request_guard_status();
end
$$;

revoke all on function pgshield.install_request_guard(boolean) from public, anon, authenticated, service_role;
grant execute on function pgshield.install_request_guard(boolean) to service_role;

-- Stops PostgREST calling the guard: puts back the chained function, if any,
-- or removes the setting, then NOTIFY pgrst. Refuses to remove a hook that is
-- not the guard. Idempotent.
-- Callers: the owner (service_role, as above). Errors: 55000 another hook is configured; 42501 not
-- allowed to alter authenticator.
create or replace function pgshield.uninstall_request_guard() returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  v_hook text;
  v_chained text;
begin
  if not exists (select 1 from pg_roles r
                  where r.rolname = current_user and (r.rolsuper or r.rolcreaterole)) then
    raise exception using errcode = '42501',
      message = 'not allowed to alter role authenticator',
      hint = 'run uninstall_request_guard() as the project owner (postgres on Supabase)';
  end if;
  v_hook := pgshield.guard_configured_hook();
  if v_hook is distinct from 'pgshield.request_guard' then
    if v_hook is not null then
      raise exception using errcode = '55000',
        message = format('PostgREST calls %s, not the guard: left as it is', v_hook);
    end if;
    return pgshield.request_guard_status();
  end if;
  select o.chained_function into v_chained from pgshield.guard_options o where o.id;
  begin
    if v_chained is null then
      execute format('alter role authenticator in database %I reset pgrst.db_pre_request', current_database());
    else
      execute format('alter role authenticator in database %I set pgrst.db_pre_request = %L',
                     current_database(), v_chained);
    end if;
  exception when insufficient_privilege then
    raise exception using errcode = '42501',
      message = 'not allowed to alter role authenticator',
      hint = 'run uninstall_request_guard() as the project owner (postgres on Supabase)';
  end;
  perform pgshield.guard_set_chained(null);
  perform pg_notify('pgrst', 'reload config');
  return pgshield.request_guard_status();
end
$$;

revoke all on function pgshield.uninstall_request_guard() from public, anon, authenticated, service_role;
grant execute on function pgshield.uninstall_request_guard() to service_role;

-- A function chained by an earlier install keeps running first.
select pgshield.guard_set_chained(o.chained_function)
  from pgshield.guard_options o
 where o.id and to_regprocedure(o.chained_function || '()') is not null;

-- squawk-ignore ban-drop-function
drop function if exists pgshield.guard_chained_function();

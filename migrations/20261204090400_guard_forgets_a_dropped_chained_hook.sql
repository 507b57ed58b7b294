-- guard: a chained pre-request function that was dropped is forgotten.
-- After install_request_guard(p_chain => true), dropping the project's own
-- hook made every API request fail (42883), installing again kept calling
-- it, and uninstall_request_guard set PostgREST's pre-request back to the
-- missing function. install_request_guard now forgets a chained function
-- that no longer exists, and uninstall_request_guard removes the setting
-- rather than restore one.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- Makes PostgREST call the guard before every request in this database:
-- ALTER ROLE authenticator IN DATABASE <this> SET pgrst.db_pre_request, then
-- NOTIFY pgrst, 'reload config'. Idempotent. A different pre-request function
-- already configured is refused, unless p_chain: then it is kept and runs
-- first, before the guard; a chained function dropped since is forgotten
-- (run it again after dropping one). Runs with the caller's rights (altering
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
  elsif v_hook is null
        or (select to_regprocedure(o.chained_function || '()') is null and o.chained_function is not null
              from pgshield.guard_options o where o.id) then
    -- Nothing else is configured, or the function chained by an earlier
    -- install was dropped since (every request would fail calling it): the
    -- guard forgets it.
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

-- Stops PostgREST calling the guard: puts back the chained function, if any
-- (and still there), or removes the setting, then NOTIFY pgrst. Refuses to remove a hook that is
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
  if to_regprocedure(v_chained || '()') is null then
    v_chained := null;  -- dropped since it was chained: PostgREST would fail calling it
  end if;
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

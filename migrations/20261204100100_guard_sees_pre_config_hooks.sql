-- guard: install sees a hook set by a db-pre-config function, uninstall is
-- idempotent and never reports the guard removed while it is still called,
-- rules name only paths PostgREST routes, and no temporary function is
-- chained.
-- PostgREST also takes db-pre-request from the function authenticator's
-- pgrst.db_pre_config names, and authenticator's own pgrst.db_pre_request
-- (what install writes) overrides it: install replaced such a hook without a
-- word. It now runs that function as PostgREST does (under authenticator's
-- search_path) in a rolled-back subtransaction to see what it sets, and
-- refuses (55000) or chains it as it does a hook set directly; one that
-- fails, is not a function without arguments, or is not owned by the
-- installer or a superuser (it runs with the installer's rights) is refused
-- with 55000, since what it sets cannot be known. uninstall_request_guard
-- leaves a hook chained from it to it (the setting is removed).
-- uninstall_request_guard answered 55000 when another hook was configured,
-- so a second call after it had put the chained hook back failed; it now
-- returns the status. The guard set for every database (ALTER ROLE
-- authenticator SET) was "removed" by resetting only this database's
-- setting, which reported success while PostgREST still called it; it is now
-- refused with 55000, changing nothing.
-- define_guard_rule accepted paths PostgREST never routes (/rest/v1/todos,
-- /todos/1), rules that could never match; it now takes *, /<table> and
-- /rpc/<function>, exact or ending in *. guard_set_chained accepted a
-- pg_temp function, which every other session fails to call (42883).

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- Adds a rule; returns it as JSON.
-- Callers: service_role, the owner.
-- Errors: 22023 bad role, method, path (one PostgREST never routes too),
-- cost, position or action, unknown policy; 42501 others.
create or replace function pgshield.define_guard_rule(
  p_policy text,
  p_role text default '*',
  p_method text default '*',
  p_path text default '*',
  p_cost integer default 1,
  p_position integer default 100,
  p_action text default 'limit',
  p_description text default null
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may define guard rules';
  end if;
  if p_action is null or p_action not in ('limit', 'exempt') then
    raise exception using errcode = '22023', message = 'p_action must be limit or exempt';
  end if;
  if p_role is null or p_role not in ('*', 'anon', 'authenticated', 'service_role') then
    raise exception using errcode = '22023', message = 'p_role must be *, anon, authenticated or service_role',
      hint = '* matches anon and authenticated; service_role only when named';
  end if;
  if p_method is null or upper(p_method) not in ('*', 'GET', 'HEAD', 'POST', 'PATCH', 'PUT', 'DELETE') then
    raise exception using errcode = '22023', message = 'p_method must be *, GET, HEAD, POST, PATCH, PUT or DELETE';
  end if;
  -- Only what PostgREST routes: /<table> and /rpc/<function> (a rule on
  -- anything else, such as /rest/v1/todos or /todos/1, would never match).
  if p_path is null or p_path !~ '^(\*|/(rpc/)?[A-Za-z0-9_.-]{0,200}\*?)$' then
    raise exception using errcode = '22023',
      message = 'p_path must be *, /<table> or /rpc/<function>, exact or ending in *',
      hint = case when p_path ~ '^/rest/v1(/|$)'
                  then 'PostgREST sees the path after the gateway''s /rest/v1: write /todos, not /rest/v1/todos'
                  else 'PostgREST routes /<table> and /rpc/<function> only; a trailing * matches any rest (/rpc/*)' end;
  end if;
  if p_cost is null or p_cost not between 1 and 1000000 then
    raise exception using errcode = '22023', message = 'p_cost must be between 1 and 1000000';
  end if;
  if p_position is null or p_position not between 0 and 1000000 then
    raise exception using errcode = '22023', message = 'p_position must be between 0 and 1000000';
  end if;
  if p_description is not null and length(p_description) > 500 then
    raise exception using errcode = '22023', message = 'p_description must be at most 500 characters';
  end if;
  if p_action = 'limit' then
    perform pgshield.rate_limit_policy(p_policy);
  elsif p_policy is not null then
    raise exception using errcode = '22023', message = 'an exempt rule takes no p_policy';
  end if;
  insert into pgshield.guard_rules (position, role, method, path, path_like, action, policy, cost, description)
  values (p_position, p_role, upper(p_method), p_path,
          case when p_path = '*' then '%'
               else replace(replace(rtrim(p_path, '*'), '_', '\_'), '%', '\%')
                    || case when right(p_path, 1) = '*' then '%' else '' end end,
          p_action, case when p_action = 'limit' then p_policy end, p_cost, p_description)
  returning id into v_id;
  return (select r.rule from pgshield.guard_rule_list() r where (r.rule ->> 'id')::bigint = v_id);
end
$$;

revoke all on function pgshield.define_guard_rule(text, text, text, text, integer, integer, text, text)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.define_guard_rule(text, text, text, text, integer, integer, text, text)
  to service_role;

-- The pre-request function a db-pre-config function (PostgREST's other
-- in-database configuration, authenticator's pgrst.db_pre_config) sets, or
-- null. PostgREST lets authenticator's own pgrst.db_pre_request setting
-- override it, so install_request_guard must see it before it writes that.
-- The function is run as PostgREST runs it, under authenticator's
-- search_path, in a subtransaction that is rolled back (what it sets is read
-- first), and only when the caller owns it or a superuser does: it runs with
-- the caller's rights. One that cannot be run, or fails, is refused (55000):
-- what it sets cannot be known, and guessing "nothing" would replace a hook.
-- Callers: install_request_guard, uninstall_request_guard (the owner).
-- Errors: 55000 as above.
create or replace function pgshield.guard_preconfigured_hook() returns text
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_setting text;
  v_fn regprocedure;
  v_sql text;
  v_path text;
  v_hook text;
  v_ran boolean := false;
  v_error text;
begin
  select substr(c.setting, length('pgrst.db_pre_config=') + 1) into v_setting
    from pg_db_role_setting s
   cross join lateral unnest(s.setconfig) c(setting)
   where s.setrole = (select r.oid from pg_roles r where r.rolname = 'authenticator')
     and s.setdatabase in (0, (select d.oid from pg_database d where d.datname = current_database()))
     and c.setting like 'pgrst.db\_pre\_config=%'
   order by s.setdatabase desc
   limit 1;
  if v_setting is null then
    return null;
  end if;
  begin
    v_fn := to_regprocedure(v_setting || '()');
  exception when others then
    v_fn := null;
  end;
  if v_fn is null then
    raise exception using errcode = '55000',
      message = format('authenticator''s pgrst.db_pre_config names %L, not a function without arguments here',
                       left(v_setting, 200)),
      hint = 'PostgREST cannot run it either: fix or reset that setting, then install again';
  end if;
  if not exists (select 1 from pg_proc p join pg_roles o on o.oid = p.proowner
                  where p.oid = v_fn and (o.rolname = current_user or o.rolsuper)) then
    raise exception using errcode = '55000',
      message = format('cannot tell what the db-pre-config function %s sets without running it, and it is not yours',
                       v_fn::oid::regproc),
      hint = 'run install_request_guard() as its owner, or set the hook on authenticator (pgrst.db_pre_request)';
  end if;
  -- The search_path PostgREST's connection has: authenticator's setting (for
  -- this database, then all), the database's, else the server's default.
  select coalesce(
           (select substr(c.setting, length('search_path=') + 1)
              from pg_db_role_setting s cross join lateral unnest(s.setconfig) c(setting)
             where c.setting like 'search\_path=%'
               and ((s.setrole = (select r.oid from pg_roles r where r.rolname = 'authenticator')
                     and s.setdatabase in (0, d.oid))
                    or (s.setrole = 0 and s.setdatabase = d.oid))
             order by s.setrole = 0, s.setdatabase = 0
             limit 1),
           (select g.boot_val from pg_settings g where g.name = 'search_path'))
    into v_path
    from pg_database d where d.datname = current_database();
  v_sql := format('select %s()', v_fn::oid::regproc);
  begin
    perform pg_catalog.set_config('pgrst.db_pre_request', '', true);
    perform pg_catalog.set_config('search_path', v_path, true);
    execute v_sql;
    v_hook := nullif(pg_catalog.current_setting('pgrst.db_pre_request', true), '');
    v_ran := true;
    raise exception using errcode = 'P0001', message = 'pgshield: roll the db-pre-config back';
  exception when others then
    if not v_ran then
      v_error := sqlstate || ': ' || sqlerrm;
    end if;
  end;
  if not v_ran then
    raise exception using errcode = '55000',
      message = format('the db-pre-config function %s failed when run to see what it sets (%s)',
                       v_fn::oid::regproc, left(v_error, 300)),
      hint = 'fix it (PostgREST fails loading it too), or set the hook on authenticator (pgrst.db_pre_request)';
  end if;
  return v_hook;
end
$$;

revoke all on function pgshield.guard_preconfigured_hook() from public, anon, authenticated, service_role;

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
  -- pg_temp names this session's own temporary schema: every other session
  -- would fail calling it (42883).
  if p_function is not null and (p_function !~ '^[a-z_][a-z0-9_$]*\.[a-z_][a-z0-9_$]*$'
                                 or split_part(p_function, '.', 1) ~ '^pg_temp'
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

-- Makes PostgREST call the guard before every request in this database:
-- ALTER ROLE authenticator IN DATABASE <this> SET pgrst.db_pre_request, then
-- NOTIFY pgrst, 'reload config'. Idempotent. A different pre-request function
-- already configured (in authenticator's settings, or by the function its
-- pgrst.db_pre_config names) is refused, unless p_chain: then it is kept and runs
-- first, before the guard; a chained function dropped since is forgotten
-- (run it again after dropping one). Runs with the caller's rights (altering
-- authenticator needs CREATEROLE: on Supabase, postgres has it; service_role
-- may call it and gets a clear 42501 where it lacks that right).
-- Callers: the owner (service_role). Errors: 55000 another hook without p_chain, or a
-- db-pre-config function that cannot be run to see what it sets; 42501 not
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
  -- A hook set by a db-pre-config function counts as configured too: the
  -- setting written below would override it without a word.
  v_hook := coalesce(pgshield.guard_configured_hook(), pgshield.guard_preconfigured_hook());
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
-- (and still there), or removes the setting, then NOTIFY pgrst. Leaves a hook
-- that is not the guard as it is, and returns the status (idempotent: a
-- second call after the chained function was put back changes nothing).
-- The guard set for every database (ALTER ROLE authenticator SET, not what
-- install writes) is refused, changing nothing: resetting it would change
-- other databases, and resetting only this database's would leave it called.
-- Callers: the owner (service_role, as above). Errors: 55000 the guard is set
-- for every database; 42501 not allowed to alter authenticator.
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
    return pgshield.request_guard_status();
  end if;
  if exists (select 1 from pg_db_role_setting s cross join lateral unnest(s.setconfig) c(setting)
              where s.setrole = (select r.oid from pg_roles r where r.rolname = 'authenticator')
                and s.setdatabase = 0 and c.setting = 'pgrst.db_pre_request=pgshield.request_guard') then
    raise exception using errcode = '55000',
      message = 'the guard is set for every database (alter role authenticator set pgrst.db_pre_request), not only this one',
      hint = 'reset it where it was set: alter role authenticator reset pgrst.db_pre_request; notify pgrst, ''reload config''';
  end if;
  select o.chained_function into v_chained from pgshield.guard_options o where o.id;
  if to_regprocedure(v_chained || '()') is null then
    v_chained := null;  -- dropped since it was chained: PostgREST would fail calling it
  end if;
  -- A chained hook that the db-pre-config function sets is left to it: the
  -- setting is removed, not written (it would override that function).
  if v_chained is not null then
    begin
      if pgshield.guard_preconfigured_hook() = v_chained then
        v_chained := null;
      end if;
    exception when sqlstate '55000' then
      null;  -- it cannot be run now: put the hook back as the setting
    end;
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

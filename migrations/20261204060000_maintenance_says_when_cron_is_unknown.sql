-- maintenance: a role that can see neither the server's settings nor
-- pg_cron's launcher (a non-superuser owner without pg_read_all_stats: the
-- launcher's row in pg_stat_activity is hidden) is no longer told that pg_cron
-- is absent and to preload it here (which would move the scheduler).
-- maintenance_cron() says "known": false, and scheduling then gives both ways:
-- the statement to run in the scheduler's database, or preloading pg_cron.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- Where pg_cron stands for this database: version (null: not created here),
-- usage (whether the current role may use its schema: null without it; a
-- superuser creates the extension, and a non-superuser owner has no USAGE on
-- schema cron until granted), preloaded, the database its scheduler runs in,
-- and this database. Roles
-- that may not read server settings (hosted Supabase's postgres may not read
-- shared_preload_libraries) learn the same from pg_cron's launcher process;
-- known is false when they cannot see that either.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.maintenance_cron() returns jsonb
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_preloaded boolean;
  v_database text;
  v_known boolean := true;
begin
  begin
    v_preloaded := coalesce(current_setting('shared_preload_libraries', true), '') ~ '(^|[ ,])pg_cron($|[ ,])';
    v_database := current_setting('cron.database_name', true);
  exception when insufficient_privilege then
    select true, a.datname into v_preloaded, v_database
      from pg_catalog.pg_stat_activity a where a.backend_type = 'pg_cron launcher' limit 1;
    -- Without the launcher in sight (pg_stat_activity hides other users'
    -- sessions from a role without pg_read_all_stats) nothing is known.
    v_known := found;
  end;
  return jsonb_build_object(
    'version', (select e.extversion from pg_catalog.pg_extension e where e.extname = 'pg_cron'),
    -- pg_cron's extension schema is pg_catalog; its objects live in schema cron.
    'usage', (select pg_catalog.has_schema_privilege(n.oid, 'usage')
                from pg_catalog.pg_namespace n
               where n.nspname = 'cron'
                 and exists (select from pg_catalog.pg_extension e where e.extname = 'pg_cron')),
    'preloaded', coalesce(v_preloaded, false),
    'database', coalesce(v_database, 'postgres'),
    'known', v_known,
    'here', current_database());
end
$$;

revoke all on function pgshield.maintenance_cron() from public, anon, authenticated, service_role;
grant execute on function pgshield.maintenance_cron() to service_role;

-- Raises 55000 when pg_cron cannot schedule jobs from this database, with the
-- exact step to take in the hint (p_statement: what to run in the scheduler's
-- database instead, when pg_cron runs there), and 42501 when the current role
-- may not use schema cron (the hint holds the grant).
-- Callers: pack functions. Errors: 55000, 42501.
create or replace function pgshield.maintenance_require_cron(p_statement text) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_cron jsonb := pgshield.maintenance_cron();
begin
  if v_cron ->> 'version' is not null then
    if string_to_array(split_part(v_cron ->> 'version', '-', 1), '.')::integer[] < array[1, 3] then
      raise exception using errcode = '55000',
        message = format('pg_cron %s cannot name jobs; pgshield needs 1.3 or later', v_cron ->> 'version'),
        hint = 'run `alter extension pg_cron update;`';
    end if;
    if not (v_cron ->> 'usage')::boolean then
      raise exception using errcode = '42501',
        message = format('role %s may not use schema cron, so it cannot schedule the maintenance job', current_user),
        hint = format('as a superuser run: grant usage on schema cron to %I;', current_user);
    end if;
    return v_cron ->> 'version';
  end if;
  if (v_cron ->> 'preloaded')::boolean and v_cron ->> 'database' <> v_cron ->> 'here' then
    raise exception using errcode = '55000',
      message = format('pg_cron runs in database %s, not in %s', v_cron ->> 'database', v_cron ->> 'here'),
      hint = format('connect to database %s as a superuser and run: %s', v_cron ->> 'database', p_statement);
  end if;
  if (v_cron ->> 'preloaded')::boolean then
    raise exception using errcode = '55000',
      message = 'pg_cron is loaded but not created in this database',
      hint = 'run `create extension pg_cron;`, then call this function again';
  end if;
  if not coalesce((v_cron ->> 'known')::boolean, true) then
    raise exception using errcode = '55000',
      message = format('pg_cron is not created in this database, and role %s cannot see whether the server '
                       'loads it or in which database it runs', current_user),
      hint = format('if pg_cron runs in another database, connect there as a superuser and run: %s; '
                    'otherwise add pg_cron to shared_preload_libraries with cron.database_name = %L, restart, '
                    'and run `create extension pg_cron;` here', p_statement, v_cron ->> 'here');
  end if;
  raise exception using errcode = '55000',
    message = 'pg_cron is not available: nothing can schedule the maintenance job',
    hint = format('add pg_cron to shared_preload_libraries with cron.database_name = %L, restart, run '
                  '`create extension pg_cron;` there (on Supabase: enable pg_cron under Database > Extensions)',
                  v_cron ->> 'here');
end
$$;

revoke all on function pgshield.maintenance_require_cron(text) from public, anon, authenticated, service_role;
grant execute on function pgshield.maintenance_require_cron(text) to service_role;

-- maintenance: a role that may not use schema cron (a non-superuser owner
-- where a superuser created pg_cron, as on self-hosted Postgres with an
-- application owner role) gets no 42501 from the cleanup and the status.
-- * maintenance_cron() reports 'usage': whether the current role may use the
--   pg_cron schema.
-- * maintenance_cleanup deletes pg_cron's run history only where the owner
--   may (it named cron.job_run_details and failed with 42501 on every run).
-- * maintenance_status reads cron.job only then (it failed with 42501).
-- * schedule_maintenance and unschedule_maintenance answer 42501 with the
--   grant to run in the hint (maintenance_require_cron).

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- Where pg_cron stands for this database: version (null: not created here),
-- usage (whether the current role may use its schema: null without it; a
-- superuser creates the extension, and a non-superuser owner has no USAGE on
-- schema cron until granted), preloaded, the database its scheduler runs in,
-- and this database. Roles
-- that may not read server settings (hosted Supabase's postgres may not read
-- shared_preload_libraries) learn the same from pg_cron's launcher process.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.maintenance_cron() returns jsonb
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_preloaded boolean;
  v_database text;
begin
  begin
    v_preloaded := coalesce(current_setting('shared_preload_libraries', true), '') ~ '(^|[ ,])pg_cron($|[ ,])';
    v_database := current_setting('cron.database_name', true);
  exception when insufficient_privilege then
    select true, a.datname into v_preloaded, v_database
      from pg_catalog.pg_stat_activity a where a.backend_type = 'pg_cron launcher' limit 1;
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
  raise exception using errcode = '55000',
    message = 'pg_cron is not available: nothing can schedule the maintenance job',
    hint = format('add pg_cron to shared_preload_libraries with cron.database_name = %L, restart, run '
                  '`create extension pg_cron;` there (on Supabase: enable pg_cron under Database > Extensions)',
                  v_cron ->> 'here');
end
$$;

revoke all on function pgshield.maintenance_require_cron(text) from public, anon, authenticated, service_role;
grant execute on function pgshield.maintenance_require_cron(text) to service_role;

-- This module's own cleanup: deletes up to p_batch_size rows of the run
-- history and of cron.job_run_details for the pack's jobs that are older than
-- p_retention, and returns how many it deleted.
-- Callers: run_maintenance (the owner), service_role. Errors: 22023 bad batch
-- size or retention; 42501 others.
create or replace function pgshield.maintenance_cleanup(p_batch_size integer, p_retention interval)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_before timestamptz;
  v_count integer;
  v_cron integer := 0;
  v_deletes boolean := false;
begin
  perform pgshield.maintenance_check_caller();
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023', message = 'p_batch_size must be a positive integer';
  end if;
  if p_retention is null or p_retention <= interval '0' then
    raise exception using errcode = '22023', message = 'p_retention must be a positive interval';
  end if;
  v_before := pgshield.now() - p_retention;
  delete from pgshield.maintenance_runs r
   using (select x.id from pgshield.maintenance_runs x
           where x.started_at < v_before order by x.id limit p_batch_size for update skip locked) d
   where r.id = d.id;
  get diagnostics v_count = row_count;
  -- Only where the owner may delete from pg_cron's run history (a
  -- non-superuser owner may not use schema cron until granted it; the
  -- table's name is looked up only then, since looking it up needs USAGE).
  if v_count < p_batch_size and coalesce((pgshield.maintenance_cron() ->> 'usage')::boolean, false) then
    v_deletes := case when to_regclass('cron.job_run_details') is null then false
                      else has_table_privilege('cron.job_run_details', 'delete') end;
  end if;
  if v_deletes then
    -- format(): the cron schema may not exist, so the statement is never checked ahead.
    execute format($sql$
      delete from %1$I.job_run_details r
       where r.runid in (select x.runid from %1$I.job_run_details x
                          where x.jobid in (select j.jobid from %1$I.job j where j.jobname = $3)
                            and x.end_time < $1
                          order by x.runid limit $2)
    $sql$, 'cron') using v_before, p_batch_size - v_count, pgshield.maintenance_job_name();
    get diagnostics v_cron = row_count;
  end if;
  return v_count + v_cron;
end
$$;

revoke all on function pgshield.maintenance_cleanup(integer, interval) from public, anon, authenticated, service_role;
grant execute on function pgshield.maintenance_cleanup(integer, interval) to service_role;

-- Everything an operator asks about maintenance, as JSON:
--   cron: {version, usage, preloaded, database, here}
--   job: this database's job in cron.job (null when there is none, pg_cron
--        is not here or the owner may not use schema cron), runs: its last p_runs entries of cron.job_run_details,
--        failures: how many of its recorded runs failed
--   totals: runs, seconds, last run; tasks: each task's settings, counters,
--   whether its module is installed, and oversized: tables past max_rows
--   (planner estimates).
-- Callers: the owner, service_role. Errors: 22023 bad p_runs; 42501 others.
create or replace function pgshield.maintenance_status(p_runs integer default 10) returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_cron jsonb := pgshield.maintenance_cron();
  v_job jsonb;
  v_runs jsonb := '[]'::jsonb;
  v_failures bigint := 0;
begin
  perform pgshield.maintenance_check_caller();
  if p_runs is null or p_runs not between 0 and 1000 then
    raise exception using errcode = '22023', message = 'p_runs must be between 0 and 1000';
  end if;
  if (v_cron ->> 'usage')::boolean then
    execute format($sql$
      select to_jsonb(j) from (select j.jobid, j.jobname, j.schedule, j.command, j.database, j.username, j.active
                                 from %I.job j where j.jobname = $1) j
    $sql$, 'cron') into v_job using pgshield.maintenance_job_name();
    if v_job is not null then
      execute format($sql$
        select coalesce(jsonb_agg(to_jsonb(r) order by r.runid desc), '[]'::jsonb)
          from (select d.runid, d.status, d.start_time, d.end_time, d.return_message
                  from %I.job_run_details d where d.jobid = $1 order by d.runid desc limit $2) r
      $sql$, 'cron') into v_runs using (v_job ->> 'jobid')::bigint, p_runs;
      execute format($sql$
        select count(*) from %I.job_run_details d where d.jobid = $1 and d.status = 'failed'
      $sql$, 'cron') into v_failures using (v_job ->> 'jobid')::bigint;
    end if;
  end if;
  return jsonb_build_object(
    'cron', v_cron, 'job', v_job, 'runs', v_runs, 'failures', v_failures,
    'totals', (select jsonb_build_object('runs', s.runs, 'seconds', s.seconds,
                                         'last_started_at', s.last_started_at,
                                         'last_duration_ms', s.last_duration_ms,
                                         'last_complete', s.last_complete)
                 from pgshield.maintenance_totals s where s.id),
    'tasks', coalesce((
      select jsonb_agg(jsonb_build_object(
               'task', t.task, 'module', t.module, 'cleanup', t.cleanup,
               'installed', to_regprocedure(t.cleanup) is not null,
               'batch_size', t.batch_size, 'retention', t.retention, 'enabled', t.enabled,
               'runs', t.runs, 'deleted', t.deleted, 'errors', t.errors,
               'last_run_at', t.last_run_at, 'last_status', t.last_status,
               'last_deleted', t.last_deleted, 'last_error', t.last_error,
               'max_rows', t.max_rows,
               'oversized', (
                 select coalesce(jsonb_agg(jsonb_build_object('table', c.oid::regclass::text,
                                                              'rows', c.reltuples::bigint)), '[]'::jsonb)
                   from unnest(t.tables) tb(name)
                   join pg_catalog.pg_class c on c.oid = to_regclass(tb.name)
                  where t.max_rows is not null and c.reltuples > t.max_rows))
             order by t.position, t.task)
        from pgshield.maintenance_tasks t), '[]'::jsonb));
end
$$;

revoke all on function pgshield.maintenance_status(integer) from public, anon, authenticated, service_role;
grant execute on function pgshield.maintenance_status(integer) to service_role;

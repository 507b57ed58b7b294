-- =============================================================================
-- pgshield maintenance: every module's cleanup in one bounded run, its pg_cron
-- schedule, and Prometheus metrics of the pack's state.
--
-- Entry points (schema pgshield: none is for the Data API; each checks its
-- caller and refuses anon and authenticated with 42501):
--   run_maintenance        every installed module's cleanup, in batches,
--                          within a time budget; what it did per task      service_role
--   maintenance_job_command the pg_cron job's command: the same, committed
--                          in steps of 100 ms, with pauses between them    service_role
--   schedule_maintenance   the pg_cron job that runs that command          service_role
--   unschedule_maintenance remove that job                                 service_role
--   maintenance_status     the job, its last runs and failures, the tasks  service_role
--   set_maintenance_task   batch size, retention, enabled of one task      service_role
--   metrics                Prometheus text exposition of the pack's state  service_role
-- Internals: the task registry (one row per module's cleanup function: batch
-- size, retention, expected size, and what the last runs did), the run totals
-- and history, maintenance_cleanup() (this module's own cleanup: its run
-- history and the cron.job_run_details rows of the pack's jobs).
--
-- Maintenance never touches another module's tables: each module owns its
-- cleanup function `pgshield.<m>_cleanup(p_batch_size integer)` (or
-- `(p_batch_size integer, p_retention interval)`, which gets the task's
-- retention) and adds its row to pgshield.maintenance_tasks in its own
-- migration. A task whose function does not exist is skipped. The cron schema
-- is reached through dynamic SQL only, so this file applies on databases
-- without pg_cron.
-- =============================================================================

-- Batch sizes and the expected-size thresholds mirror integer parameters and are bounded by checks.
-- squawk-ignore-file prefer-bigint-over-int

-- Applied in one transaction: never wait long for a lock on the user's database.
set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- ------------------------------------------------------------------ tasks ----
-- One row per cleanup function: its settings (batch size, retention, the
-- tables it keeps small and how many rows they are expected to hold), then
-- what run_maintenance did with it (cumulative counters and the last run).

create table if not exists pgshield.maintenance_tasks (
  task text primary key
    constraint maintenance_tasks_task_check check (task ~ '^[a-z][a-z0-9_]{0,62}$'),
  module text not null,
  cleanup text not null
    constraint maintenance_tasks_cleanup_check
    check (cleanup ~ '^pgshield\.[a-z_][a-z0-9_]{0,62}\(integer(, interval)?\)$'),
  batch_size integer not null default 10000
    constraint maintenance_tasks_batch_check check (batch_size between 1 and 1000000),
  retention interval
    constraint maintenance_tasks_retention_check check (retention > interval '0'),
  tables text[] not null default '{}',
  max_rows bigint
    constraint maintenance_tasks_max_rows_check check (max_rows > 0),
  position integer not null default 100,
  enabled boolean not null default true,
  runs bigint not null default 0,
  deleted bigint not null default 0,
  errors bigint not null default 0,
  last_run_at timestamptz,
  last_status text,
  last_deleted bigint,
  last_error text
);
comment on table pgshield.maintenance_tasks is
  'Cleanup tasks of run_maintenance, one per module: settings, then what the runs did. Edit with pgshield.set_maintenance_task().';
alter table pgshield.maintenance_tasks enable row level security;
revoke all on table pgshield.maintenance_tasks from public, anon, authenticated, service_role;

-- ------------------------------------------------------------------- runs ----

create table if not exists pgshield.maintenance_totals (
  id boolean primary key default true
    constraint maintenance_totals_id_check check (id),
  runs bigint not null default 0,
  seconds double precision not null default 0,
  last_started_at timestamptz,
  last_duration_ms bigint,
  last_complete boolean
);
comment on table pgshield.maintenance_totals is
  'One row: how many maintenance runs there were and how long they took in all.';
alter table pgshield.maintenance_totals enable row level security;
revoke all on table pgshield.maintenance_totals from public, anon, authenticated, service_role;
insert into pgshield.maintenance_totals (id) values (true) on conflict (id) do nothing;

create table if not exists pgshield.maintenance_runs (
  id bigint generated always as identity primary key,
  started_at timestamptz not null,
  duration_ms bigint not null,
  complete boolean not null,
  result jsonb not null
);
comment on table pgshield.maintenance_runs is
  'One row per maintenance run (what run_maintenance returned); kept for the maintenance task''s retention.';
alter table pgshield.maintenance_runs enable row level security;
revoke all on table pgshield.maintenance_runs from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- helpers ----

-- Refuses every caller but service_role and the owner with 42501.
-- Callers: pack functions. Errors: 42501.
create or replace function pgshield.maintenance_check_caller() returns void
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501',
      message = 'only service_role may run maintenance, schedule it or read metrics';
  end if;
end
$$;

revoke all on function pgshield.maintenance_check_caller() from public, anon, authenticated, service_role;
grant execute on function pgshield.maintenance_check_caller() to service_role;

-- Refuses a time budget that is not a positive interval of at most 10
-- minutes, and a pause ratio outside 0..100, with 22023.
-- Callers: pack functions. Errors: 22023.
create or replace function pgshield.maintenance_check_budget(p_time_budget interval, p_pause_ratio double precision)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_time_budget is null or p_time_budget <= interval '0' or p_time_budget > interval '10 minutes' then
    raise exception using errcode = '22023',
      message = 'p_time_budget must be a positive interval of at most 10 minutes';
  end if;
  if p_pause_ratio is null or p_pause_ratio < 0 or p_pause_ratio > 100 or p_pause_ratio = 'NaN' then
    raise exception using errcode = '22023', message = 'p_pause_ratio must be between 0 and 100',
      hint = '0: no pauses; 1: after each batch (each step of the job) a pause as long as it took';
  end if;
end
$$;

revoke all on function pgshield.maintenance_check_budget(interval, double precision)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.maintenance_check_budget(interval, double precision) to service_role;

-- The name of this database's maintenance job in cron.job.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.maintenance_job_name() returns text
language sql stable
set search_path = pg_catalog, pg_temp
as $$ select 'pgshield-maintenance-' || current_database() $$;

revoke all on function pgshield.maintenance_job_name() from public, anon, authenticated, service_role;
grant execute on function pgshield.maintenance_job_name() to service_role;

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

-- ---------------------------------------------------------------- cleanup ----

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
  v_now timestamptz := pgshield.now();
  v_before timestamptz;
  v_count integer;
  v_cron integer := 0;
  v_deletes boolean := false;
begin
  perform pgshield.maintenance_check_caller();
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023', message = 'p_batch_size must be a positive integer';
  end if;
  v_before := pgshield.time_moved(v_now, p_retention, true);
  if (v_before >= v_now - interval '1000 years' and v_before < v_now) is not true then
    raise exception using errcode = '22023', message = 'p_retention must be a positive interval of at most 1000 years';
  end if;
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

-- -------------------------------------------------------------------- run ----

-- Calls every enabled task's cleanup function in batches until it deletes
-- less than a batch or p_time_budget (wall clock, pauses included) is spent,
-- in task order. After each batch it pauses for p_pause_ratio times as long
-- as the batch took (0: back to back; 1: at most half of one CPU), so that
-- decisions running beside it keep their latency on small machines: a
-- backend that never yields delays every query that waits behind it on its
-- core. Tasks whose function does not exist are skipped; a task that fails is
-- reported (its batches roll back) and the others still run. Everything a run
-- deletes is deleted in the caller's transaction, and stays locked until it
-- commits: a decision meeting such a row waits for that. The pg_cron job's
-- command (maintenance_job_command) commits every 100 ms; called by hand, a
-- short budget keeps the locks short. When another run is in progress it
-- returns at once with "skipped". Returns
--   {"started_at", "duration_ms", "complete", "tasks": [{"task", "module",
--    "status" (done / more / skipped / failed), "deleted", "batches", "error"}]}
-- and records it in maintenance_runs, the task rows and maintenance_totals.
-- Callers: the owner, service_role (pg_cron runs it as the job's owner).
-- Errors: 22023 bad budget or pause ratio; 42501 others.
create or replace function pgshield.run_maintenance(p_time_budget interval, p_pause_ratio double precision)
returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_started timestamptz;
  v_clock timestamptz := clock_timestamp();
  v_deadline timestamptz;
  v_task pgshield.maintenance_tasks;
  v_proc regprocedure;
  v_call text;
  v_two_args boolean;
  v_status text;
  v_error text;
  v_deleted bigint;
  v_batches integer;
  v_n integer;
  v_complete boolean := true;
  v_tasks jsonb := '[]'::jsonb;
  v_ms bigint;
  v_result jsonb;
  v_batch_started timestamptz;
begin
  perform pgshield.maintenance_check_caller();
  perform pgshield.maintenance_check_budget(p_time_budget, p_pause_ratio);
  v_started := pgshield.now();
  if not pg_try_advisory_xact_lock(7473784373230001) then
    return jsonb_build_object('started_at', v_started, 'duration_ms', 0, 'complete', false,
                              'skipped', 'another maintenance run is in progress', 'tasks', '[]'::jsonb);
  end if;
  v_deadline := v_clock + p_time_budget;
  for v_task in select * from pgshield.maintenance_tasks t where t.enabled order by t.position, t.task loop
    v_deleted := 0;
    v_batches := 0;
    v_error := null;
    v_proc := to_regprocedure(v_task.cleanup);
    if v_proc is null then
      v_status := 'skipped';
      v_error := format('%s does not exist (module %s not installed)', v_task.cleanup, v_task.module);
    else
      select format('select %I.%I(%s)', n.nspname, p.proname, case when p.pronargs = 2 then '$1, $2' else '$1' end),
             p.pronargs = 2
        into v_call, v_two_args
        from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
       where p.oid = v_proc;
      v_status := 'done';
      begin
        loop
          -- Every task gets its first batch, even past the deadline: a task
          -- early in the order with a long backlog would otherwise starve every
          -- later one for as long as the backlog lasts (while their runs were
          -- counted). A run may so overrun its budget by one batch per task.
          if v_batches > 0 and clock_timestamp() >= v_deadline then
            v_status := 'more';
            exit;
          end if;
          v_batch_started := clock_timestamp();
          if v_two_args then
            execute v_call into v_n using v_task.batch_size, coalesce(v_task.retention, interval '7 days');
          else
            execute v_call into v_n using v_task.batch_size;
          end if;
          v_batches := v_batches + 1;
          v_deleted := v_deleted + coalesce(v_n, 0);
          exit when coalesce(v_n, 0) < v_task.batch_size;
          if p_pause_ratio > 0 then
            perform pg_sleep(least(extract(epoch from clock_timestamp() - v_batch_started) * p_pause_ratio,
                                   greatest(extract(epoch from v_deadline - clock_timestamp()), 0)));
          end if;
        end loop;
      exception when others then
        v_status := 'failed';
        v_error := format('%s: %s', sqlstate, sqlerrm);
        v_deleted := 0;
      end;
    end if;
    if v_status in ('more', 'failed') then
      v_complete := false;
    end if;
    update pgshield.maintenance_tasks t
       set runs = t.runs + case when v_status = 'skipped' then 0 else 1 end,
           deleted = t.deleted + v_deleted,
           errors = t.errors + case when v_status = 'failed' then 1 else 0 end,
           last_run_at = v_started, last_status = v_status, last_deleted = v_deleted, last_error = v_error
     where t.task = v_task.task;
    v_tasks := v_tasks || jsonb_build_array(jsonb_build_object(
      'task', v_task.task, 'module', v_task.module, 'status', v_status,
      'deleted', v_deleted, 'batches', v_batches, 'error', v_error));
  end loop;
  v_ms := (extract(epoch from clock_timestamp() - v_clock) * 1000)::bigint;
  v_result := jsonb_build_object('started_at', v_started, 'duration_ms', v_ms,
                                 'complete', v_complete, 'tasks', v_tasks);
  insert into pgshield.maintenance_runs (started_at, duration_ms, complete, result)
  values (v_started, v_ms, v_complete, v_result);
  insert into pgshield.maintenance_totals as s (id) values (true) on conflict (id) do nothing;
  update pgshield.maintenance_totals s
     set runs = s.runs + 1, seconds = s.seconds + v_ms / 1000.0::double precision,
         last_started_at = v_started, last_duration_ms = v_ms, last_complete = v_complete
   where s.id;
  return v_result;
end
$$;

revoke all on function pgshield.run_maintenance(interval, double precision)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.run_maintenance(interval, double precision) to service_role;

-- run_maintenance with the default pause: p_pause_ratio 1 (after each batch,
-- a pause as long as the batch).
-- Callers: the owner, service_role (the pg_cron job). Errors: 22023 bad
-- budget; 42501 others.
create or replace function pgshield.run_maintenance(p_time_budget interval default interval '5 seconds')
returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.run_maintenance(p_time_budget, 1);
end
$$;

revoke all on function pgshield.run_maintenance(interval) from public, anon, authenticated, service_role;
grant execute on function pgshield.run_maintenance(interval) to service_role;

-- One step of the maintenance job (maintenance_job_command): run_maintenance
-- on at most 100 ms of what is left of the job's budget (p_time_budget from
-- p_started), with no pause inside, so the rows it deletes stay locked that
-- long and no longer. Returns how many seconds the job pauses before its next
-- step (p_pause_ratio times as long as this step took, within what is left
-- of the budget), or null when the job is over: its budget is spent, no task
-- has more to delete, or another run is in progress. A task that failed is
-- tried again in the next step while other tasks have more.
-- Callers: the job's command (the owner, service_role). Errors: 22023 bad
-- start, budget or pause ratio; 42501 others.
create or replace function pgshield.run_maintenance_step(
  p_started timestamptz,
  p_time_budget interval,
  p_pause_ratio double precision
) returns double precision
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_clock timestamptz := clock_timestamp();
  v_left interval;
  v_result jsonb;
begin
  perform pgshield.maintenance_check_caller();
  perform pgshield.maintenance_check_budget(p_time_budget, p_pause_ratio);
  if p_started is null or p_started > v_clock then
    raise exception using errcode = '22023',
      message = 'p_started must be when the job started, not null and not in the future';
  end if;
  v_left := p_started + p_time_budget - v_clock;
  if v_left <= interval '0' then
    return null;
  end if;
  v_result := pgshield.run_maintenance(least(v_left, interval '100 milliseconds'), 0);
  if v_result ? 'skipped'
     or not jsonb_path_exists(v_result, '$.tasks[*] ? (@.status == "more")') then
    return null;
  end if;
  return least(extract(epoch from clock_timestamp() - v_clock)::double precision * p_pause_ratio,
               greatest(extract(epoch from p_started + p_time_budget - clock_timestamp())::double precision, 0));
end
$$;

revoke all on function pgshield.run_maintenance_step(timestamptz, interval, double precision)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.run_maintenance_step(timestamptz, interval, double precision)
  to service_role;

-- The pg_cron job's command: a `do` block that runs run_maintenance_step
-- until it returns null, committing after each step and pausing what it
-- returns between steps: every module's cleanup within p_time_budget, in
-- steps of at most 100 ms, each of them a run of its own in maintenance_runs.
-- A decision that meets a row a step deleted waits for that step's commit,
-- never for the whole budget. A `do` block, not a procedure: a procedure that
-- commits may not pin its search_path (Postgres refuses COMMIT under a SET
-- clause), which the Security Advisor flags; the block names every function
-- and type with its schema, so the session's search_path never matters. Run
-- it on its own, outside a transaction block (it commits; inside one it fails
-- with 2D000), as pg_cron does: in psql, `select
-- pgshield.maintenance_job_command() \gexec`.
-- Callers: the owner, service_role. Errors: 22023 bad budget or pause ratio;
-- 42501 others.
create or replace function pgshield.maintenance_job_command(
  p_time_budget interval default interval '5 seconds',
  p_pause_ratio double precision default 1
) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
  perform pgshield.maintenance_check_caller();
  perform pgshield.maintenance_check_budget(p_time_budget, p_pause_ratio);
  return format(
    'do $pgshield$ declare t pg_catalog.timestamptz := pg_catalog.clock_timestamp(); p pg_catalog.float8; '
    'begin loop p := pgshield.run_maintenance_step(t, %L::pg_catalog.interval, %L::pg_catalog.float8); '
    'commit; exit when p is null; perform pg_catalog.pg_sleep(p); end loop; end $pgshield$',
    trim_scale(extract(epoch from p_time_budget)) || ' seconds', p_pause_ratio);
end
$$;

revoke all on function pgshield.maintenance_job_command(interval, double precision)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.maintenance_job_command(interval, double precision) to service_role;

-- Changes one task's settings (null keeps a setting) and returns the task.
-- Callers: the owner, service_role. Errors: 22023 unknown task or bad value; 42501 others.
create or replace function pgshield.set_maintenance_task(
  p_task text,
  p_batch_size integer default null,
  p_retention interval default null,
  p_enabled boolean default null
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row pgshield.maintenance_tasks;
  v_now timestamptz := pgshield.now();
  v_before timestamptz;
begin
  perform pgshield.maintenance_check_caller();
  if p_batch_size not between 1 and 1000000 then
    raise exception using errcode = '22023', message = 'p_batch_size must be between 1 and 1000000';
  end if;
  v_before := pgshield.time_moved(v_now, p_retention, true);
  if p_retention is not null and (v_before >= v_now - interval '1000 years' and v_before < v_now) is not true then
    raise exception using errcode = '22023', message = 'p_retention must be a positive interval of at most 1000 years';
  end if;
  update pgshield.maintenance_tasks t
     set batch_size = coalesce(p_batch_size, t.batch_size),
         retention = coalesce(p_retention, t.retention),
         enabled = coalesce(p_enabled, t.enabled)
   where t.task = p_task
  returning * into v_row;
  if v_row.task is null then
    raise exception using errcode = '22023', message = format('no maintenance task %L', p_task),
      hint = 'see pgshield.maintenance_status() -> tasks';
  end if;
  return jsonb_build_object('task', v_row.task, 'module', v_row.module, 'cleanup', v_row.cleanup,
                            'batch_size', v_row.batch_size, 'retention', v_row.retention,
                            'enabled', v_row.enabled);
end
$$;

revoke all on function pgshield.set_maintenance_task(text, integer, interval, boolean)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.set_maintenance_task(text, integer, interval, boolean) to service_role;

-- --------------------------------------------------------------- schedule ----

-- Creates or replaces (by job name) the pg_cron job that runs
-- maintenance_job_command() (cleanup committed in steps) in this database on p_schedule (cron
-- syntax; '[1-59] seconds' needs pg_cron 1.5+). The job runs as the pack's
-- owner. When pg_cron runs in another database, the 55000 error's hint holds
-- the exact cron.schedule_in_database(...) statement to run there as a
-- superuser; it names the pack's owner as the job's user (username =>):
-- without it pg_cron would run the job as that superuser, calling functions
-- the owner can replace.
-- Returns {"job_name", "jobid", "schedule", "command", "database"}.
-- Callers: the owner, service_role. Errors: 22023 bad schedule; 55000 pg_cron
-- missing or elsewhere; 42501 others, or the owner may not use schema cron.
create or replace function pgshield.schedule_maintenance(p_schedule text default '* * * * *')
returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_name text := pgshield.maintenance_job_name();
  v_command text := pgshield.maintenance_job_command();
  v_jobid bigint;
begin
  perform pgshield.maintenance_check_caller();
  if p_schedule is null
     or p_schedule !~ '^([0-9*/,-]+( [0-9*/,a-zA-Z-]+){4}|@(yearly|annually|monthly|weekly|daily|hourly|reboot)|[1-5]?[0-9] seconds?)$' then
    raise exception using errcode = '22023',
      message = 'p_schedule must be a cron schedule (5 fields), an @daily-style name or ''N seconds''',
      hint = 'e.g. ''* * * * *'' (every minute), ''*/5 * * * *'', ''30 seconds'' (pg_cron 1.5+)';
  end if;
  perform pgshield.maintenance_require_cron(format('select cron.schedule_in_database(%L, %L, %L, %L, username => %L);',
    v_name, p_schedule, v_command, current_database(), current_user));
  execute format('select %I.schedule($1, $2, $3)', 'cron') into v_jobid using v_name, p_schedule, v_command;
  return jsonb_build_object('job_name', v_name, 'jobid', v_jobid, 'schedule', p_schedule,
                            'command', v_command, 'database', current_database());
end
$$;

revoke all on function pgshield.schedule_maintenance(text) from public, anon, authenticated, service_role;
grant execute on function pgshield.schedule_maintenance(text) to service_role;

-- Removes this database's maintenance job; true when there was one.
-- Callers: the owner, service_role. Errors: 55000 pg_cron missing or elsewhere
-- (the hint holds the statement to run there as a superuser: by job id, since
-- cron.unschedule(name) only finds the caller's own jobs and the job is the
-- owner's); 42501 others, or the owner may not use schema cron.
create or replace function pgshield.unschedule_maintenance() returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_name text := pgshield.maintenance_job_name();
  v_jobid bigint;
begin
  perform pgshield.maintenance_check_caller();
  perform pgshield.maintenance_require_cron(format(
    'select cron.unschedule(j.jobid) from cron.job j where j.jobname = %L and j.database = %L;',
    v_name, current_database()));
  execute format('select j.jobid from %I.job j where j.jobname = $1', 'cron') into v_jobid using v_name;
  if v_jobid is null then
    return false;
  end if;
  execute format('select %I.unschedule($1)', 'cron') using v_jobid;
  return true;
end
$$;

revoke all on function pgshield.unschedule_maintenance() from public, anon, authenticated, service_role;
grant execute on function pgshield.unschedule_maintenance() to service_role;

-- ----------------------------------------------------------------- status ----

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

-- ---------------------------------------------------------------- metrics ----

-- A Prometheus label value: backslash, double quote and newline escaped.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.metrics_label(p_value text) returns text
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
  select '"' || replace(replace(replace(coalesce(p_value, ''), '\', '\\'), '"', '\"'), E'\n', '\n') || '"'
$$;

revoke all on function pgshield.metrics_label(text) from public, anon, authenticated, service_role;
grant execute on function pgshield.metrics_label(text) to service_role;

-- The pack's state in the Prometheus text exposition format (version 0.0.4):
--   pgshield_rate_limit_decisions_total{policy,outcome}   counter ('' = direct keys)
--   pgshield_rate_limit_state_rows{state="live"|"expired"} gauge
--   pgshield_breaker_state{breaker,state}                  gauge (1 for the current state)
--   pgshield_breaker_transitions_total{breaker}            counter (state changes)
--   pgshield_teams, pgshield_team_members                  gauge
--   pgshield_maintenance_runs_total, pgshield_maintenance_run_duration_seconds (summary),
--   pgshield_maintenance_last_run_timestamp_seconds, pgshield_maintenance_deleted_rows_total{task},
--   pgshield_maintenance_task_errors_total{task}, pgshield_maintenance_backlog{task}
-- Families of modules that are not installed are left out. Reads other
-- modules' state (never writes it) through dynamic SQL guarded by to_regclass.
-- Callers: the owner, service_role. Errors: 42501 others.
create or replace function pgshield.metrics() returns text
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_out text[] := '{}'::text[];
  v_lines text[];
  v_now timestamptz := pgshield.now();
  v_live bigint;
  v_expired bigint;
  v_count bigint;
begin
  perform pgshield.maintenance_check_caller();

  if to_regclass('pgshield.rate_limit_counters') is not null then
    execute $sql$
      select coalesce(array_agg(l order by l), '{}')
        from (select format('pgshield_rate_limit_decisions_total{policy=%s,outcome="allowed"} %s',
                            pgshield.metrics_label(c.policy), c.allowed) as l
                from pgshield.rate_limit_counters c
              union all
              select format('pgshield_rate_limit_decisions_total{policy=%s,outcome="denied"} %s',
                            pgshield.metrics_label(c.policy), c.denied)
                from pgshield.rate_limit_counters c) x
    $sql$ into v_lines;
    v_out := v_out
      || '# HELP pgshield_rate_limit_decisions_total Rate limit decisions per policy (policy "" = direct keys) and outcome.'::text
      || '# TYPE pgshield_rate_limit_decisions_total counter'::text
      || v_lines;
  end if;
  if to_regclass('pgshield.rate_limit_state') is not null then
    execute 'select count(*) filter (where s.expires_at > $1), count(*) filter (where s.expires_at <= $1)
               from (select x.expires_at from pgshield.rate_limit_state x
                     union all
                     select y.expires_at from pgshield.rate_limit_policy_state y) s'
      into v_live, v_expired using v_now;
    v_out := v_out
      || '# HELP pgshield_rate_limit_state_rows Rows of rate limit state: live, or expired and waiting for cleanup.'::text
      || '# TYPE pgshield_rate_limit_state_rows gauge'::text
      || format('pgshield_rate_limit_state_rows{state="live"} %s', v_live)
      || format('pgshield_rate_limit_state_rows{state="expired"} %s', v_expired);
  end if;

  if to_regclass('pgshield.breakers') is not null then
    execute $sql$
      select coalesce(array_agg(format('pgshield_breaker_state{breaker=%s,state="%s"} %s',
                                       pgshield.metrics_label(b.name), s.state,
                                       case when b.state = s.state then 1 else 0 end)
                                order by b.name, s.n), '{}')
        from pgshield.breakers b
       cross join unnest(array['closed', 'open', 'half_open', 'forced_open', 'disabled'])
             with ordinality s(state, n)
    $sql$ into v_lines;
    v_out := v_out
      || '# HELP pgshield_breaker_state Circuit breaker state: 1 for the state each breaker is in.'::text
      || '# TYPE pgshield_breaker_state gauge'::text || v_lines;
    execute $sql$
      select coalesce(array_agg(format('pgshield_breaker_transitions_total{breaker=%s} %s',
                                       pgshield.metrics_label(b.name), b.generation - 1) order by b.name), '{}')
        from pgshield.breakers b
    $sql$ into v_lines;
    v_out := v_out
      || '# HELP pgshield_breaker_transitions_total State changes of each breaker since it was created.'::text
      || '# TYPE pgshield_breaker_transitions_total counter'::text || v_lines;
  end if;

  if to_regclass('pgshield.teams') is not null then
    execute 'select count(*) from pgshield.teams' into v_count;
    v_out := v_out
      || '# HELP pgshield_teams Teams that exist.'::text
      || '# TYPE pgshield_teams gauge'::text
      || format('pgshield_teams %s', v_count);
  end if;
  if to_regclass('pgshield.team_members') is not null then
    execute 'select count(*) from pgshield.team_members' into v_count;
    v_out := v_out
      || '# HELP pgshield_team_members Memberships of all teams.'::text
      || '# TYPE pgshield_team_members gauge'::text
      || format('pgshield_team_members %s', v_count);
  end if;

  select coalesce(array_agg(l order by o, l), '{}') into v_lines
    from (select 1 as o, '# HELP pgshield_maintenance_runs_total Maintenance runs.' as l
          union all select 2, '# TYPE pgshield_maintenance_runs_total counter'
          union all select 3, format('pgshield_maintenance_runs_total %s', s.runs) from pgshield.maintenance_totals s
          union all select 4, '# HELP pgshield_maintenance_run_duration_seconds Time spent in maintenance runs.'
          union all select 5, '# TYPE pgshield_maintenance_run_duration_seconds summary'
          union all select 6, format('pgshield_maintenance_run_duration_seconds_sum %s', round(s.seconds::numeric, 6))
                      from pgshield.maintenance_totals s
          union all select 7, format('pgshield_maintenance_run_duration_seconds_count %s', s.runs)
                      from pgshield.maintenance_totals s
          union all select 8, '# HELP pgshield_maintenance_last_run_timestamp_seconds When the last maintenance run started (Unix time; 0: never).'
          union all select 9, '# TYPE pgshield_maintenance_last_run_timestamp_seconds gauge'
          union all select 10, format('pgshield_maintenance_last_run_timestamp_seconds %s',
                                      coalesce(round(extract(epoch from s.last_started_at), 3), 0))
                      from pgshield.maintenance_totals s
          union all select 11, '# HELP pgshield_maintenance_deleted_rows_total Rows each maintenance task deleted.'
          union all select 12, '# TYPE pgshield_maintenance_deleted_rows_total counter'
          union all select 13, format('pgshield_maintenance_deleted_rows_total{task=%s} %s', pgshield.metrics_label(t.task), t.deleted)
                      from pgshield.maintenance_tasks t
          union all select 14, '# HELP pgshield_maintenance_task_errors_total Maintenance task runs that failed.'
          union all select 15, '# TYPE pgshield_maintenance_task_errors_total counter'
          union all select 16, format('pgshield_maintenance_task_errors_total{task=%s} %s', pgshield.metrics_label(t.task), t.errors)
                      from pgshield.maintenance_tasks t
          union all select 17, '# HELP pgshield_maintenance_backlog 1 when the task''s last run stopped at the time budget with rows left.'
          union all select 18, '# TYPE pgshield_maintenance_backlog gauge'
          union all select 19, format('pgshield_maintenance_backlog{task=%s} %s', pgshield.metrics_label(t.task),
                                      case when t.last_status = 'more' then 1 else 0 end)
                      from pgshield.maintenance_tasks t) x;
  v_out := v_out || v_lines;
  return array_to_string(v_out, E'\n') || E'\n';
end
$$;

revoke all on function pgshield.metrics() from public, anon, authenticated, service_role;
grant execute on function pgshield.metrics() to service_role;

-- ------------------------------------------------------------------ seeds ----
-- The tasks of the modules installed before this one. A module installed
-- later adds its own row in its own migration (insert ... on conflict (task)
-- do nothing); rows are data, edited with set_maintenance_task().

insert into pgshield.maintenance_tasks (task, module, cleanup, batch_size, retention, tables, max_rows, position)
values ('maintenance', 'maintenance', 'pgshield.maintenance_cleanup(integer, interval)', 10000,
        interval '7 days', '{pgshield.maintenance_runs}', 100000, 900)
on conflict (task) do nothing;

-- Rate limit state: batches of 200 (well under a millisecond each, so the
-- pauses between them come often), and rows whose window ended less than a
-- minute ago stay (the retention is cleanup_expired_rate_limits' p_expired_for).
insert into pgshield.maintenance_tasks (task, module, cleanup, batch_size, retention, tables, max_rows, position)
select 'rate_limit', 'rate_limit', 'pgshield.cleanup_expired_rate_limits(integer, interval)', 200,
       interval '1 minute', '{pgshield.rate_limit_state,pgshield.rate_limit_policy_state}', 10000000, 10
 where to_regprocedure('pgshield.cleanup_expired_rate_limits(integer, interval)') is not null
on conflict (task) do nothing;

insert into pgshield.maintenance_tasks (task, module, cleanup, batch_size, tables, max_rows, position)
select 'breaker', 'breaker', 'pgshield.breaker_cleanup(integer)', 10000,
       '{pgshield.breaker_buckets,pgshield.breaker_events,pgshield.breaker_leases}', 1000000, 20
 where to_regprocedure('pgshield.breaker_cleanup(integer)') is not null
on conflict (task) do nothing;

insert into pgshield.maintenance_tasks (task, module, cleanup, batch_size, tables, max_rows, position)
select 'teams', 'teams', 'pgshield.teams_cleanup(integer)', 10000,
       '{pgshield.team_invitations,pgshield.team_audit}', 1000000, 30
 where to_regprocedure('pgshield.teams_cleanup(integer)') is not null
on conflict (task) do nothing;

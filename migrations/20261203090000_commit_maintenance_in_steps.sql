-- maintenance: the pg_cron job commits in steps, so cleanup never holds the
-- rows it deleted for the whole time budget.
-- run_maintenance runs every batch of a run in the caller's transaction, so
-- the rows it deletes stay locked until the run ends (up to its 5 s budget):
-- a rate limit key that comes back after its row was deleted, or an
-- acquire_breaker that deletes expired leases, waited for that commit.
-- * run_maintenance_step(p_started, p_time_budget, p_pause_ratio): one
--   run_maintenance of at most 100 ms of what is left of the budget, no pause
--   inside; returns the pause before the next step, or null when done.
-- * maintenance_job_command(p_time_budget, p_pause_ratio): the job's command,
--   a `do` block that runs steps, commits after each and pauses between them
--   (a `do` block: a procedure that commits may not pin its search_path).
-- * maintenance_check_budget: the budget and pause ratio checks of both.
-- * schedule_maintenance schedules that command, and this migration changes
--   an existing pgshield job that still runs `select pgshield.run_maintenance()`.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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
          if clock_timestamp() >= v_deadline then
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

-- Creates or replaces (by job name) the pg_cron job that runs
-- maintenance_job_command() (cleanup committed in steps) in this database on p_schedule (cron
-- syntax; '[1-59] seconds' needs pg_cron 1.5+). The job runs as the pack's
-- owner. When pg_cron runs in another database, the 55000 error's hint holds
-- the exact cron.schedule_in_database(...) statement to run there.
-- Returns {"job_name", "jobid", "schedule", "command", "database"}.
-- Callers: the owner, service_role. Errors: 22023 bad schedule; 55000 pg_cron
-- missing or elsewhere; 42501 others.
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
  perform pgshield.maintenance_require_cron(format('select cron.schedule_in_database(%L, %L, %L, %L);',
    v_name, p_schedule, v_command, current_database()));
  execute format('select %I.schedule($1, $2, $3)', 'cron') into v_jobid using v_name, p_schedule, v_command;
  return jsonb_build_object('job_name', v_name, 'jobid', v_jobid, 'schedule', p_schedule,
                            'command', v_command, 'database', current_database());
end
$$;

revoke all on function pgshield.schedule_maintenance(text) from public, anon, authenticated, service_role;
grant execute on function pgshield.schedule_maintenance(text) to service_role;

-- The job scheduled by an earlier release calls run_maintenance(): it now
-- runs the command in steps. pg_cron lets only a job's owner (or a
-- superuser) alter it; when that is someone else the warning says what to run.
do $$
declare
  v_jobid bigint;
begin
  if to_regclass('cron.job') is null then
    return;
  end if;
  execute format('select j.jobid from %I.job j where j.jobname = $1 and j.command = $2', 'cron')
    into v_jobid using pgshield.maintenance_job_name(), 'select pgshield.run_maintenance()';
  if v_jobid is null then
    return;
  end if;
  begin
    execute format('select %I.alter_job(job_id => $1, command => $2)', 'cron')
      using v_jobid, pgshield.maintenance_job_command();
  exception when others then
    raise warning using message = format('pgshield: could not change maintenance job %s: %s', v_jobid, sqlerrm),
      hint = 'as the job''s owner run: select pgshield.schedule_maintenance(''<its schedule>'');';
  end;
end
$$;

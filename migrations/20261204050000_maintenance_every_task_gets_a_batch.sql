-- maintenance: every task gets at least its first batch in every run. A run
-- stopped at its deadline before a task's first batch, so while the first
-- task (rate_limit) had a long backlog, every job step spent its budget
-- there and the breaker, teams and maintenance tasks got no batch at all,
-- though their runs and last_run_at moved on (and the metrics said so).
-- A run may now overrun its budget by one batch per task.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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

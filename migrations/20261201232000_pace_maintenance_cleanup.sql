-- Maintenance cleanup that leaves decisions their latency (issue 12, benchmark).
--
-- cleanup_expired_rate_limits(p_batch_size, p_expired_for): each batch goes on
-- from the page where the session's previous batch stopped (a TID range scan,
-- round the whole table before it reports less than a batch) instead of
-- reading again every page that earlier batches emptied, deletes by ctid
-- instead of joining back on the primary key, and leaves rows whose window
-- ended less than p_expired_for ago. The one-argument form is that with
-- p_expired_for = 0.
-- run_maintenance(p_time_budget, p_pause_ratio): after each batch a pause of
-- p_pause_ratio times the batch's duration; run_maintenance(p_time_budget)
-- pauses with ratio 1.
-- The rate_limit task calls the two-argument cleanup with a retention of one
-- minute and batches of 200 (where it still has the first defaults).

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- Deletes up to p_batch_size rows whose state expired at least p_expired_for
-- ago (expired state is equivalent to no row), skipping rows that concurrent
-- decisions hold locked, and returns how many it deleted. Call it in a loop
-- until it returns less than the batch. Each batch goes on from the page where
-- this session's previous batch stopped (the custom setting
-- pgshield.rate_limit_cleanup_block, a hint only) and goes round the whole
-- table before it reports less than a batch, so no batch reads again the
-- pages that earlier batches emptied. p_expired_for (the maintenance task's
-- retention) leaves alone keys whose window has only just ended: such a key
-- is often decided on again at once, and that decision would wait for the
-- commit of the cleanup that deleted its row.
-- Callers: the owner, service_role. Errors: 22023 bad batch size or interval.
create or replace function pgshield.cleanup_expired_rate_limits(p_batch_size integer, p_expired_for interval)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_before timestamptz;
  v_from bigint;
  v_lo tid;
  v_hi tid := '(4294967295,65535)'::tid;
  v_count integer := 0;
  v_n integer;
  v_block bigint;
  v_last bigint;
begin
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023', message = 'p_batch_size must be a positive integer';
  end if;
  if p_expired_for is null or p_expired_for < interval '0' then
    raise exception using errcode = '22023', message = 'p_expired_for must be an interval of zero or more';
  end if;
  v_before := pgshield.now() - p_expired_for;
  v_from := least(coalesce(substring(current_setting('pgshield.rate_limit_cleanup_block', true) from '^[0-9]{1,10}$'),
                           '0')::bigint, 4294967294);
  v_lo := format('(%s,0)', v_from)::tid;
  -- From the hint to the end of the table (a TID range scan), then from the
  -- start up to the hint; deleted by ctid, which the row lock keeps stable.
  for v_pass in 1..2 loop
    exit when v_count >= p_batch_size or v_hi = '(0,0)'::tid;
    with d as (
      delete from pgshield.rate_limit_state s
       where s.ctid = any (array(select x.ctid from pgshield.rate_limit_state x
                                  where x.ctid >= v_lo and x.ctid < v_hi and x.expires_at <= v_before
                                  limit p_batch_size - v_count
                                    for update skip locked))
         and s.expires_at <= v_before
      returning (s.ctid::text::point)[0]::bigint as block)
    select count(*)::integer, max(d.block) into v_n, v_block from d;
    v_count := v_count + v_n;
    v_last := coalesce(v_block, v_last);
    v_hi := v_lo;
    v_lo := '(0,0)'::tid;
  end loop;
  perform set_config('pgshield.rate_limit_cleanup_block', coalesce(v_last, 0)::text, false);
  return v_count;
end
$$;

revoke all on function pgshield.cleanup_expired_rate_limits(integer, interval)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.cleanup_expired_rate_limits(integer, interval) to service_role;

-- Deletes up to p_batch_size rows whose state has expired, as the function
-- above with p_expired_for = 0, and returns how many it deleted.
-- Callers: the owner, service_role. Errors: 22023 bad batch size.
create or replace function pgshield.cleanup_expired_rate_limits(p_batch_size integer default 10000)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.cleanup_expired_rate_limits(p_batch_size, interval '0');
end
$$;

revoke all on function pgshield.cleanup_expired_rate_limits(integer) from public, anon, authenticated, service_role;
grant execute on function pgshield.cleanup_expired_rate_limits(integer) to service_role;

-- Calls every enabled task's cleanup function in batches until it deletes
-- less than a batch or p_time_budget (wall clock, pauses included) is spent,
-- in task order. After each batch it pauses for p_pause_ratio times as long
-- as the batch took (0: back to back; 1: at most half of one CPU), so that
-- decisions running beside it keep their latency on small machines: a
-- backend that never yields delays every query that waits behind it on its
-- core. Tasks whose function does not exist are skipped; a task that fails is
-- reported (its batches roll back) and the others still run. Everything a run
-- deletes is deleted in the caller's transaction: a short budget keeps the
-- deleted rows' locks short. When another run is in progress it returns at
-- once with "skipped". Returns
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
  if p_time_budget is null or p_time_budget <= interval '0' or p_time_budget > interval '10 minutes' then
    raise exception using errcode = '22023',
      message = 'p_time_budget must be a positive interval of at most 10 minutes';
  end if;
  if p_pause_ratio is null or p_pause_ratio < 0 or p_pause_ratio > 100 or p_pause_ratio = 'NaN' then
    raise exception using errcode = '22023', message = 'p_pause_ratio must be between 0 and 100',
      hint = '0 runs the batches back to back; 1 pauses after each batch as long as it took';
  end if;
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

update pgshield.maintenance_tasks t
   set cleanup = 'pgshield.cleanup_expired_rate_limits(integer, interval)',
       retention = interval '1 minute',
       batch_size = case when t.batch_size = 10000 then 200 else t.batch_size end
 where t.task = 'rate_limit'
   and t.cleanup = 'pgshield.cleanup_expired_rate_limits(integer)'
   and t.retention is null;

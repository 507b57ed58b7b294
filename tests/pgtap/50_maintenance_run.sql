-- maintenance: run_maintenance on moved-clock state, skipped and failing tasks, the time budget, metrics.
begin;
\ir _helpers.psql
select plan(20);

-- The clock stands in 2001: only this file's rows have expired, so the rate
-- limit task's counts are exact and a project's own state is never touched.
select pgshield.set_clock('2001-01-01 00:00:10+00');
select public.define_rate_limit_policy('pgshield_t_m', '{"free": {"minute": 1}}'::jsonb, 'fixed_window');
insert into pgshield.rate_limit_state (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)
select 'pgshield_t_x-' || g, 60, 'fixed_window', 10, '2001-01-01 00:00:00+00', 1, '2001-01-01 00:01:00+00'
  from generate_series(1, 25) g;
select increment_rate_limit('pgshield_t_live', 5, 3600);
select pgshield.set_maintenance_task('rate_limit', p_batch_size => 10);
select pgshield.set_clock('2001-01-01 00:05:00+00');

create temp table pgshield_t_runs as select s.runs from pgshield.maintenance_totals s where s.id;
create temp table pgshield_t_r as select pgshield.run_maintenance(interval '1 minute') as r;
create function pg_temp.task_of(p_run jsonb, p_task text) returns jsonb language sql immutable
set search_path = pg_catalog, pg_temp
as $$ select t from jsonb_array_elements(p_run -> 'tasks') t where t ->> 'task' = p_task $$;

select is((select pg_temp.task_of(r, 'rate_limit') ->> 'deleted' from pgshield_t_r)::integer, 25,
  'the rate limit task deleted every expired row');
select is((select pg_temp.task_of(r, 'rate_limit') ->> 'batches' from pgshield_t_r)::integer, 3,
  '... in batches of the task''s size (10 + 10 + 5)');
select is((select pg_temp.task_of(r, 'rate_limit') ->> 'status' from pgshield_t_r), 'done', '... and is done');
select is((select count(*)::integer from pgshield.rate_limit_state where key like 'pgshield\_t\_x-%'), 0,
  'no expired row of this file is left');
select is((select count(*)::integer from pgshield.rate_limit_state where key = 'pgshield_t_live'), 1,
  'live state stays');
select is((select r ->> 'complete' from pgshield_t_r), 'true', 'the run is complete');
select is((select jsonb_agg(t.e ->> 'task' order by t.n) from pgshield_t_r, jsonb_array_elements(r -> 'tasks')
            with ordinality t(e, n) where t.e ->> 'task' in ('rate_limit', 'maintenance')),
  '["rate_limit", "maintenance"]'::jsonb, 'tasks run in their order, this module''s own cleanup last');
select is((select s.runs from pgshield.maintenance_totals s where s.id), (select runs + 1 from pgshield_t_runs),
  'the run is counted');
select ok(exists (select 1 from pgshield.maintenance_runs m where m.started_at = '2001-01-01 00:05:00+00'
                   and m.result = (select r from pgshield_t_r)), 'the run is recorded with what it returned');
select ok((select t.deleted >= 25 and t.last_deleted = 25 and t.last_status = 'done'
             from pgshield.maintenance_tasks t where t.task = 'rate_limit'), 'the task row counts what it deleted');

-- A module that is not installed is skipped; a failing cleanup is reported and the others run.
-- A cleanup stand-in that raises: maintenance_status() refuses a "batch" above 1000 runs.
insert into pgshield.maintenance_tasks (task, module, cleanup, position)
values ('pgshield_t_missing', 'pgshield_t_gone', 'pgshield.pgshield_t_gone(integer)', 1),
       ('pgshield_t_failing', 'pgshield_t_fail', 'pgshield.maintenance_status(integer)', 2);
insert into pgshield.rate_limit_state (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)
values ('pgshield_t_y', 60, 'fixed_window', 10, '2001-01-01 00:00:00+00', 1, '2001-01-01 00:01:00+00');
create temp table pgshield_t_r2 as select pgshield.run_maintenance() as r;
select is((select pg_temp.task_of(r, 'pgshield_t_missing') ->> 'status' from pgshield_t_r2), 'skipped',
  'a task whose function does not exist is skipped');
select is((select pg_temp.task_of(r, 'pgshield_t_failing') ->> 'status' from pgshield_t_r2), 'failed',
  'a task that raises is reported as failed');
select matches((select pg_temp.task_of(r, 'pgshield_t_failing') ->> 'error' from pgshield_t_r2),
  '^22023: p_runs must be between 0 and 1000$', '... with its SQLSTATE and message');
select is((select pg_temp.task_of(r, 'rate_limit') ->> 'deleted' from pgshield_t_r2)::integer, 1,
  '... and the tasks after it still run');
select is((select r ->> 'complete' from pgshield_t_r2), 'false', 'a run with a failed task is not complete');
delete from pgshield.maintenance_tasks where task like 'pgshield\_t\_%';

-- The time budget: once spent, every task stops with status "more", after
-- its first batch (which every task gets, so that none starves the next).
insert into pgshield.rate_limit_state (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)
values ('pgshield_t_z', 60, 'fixed_window', 10, '2001-01-01 00:00:00+00', 1, '2001-01-01 00:01:00+00'),
       ('pgshield_t_z2', 60, 'fixed_window', 10, '2001-01-01 00:00:00+00', 1, '2001-01-01 00:01:00+00');
update pgshield.maintenance_tasks set batch_size = 1 where task = 'rate_limit';
create temp table pgshield_t_r3 as select pgshield.run_maintenance(interval '1 microsecond') as r;
select is((select pg_temp.task_of(r, 'rate_limit') ->> 'status' from pgshield_t_r3),
  'more', 'a spent time budget leaves the rest to the next run ...');
select is((select pg_temp.task_of(r, 'rate_limit') ->> 'batches' from pgshield_t_r3)::integer, 1,
  '... after the one batch every task gets');

-- ---------------------------------------------------------------- metrics ----
select increment_rate_limit('pgshield_t_live', 5, 3600);
select check_rate_limit('pgshield_t_m', 1, null, 'pgshield_t_s');
select check_rate_limit('pgshield_t_m', 1, null, 'pgshield_t_s');
select is_empty(
  $$ select l from regexp_split_to_table(rtrim(pgshield.metrics(), E'\n'), E'\n') l
      where l !~ '^# (HELP|TYPE) pgshield_[a-z_]+ .+$'
        and l !~ '^pgshield_[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)+\})? -?[0-9]+(\.[0-9]+)?$' $$,
  'every metrics line is a HELP, a TYPE or a sample of a pgshield_ metric');
select matches(pgshield.metrics(),
  E'\npgshield_rate_limit_decisions_total\\{policy="pgshield_t_m",outcome="allowed"\\} 1\n',
  'decisions are counted per policy: allowed');
select matches(pgshield.metrics(),
  E'\npgshield_rate_limit_decisions_total\\{policy="pgshield_t_m",outcome="denied"\\} 1\n',
  '... and denied');

select * from finish();
rollback;

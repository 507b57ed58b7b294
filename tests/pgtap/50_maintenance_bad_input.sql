-- maintenance: bad input is refused with 22023 and writes nothing.
begin;
\ir _helpers.psql
select plan(20);

select pgshield.set_clock('2001-01-01 00:00:10+00');
create temp table pgshield_t_before as
select (select count(*) from pgshield.maintenance_runs) as runs,
       (select s.runs from pgshield.maintenance_totals s where s.id) as total_runs,
       (select jsonb_agg(to_jsonb(t) order by t.task) from pgshield.maintenance_tasks t) as tasks;

select pg_temp.act_as('service_role');
select throws_ok($$ select pgshield.run_maintenance(null) $$, '22023', null, 'a null time budget is bad input');
select throws_ok($$ select pgshield.run_maintenance(interval '0') $$, '22023', null, 'a zero time budget is bad input');
select throws_ok($$ select pgshield.run_maintenance(interval '-1 second') $$, '22023', null,
  'a negative time budget is bad input');
select throws_ok($$ select pgshield.run_maintenance(interval '11 minutes') $$, '22023', null,
  'a time budget above 10 minutes is bad input');
select throws_ok($$ select pgshield.schedule_maintenance(null) $$, '22023', null, 'a null schedule is bad input');
select throws_ok($$ select pgshield.schedule_maintenance('every minute') $$, '22023', null,
  'a schedule that is not cron syntax is bad input');
select throws_ok($$ select pgshield.schedule_maintenance('* * * * *; select 1') $$, '22023', null,
  'a schedule with anything else in it is bad input');
select throws_ok($$ select pgshield.set_maintenance_task('pgshield_t_nope') $$, '22023', null,
  'an unknown task is bad input');
select throws_ok($$ select pgshield.set_maintenance_task('rate_limit', p_batch_size => 0) $$, '22023', null,
  'a batch size of 0 is bad input');
select throws_ok($$ select pgshield.set_maintenance_task('maintenance', p_retention => interval '-1 day') $$,
  '22023', null, 'a negative retention is bad input');
select throws_ok($$ select pgshield.maintenance_status(-1) $$, '22023', null, 'a negative run count is bad input');
select throws_ok($$ select pgshield.maintenance_cleanup(0, interval '1 day') $$, '22023', null,
  'a batch size of 0 is bad input for the module''s own cleanup');
select throws_ok($$ select pgshield.maintenance_cleanup(10, null) $$, '22023', null,
  'a null retention is bad input for the module''s own cleanup');
-- Past the timestamp range a retention used to be stored, then fail every run with 22008.
select throws_ok($$ select pgshield.set_maintenance_task('maintenance', p_retention => interval '10000 years') $$,
  '22023', null, 'a retention over 1000 years is bad input');
select throws_ok(
  $$ select pgshield.set_maintenance_task('maintenance', p_retention => interval '-300000 years 108000030 days') $$,
  '22023', null, 'a retention that compares as 30 days but overflows the clock is bad input');
select throws_ok($$ select pgshield.set_maintenance_task('maintenance', p_retention => interval '1 month -29 days') $$,
  '22023', null, 'a retention of mixed signs is bad input (2 days in January, 1 day ahead in March)');
select throws_ok($$ select pgshield.maintenance_cleanup(10, interval '300000 years') $$, '22023', null,
  'a retention past the timestamp range is bad input for the module''s own cleanup');

select pg_temp.act_as_owner();
select is(
  (select jsonb_build_object('runs', (select count(*) from pgshield.maintenance_runs),
                             'total_runs', (select s.runs from pgshield.maintenance_totals s where s.id),
                             'tasks', (select jsonb_agg(to_jsonb(t) order by t.task) from pgshield.maintenance_tasks t))),
  (select jsonb_build_object('runs', b.runs, 'total_runs', b.total_runs, 'tasks', b.tasks) from pgshield_t_before b),
  'nothing was written: no run recorded, no task changed');
select is(pgshield.maintenance_cleanup(10, interval '1000 years'), 0, 'a retention of 1000 years is good input');
select throws_ok(
  $$ insert into pgshield.maintenance_tasks (task, module, cleanup) values ('pgshield_t_x', 'x', 'public.f(integer)') $$,
  '23514', null, 'a task''s cleanup must be a pgshield function taking a batch size');

select * from finish();
rollback;

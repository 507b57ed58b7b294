-- maintenance: only service_role and the owner may run, schedule or read metrics.
begin;
\ir _helpers.psql
select plan(21);

select pgshield.set_clock('2001-01-01 00:00:10+00');
-- The pg_cron job's command (a do block that commits after each step).
select pgshield.maintenance_job_command() as job_command \gset

-- ---------------------------------------------------------------- grants ----
select ok(
  not exists (
    select 1 from pg_class c
     where c.relnamespace = 'pgshield'::regnamespace and c.relname like 'maintenance\_%' and c.relkind = 'r'
       and (has_table_privilege('anon', c.oid, 'select,insert,update,delete')
            or has_table_privilege('authenticated', c.oid, 'select,insert,update,delete')
            or has_table_privilege('service_role', c.oid, 'select,insert,update,delete'))),
  'API roles have no privilege on any maintenance table');
select ok(
  (select bool_and(c.relrowsecurity) from pg_class c
    where c.relnamespace = 'pgshield'::regnamespace and c.relname like 'maintenance\_%' and c.relkind = 'r'),
  'row-level security is on for every maintenance table');
select is_empty(
  $$ select p.oid::regprocedure from pg_proc p
      where p.pronamespace = 'pgshield'::regnamespace
        and (p.proname like '%maintenance%' or p.proname like 'metrics%')
        and (has_function_privilege('anon', p.oid, 'execute')
             or has_function_privilege('authenticated', p.oid, 'execute')) $$,
  'anon and authenticated may execute no maintenance function');

-- ------------------------------------------------------------ API roles ----
select pg_temp.act_as('anon');
select throws_ok($$ select pgshield.run_maintenance() $$, '42501', null, 'anon may not run maintenance');
select throws_ok($$ select pgshield.metrics() $$, '42501', null, 'anon may not read metrics');
select throws_ok($$ select pgshield.schedule_maintenance() $$, '42501', null, 'anon may not schedule maintenance');
select throws_ok(:'job_command', '42501', null, 'anon may not run the maintenance job''s command');

select pg_temp.act_as('authenticated', gen_random_uuid());
select throws_ok($$ select pgshield.run_maintenance() $$, '42501', null, 'authenticated may not run maintenance');
select throws_ok($$ select pgshield.metrics() $$, '42501', null, 'authenticated may not read metrics');
select throws_ok($$ select pgshield.unschedule_maintenance() $$, '42501', null,
  'authenticated may not unschedule maintenance');
select throws_ok($$ select pgshield.maintenance_status() $$, '42501', null,
  'authenticated may not read the maintenance status');
select throws_ok(:'job_command', '42501', null, 'authenticated may not run the maintenance job''s command');
select throws_ok($$ select pgshield.maintenance_job_command() $$, '42501', null,
  'authenticated may not read the maintenance job''s command');
select throws_ok($$ select pgshield.run_maintenance_step(now(), interval '1 second', 1) $$, '42501', null,
  'authenticated may not run a maintenance step');

select pg_temp.act_as('service_role');
select ok((pgshield.run_maintenance() ->> 'complete') is not null, 'service_role may run maintenance');
select matches(pgshield.metrics(), '# TYPE pgshield_maintenance_runs_total counter', 'service_role may read metrics');
select ok(pgshield.maintenance_status() ? 'tasks', 'service_role may read the maintenance status');
select ok(pgshield.set_maintenance_task('rate_limit', p_batch_size => 5000) ->> 'batch_size' = '5000',
  'service_role may tune a task');

select ok(pgshield.run_maintenance_step(clock_timestamp(), interval '1 second', 1) is null,
  'service_role may run a maintenance step (nothing more to do: the job would stop)');
-- The job commits after each step, so it runs only on its own, as pg_cron calls it.
select throws_ok(:'job_command', '2D000', null,
  'inside a transaction block the maintenance job''s command is refused with 2D000');

select pg_temp.act_as_owner();
select ok((pgshield.run_maintenance() ->> 'complete') is not null, 'the owner may run maintenance');

select * from finish();
rollback;

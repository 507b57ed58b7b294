-- maintenance: the rate limit cleanup that run_maintenance calls (rows just
-- expired stay a while, batches go on where the previous one stopped and go
-- round the table), and run_maintenance's pause ratio.
begin;
\ir _helpers.psql
select plan(20);

-- The clock stands in 2001: only this file's rows have expired, so the counts
-- are exact and a project's own state is never touched.
select pgshield.set_clock('2001-01-01 00:10:00+00');
insert into pgshield.rate_limit_state (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)
select 'pgshield_t_old-' || g, 60, 'fixed_window', 10, timestamptz '2001-01-01 00:00:00+00', 1,
       timestamptz '2001-01-01 00:01:00+00'
  from generate_series(1, 30) g
union all
select 'pgshield_t_just', 60, 'fixed_window', 10, '2001-01-01 00:09:00+00', 1, '2001-01-01 00:09:30+00'
union all
select 'pgshield_t_live', 60, 'fixed_window', 10, '2001-01-01 00:10:00+00', 1, '2001-01-01 00:11:00+00';

-- ------------------------------------------------------- expired for a while ----
select is(pgshield.cleanup_expired_rate_limits(1000, interval '1 minute'), 30,
  'the cleanup deletes the rows that expired at least p_expired_for ago');
select is((select array_agg(key order by key) from pgshield.rate_limit_state where key like 'pgshield\_t\_%'),
  array['pgshield_t_just', 'pgshield_t_live'], '... and leaves a row expired 30 s ago, and live state');
select is(pgshield.cleanup_expired_rate_limits(1000, interval '0'), 1, 'with 0 it deletes every expired row');
select is((select array_agg(key order by key) from pgshield.rate_limit_state where key like 'pgshield\_t\_%'),
  array['pgshield_t_live'], '... live state stays');

-- ----------------------------------------------------- a cursor, round the table ----
insert into pgshield.rate_limit_state (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)
select 'pgshield_t_b-' || g, 60, 'fixed_window', 10, '2001-01-01 00:00:00+00', 1, '2001-01-01 00:01:00+00'
  from generate_series(1, 25) g;
select is(pgshield.cleanup_expired_rate_limits(10, interval '1 minute'), 10, 'a batch deletes at most its size');
select ok(current_setting('pgshield.rate_limit_cleanup_block', true) ~ '^[0-9]+$',
  '... and leaves the page it stopped at for the next batch of this session');
select set_config('pgshield.rate_limit_cleanup_block', '4294967295', false);
select is(pgshield.cleanup_expired_rate_limits(10, interval '1 minute'), 10,
  'a batch that starts past the end of the table goes round to its start');
select set_config('pgshield.rate_limit_cleanup_block', 'not a page', false);
select is(pgshield.cleanup_expired_rate_limits(10, interval '1 minute'), 5,
  'a hint that is not a page number counts as page 0; fewer than a batch means done');
select is(pgshield.cleanup_expired_rate_limits(10, interval '1 minute'), 0, '... then nothing');
select is((select count(*)::integer from pgshield.rate_limit_state where key like 'pgshield\_t\_b-%'), 0,
  'every expired row of the batches is gone');

-- ------------------------------------------------------------- pause ratio ----
insert into pgshield.rate_limit_state (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)
select 'pgshield_t_p-' || g, 60, 'fixed_window', 10, '2001-01-01 00:00:00+00', 1, '2001-01-01 00:01:00+00'
  from generate_series(1, 12) g;
select pgshield.set_maintenance_task('rate_limit', p_batch_size => 5);
create function pg_temp.task_of(p_run jsonb, p_task text) returns jsonb language sql immutable
set search_path = pg_catalog, pg_temp
as $$ select t from jsonb_array_elements(p_run -> 'tasks') t where t ->> 'task' = p_task $$;
select is(
  (select t ->> 'deleted' || '/' || (t ->> 'batches') || '/' || (t ->> 'status')
     from pg_temp.task_of(pgshield.run_maintenance(interval '1 minute', 2), 'rate_limit') t),
  '12/3/done', 'run_maintenance with a pause ratio runs every batch (5 + 5 + 2)');
select is(
  (select t ->> 'status' from pg_temp.task_of(pgshield.run_maintenance(interval '1 minute', 0), 'rate_limit') t),
  'done', 'a pause ratio of 0 runs the batches back to back');

select pg_temp.act_as('service_role');
select throws_ok($$ select pgshield.run_maintenance(interval '1 second', -1) $$, '22023', null,
  'a negative pause ratio is bad input');
select throws_ok($$ select pgshield.run_maintenance(interval '1 second', null) $$, '22023', null,
  'a null pause ratio is bad input');
select throws_ok($$ select pgshield.run_maintenance(interval '1 second', 'NaN') $$, '22023', null,
  'a pause ratio that is not a number is bad input');
select throws_ok($$ select pgshield.cleanup_expired_rate_limits(10, interval '-1 second') $$, '22023', null,
  'a negative p_expired_for is bad input');
select throws_ok($$ select pgshield.cleanup_expired_rate_limits(0, interval '1 minute') $$, '22023', null,
  'a batch size of 0 is bad input');

-- ------------------------------------------------------------------ roles ----
select pg_temp.act_as('anon');
select throws_ok($$ select pgshield.run_maintenance(interval '1 second', 1) $$, '42501', null,
  'anon may not run maintenance with a pause ratio');
select pg_temp.act_as('authenticated', gen_random_uuid());
select throws_ok($$ select pgshield.cleanup_expired_rate_limits(10, interval '1 minute') $$, '42501', null,
  'authenticated may not run the rate limit cleanup');
select pg_temp.act_as('service_role');
select ok((pgshield.run_maintenance(interval '1 second', 1) ->> 'complete') is not null,
  'service_role may run maintenance with a pause ratio');

select * from finish();
rollback;

-- breaker: failure-rate and slow-call rules over a window, on a moved clock.
begin;
\ir _helpers.psql
select plan(14);

select pgshield.set_clock('2001-01-01 00:00:00+00');
create function pg_temp.run(p_name text, p_n integer, p_outcome text, p_ms integer default null)
returns boolean[] language sql volatile set search_path = pg_catalog, pg_temp as $$
  select array_agg((public.release_breaker(p_name, (public.acquire_breaker(p_name)).permit, p_outcome, p_ms)).changed
                   order by g)
    from generate_series(1, p_n) g $$;

-- ----------------------------------------------------------- failure rate ----
select public.configure_breaker('pgshield_t_rate', p_failure_threshold => null, p_failure_rate => 0.5,
  p_min_calls => 10, p_window_seconds => 10);
select is(pg_temp.run('pgshield_t_rate', 4, 'failure'), '{f,f,f,f}'::boolean[],
  'below min_calls, failures alone do not trip a rate breaker');
select is(pg_temp.run('pgshield_t_rate', 5, 'success'), '{f,f,f,f,f}'::boolean[], 'successes ...');
select is(pg_temp.run('pgshield_t_rate', 1, 'failure'), '{t}'::boolean[],
  'the tenth call, a failure, makes 5 of 10 = 50 %: open');
select is((select last_reason from pgshield.breaker_status where name = 'pgshield_t_rate'),
  'failure rate 50.0% (5 of 10 calls in 10 s)', 'the reason says which rule tripped');
select public.reset_breaker('pgshield_t_rate', 'pgshield_t again');
select is(pg_temp.run('pgshield_t_rate', 4, 'failure') || pg_temp.run('pgshield_t_rate', 5, 'success'),
  '{f,f,f,f,f,f,f,f,f}'::boolean[], 'after a reset the window starts over (a new generation)');
select pgshield.advance_clock(interval '10 seconds');
select is(pg_temp.run('pgshield_t_rate', 1, 'failure'), '{f}'::boolean[],
  'calls older than the window are forgotten: 1 of 1 is below min_calls');
select is((select calls from pgshield.breaker_status where name = 'pgshield_t_rate'), 1::bigint,
  'the status view counts the window only');
select is(pg_temp.run('pgshield_t_rate', 10, 'ignored'), '{f,f,f,f,f,f,f,f,f,f}'::boolean[], 'ignored calls ...');
select is((select calls from pgshield.breaker_status where name = 'pgshield_t_rate'), 1::bigint, '... are not counted');

-- -------------------------------------------------------------- slow calls ----
select public.configure_breaker('pgshield_t_slow', p_failure_threshold => 3, p_min_calls => 4,
  p_slow_call_ms => 1000, p_slow_call_rate => 0.6, p_success_threshold => 1);
select is(pg_temp.run('pgshield_t_slow', 2, 'success', 999) || pg_temp.run('pgshield_t_slow', 1, 'success', 1000),
  '{f,f,f}'::boolean[], 'a call of exactly slow_call_ms is slow; one of three is below the rate');
select is(pg_temp.run('pgshield_t_slow', 2, 'success', 5000), '{f,t}'::boolean[],
  'slow successes trip it at the slow-call rate: 2 of 4 no, 3 of 5 = 60 % yes');
select is((select slow_calls from pgshield.breaker_status where name = 'pgshield_t_slow'), 3::bigint,
  'slow calls are in the status view');
select pgshield.advance_clock(interval '30 seconds');
select is(pg_temp.run('pgshield_t_slow', 1, 'success', 2000), '{t}'::boolean[],
  'a slow trial call opens it again (half_open -> open)');
select is((select array_agg(e.to_state order by e.id) from pgshield.breaker_events e where e.name = 'pgshield_t_slow'),
  '{open,half_open,open}'::text[], 'each change recorded once');

select * from finish();
rollback;

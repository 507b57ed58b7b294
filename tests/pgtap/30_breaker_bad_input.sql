-- breaker: hostile input is refused with 22023 and writes nothing; unknown
-- breakers are PT404 when auto-creation is off; auto-creation is bounded.
begin;
\ir _helpers.psql
select plan(42);

select pgshield.set_clock('2001-01-01 00:00:00+00');
select pgshield.set_breaker_settings(true, 1000000);
select public.configure_breaker('pgshield_t_x');
create temp table pgshield_t_before as
  select (select count(*) from pgshield.breakers) as breakers,
         (select count(*) from pgshield.breaker_events) as events,
         (select count(*) from pgshield.breaker_buckets) as buckets;
create function pg_temp.unchanged() returns boolean language sql stable
set search_path = pg_catalog, pg_temp as $$
  select (select count(*) from pgshield.breakers) = b.breakers
     and (select count(*) from pgshield.breaker_events) = b.events
     and (select count(*) from pgshield.breaker_buckets) = b.buckets
     and (select row(x.state, x.generation, x.consecutive_failures, x.failure_threshold)::text
            from pgshield.breakers x where x.name = 'pgshield_t_x') = '(closed,1,0,5)'
    from pg_temp.pgshield_t_before b $$;

-- ------------------------------------------------------------------ names ----
select throws_ok($$ select public.acquire_breaker(null) $$, '22023', null, 'a null name');
select throws_ok($$ select public.acquire_breaker('') $$, '22023', null, 'an empty name');
select throws_ok($$ select public.acquire_breaker('PGSHIELD_T_UPPER') $$, '22023', null, 'upper case');
select throws_ok($$ select public.acquire_breaker('pgshield_t_' || repeat('x', 60)) $$, '22023', null,
  'a name over 63 characters');
select throws_ok($$ select public.acquire_breaker('pgshield_t_x; drop table x') $$, '22023', null, 'punctuation');
select throws_ok($$ select public.acquire_breaker(E'pgshield_t_\n') $$, '22023', null, 'a newline');
select throws_ok($$ select public.configure_breaker('-pgshield_t') $$, '22023', null, 'a leading dash');

-- ---------------------------------------------------------------- release ----
select throws_ok($$ select public.release_breaker('pgshield_t_x', null, 'success') $$, '22023', null, 'a null permit');
select throws_ok($$ select public.release_breaker('pgshield_t_x', -1, 'success') $$, '22023', null, 'a negative permit');
select throws_ok($$ select public.release_breaker('pgshield_t_x', 5, 'success') $$, '22023', null,
  'a permit without a generation');
select throws_ok($$ select public.release_breaker('pgshield_t_x', 99 * 4294967296, 'failure') $$, '22023', null,
  'a permit from a generation that never was');
select throws_ok($$ select public.release_breaker('pgshield_t_x', 4294967296, null) $$, '22023', null, 'a null outcome');
select throws_ok($$ select public.release_breaker('pgshield_t_x', 4294967296, 'FAILURE') $$, '22023', null,
  'an unknown outcome');
select throws_ok($$ select public.release_breaker('pgshield_t_x', 4294967296, 'failure', -1) $$, '22023', null,
  'a negative duration');
select throws_ok($$ select public.release_breaker('pgshield_t_nope', 4294967296, 'failure') $$, 'PT404', null,
  'release never creates a breaker');

-- -------------------------------------------------------------- configure ----
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_failure_threshold => 0) $$, '22023', null,
  'failure_threshold 0');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_failure_rate => 1.5) $$, '22023', null,
  'a failure rate over 1');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_failure_rate => 0) $$, '22023', null,
  'a failure rate of 0');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_min_calls => 0) $$, '22023', null, 'min_calls 0');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_window_seconds => 86401) $$, '22023', null,
  'a window over a day');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_slow_call_ms => 100) $$, '22023', null,
  'slow_call_ms without slow_call_rate');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_slow_call_ms => 0, p_slow_call_rate => 0.5) $$,
  '22023', null, 'slow_call_ms 0');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_failure_threshold => null) $$, '22023', null,
  'no trip rule at all');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_open_ms => 0) $$, '22023', null, 'open_ms 0');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_open_ms => null) $$, '22023', null, 'open_ms null');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_backoff_factor => 0.5) $$, '22023', null,
  'a backoff factor below 1');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_open_ms => 5000, p_max_open_ms => 4999) $$,
  '22023', null, 'max_open_ms below open_ms');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_half_open_permits => 0) $$, '22023', null,
  'no trial permits');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_half_open_permits => 1001) $$, '22023', null,
  'too many trial permits');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_lease_ms => 0) $$, '22023', null, 'lease_ms 0');
select throws_ok($$ select public.configure_breaker('pgshield_t_x', p_success_threshold => 0) $$, '22023', null,
  'success_threshold 0');

-- --------------------------------------------------------- manual control ----
select throws_ok($$ select public.reset_breaker('pgshield_t_x', null) $$, '22023', null, 'a reset without a reason');
select throws_ok($$ select public.reset_breaker('pgshield_t_x', '   ') $$, '22023', null, 'a blank reason');
select throws_ok($$ select public.force_breaker('pgshield_t_x', 'forced_open', repeat('x', 501)) $$, '22023', null,
  'a reason over 500 characters');
select throws_ok($$ select public.force_breaker('pgshield_t_x', 'open', 'x') $$, '22023', null,
  'force to a state other than forced_open or disabled');
select throws_ok($$ select public.reset_breaker('pgshield_t_nope', 'x') $$, 'PT404', null, 'reset an unknown breaker');
select throws_ok($$ select pgshield.breaker_cleanup(0) $$, '22023', null, 'a cleanup batch of 0');
select throws_ok($$ select * from pgshield.breaker_events_recent(null, 0) $$, '22023', null, 'an events limit of 0');
select throws_ok($$ select pgshield.set_breaker_settings(null, 0) $$, '22023', null, 'max_breakers 0');
select ok(pg_temp.unchanged(), 'none of the refused calls wrote anything');

-- ------------------------------------------------------------ auto-create ----
select pgshield.set_breaker_settings(false);
select throws_ok($$ select public.acquire_breaker('pgshield_t_unknown') $$, 'PT404', null,
  'with auto_create off an unknown breaker is refused');
select pgshield.set_breaker_settings(true, (select count(*)::integer from pgshield.breakers));
select throws_ok($$ select public.acquire_breaker('pgshield_t_one_too_many') $$, 'PT409', null,
  'auto-creation stops at max_breakers');

select * from finish();
rollback;

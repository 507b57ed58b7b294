-- breaker: the objects, the defaults, notifications and cleanup.
begin;
\ir _helpers.psql
select plan(13);

select has_table('pgshield', 'breakers', 'pgshield.breakers exists');
select has_table('pgshield', 'breaker_events', 'pgshield.breaker_events exists');
select has_view('pgshield', 'breaker_status', 'pgshield.breaker_status exists');
select has_function('public', 'acquire_breaker', array['text'], 'acquire_breaker(text)');
select has_function('public', 'release_breaker', array['text', 'bigint', 'text', 'integer'],
  'release_breaker(text, bigint, text, integer)');

select pgshield.set_clock('2001-01-01 00:00:00+00');
select pgshield.set_breaker_settings(true, 1000000, 30);
select public.acquire_breaker('pgshield_t_auto');
select is((select row(failure_threshold, failure_rate, open_ms, backoff_factor, half_open_permits,
                      success_threshold, state, generation)::text
             from pgshield.breakers where name = 'pgshield_t_auto'),
  '(5,,30000,1,1,2,closed,1)',
  'an unknown breaker is created with the defaults: 5 failures, 30 s open, 1 trial, 2 successes');

-- --------------------------------------------------------------- notify ----
select is(pg_notification_queue_usage() >= 0, true, 'the notification queue is there');
listen pgshield_breaker;
select public.force_breaker('pgshield_t_auto', 'forced_open', 'pgshield_t notify');
select is((select count(*)::integer from pgshield.breaker_events where name = 'pgshield_t_auto'), 1,
  'the change is one event row (the notification is sent at commit: tests/test_breaker.py reads it)');
unlisten pgshield_breaker;

-- ---------------------------------------------------------------- cleanup ----
select public.release_breaker('pgshield_t_auto2', (public.acquire_breaker('pgshield_t_auto2')).permit, 'success')
  from generate_series(1, 3);
select is((select count(*)::integer from pgshield.breaker_buckets where name = 'pgshield_t_auto2'), 0,
  'a breaker without a rate rule does not count its successes (no bucket rows)');
select public.configure_breaker('pgshield_t_old', p_failure_rate => 0.9, p_window_seconds => 5);
select public.release_breaker('pgshield_t_old', (public.acquire_breaker('pgshield_t_old')).permit, 'success')
  from generate_series(1, 3);
select public.force_breaker('pgshield_t_old', 'disabled', 'pgshield_t cleanup');
select pgshield.advance_clock(interval '5 seconds');
select is((select count(*)::integer from pgshield.breaker_buckets where name = 'pgshield_t_old'), 1,
  'one bucket row for three calls from one backend in one second');
select pgshield.advance_clock(interval '1 second');
select cmp_ok(pgshield.breaker_cleanup(1000000), '>=', 1, 'cleanup deletes buckets older than the window');
select is((select count(*)::integer from pgshield.breaker_buckets where name = 'pgshield_t_old'), 0,
  '... including this breaker''s');
select pgshield.advance_clock(interval '31 days');
select pgshield.breaker_cleanup(1000000);
select is((select count(*)::integer from pgshield.breaker_events where name like 'pgshield\_t\_%'), 0,
  'events older than event_retention_days go too');

select * from finish();
rollback;

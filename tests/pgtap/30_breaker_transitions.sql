-- breaker: every state transition, on a frozen and moved clock.
begin;
\ir _helpers.psql
select plan(49);

select pgshield.set_clock('2001-01-01 00:00:00+00');
select public.configure_breaker('pgshield_t_a');  -- the defaults: 5 failures, 30 s, 1 permit, 2 successes
create temp table pgshield_t_p (k text primary key, permit bigint);
create function pg_temp.permit(p_k text) returns bigint language sql stable
set search_path = pg_catalog, pg_temp as $$ select p.permit from pg_temp.pgshield_t_p p where p.k = p_k $$;
create function pg_temp.keep(p_k text, p_d public.breaker_decision) returns public.breaker_decision
language sql volatile set search_path = pg_catalog, pg_temp as $$
  insert into pg_temp.pgshield_t_p (k, permit) values (p_k, p_d.permit)
  on conflict (k) do update set permit = excluded.permit returning p_d $$;
create function pg_temp.events(p_name text) returns text[] language sql stable
set search_path = pg_catalog, pg_temp as $$
  select coalesce(array_agg(e.from_state || '>' || e.to_state || '@' || e.generation order by e.id), '{}')
    from pgshield.breaker_events e where e.name = p_name $$;

-- ----------------------------------------------------------------- closed ----
select is((select row(d.allowed, d.state, d.generation, d.retry_after_ms)::text
             from pg_temp.keep('c1', public.acquire_breaker('pgshield_t_a')) d),
          '(t,closed,1,0)', 'a new breaker is closed, generation 1, and allows the call');
select is(pg_temp.permit('c1'), 4294967296::bigint, 'a closed-state permit carries its generation and no lease');
select is((select count(*) filter (where (public.release_breaker('pgshield_t_a', pg_temp.permit('c1'), 'failure')).counted)::integer
             from generate_series(1, 4)), 4, 'four failures ...');
select is((select consecutive_failures from pgshield.breaker_status where name = 'pgshield_t_a'), 4,
  '... are four consecutive failures');
select is((public.release_breaker('pgshield_t_a', pg_temp.permit('c1'), 'success')).counted, true,
  'a success is counted');
select is((select consecutive_failures from pgshield.breaker_status where name = 'pgshield_t_a'), 0,
  '... and resets the consecutive failures');
select is((select array_agg((public.release_breaker('pgshield_t_a', pg_temp.permit('c1'), 'failure')).changed)
             from generate_series(1, 5)), '{f,f,f,f,t}'::boolean[],
  'the fifth consecutive failure trips the breaker, and only that call says it changed the state');
select is((select row(s.state, s.generation, s.calls, s.failures, s.half_open_in_ms)::text
             from pgshield.breaker_status s where s.name = 'pgshield_t_a'),
          '(open,2,,9,30000)',
  'open at generation 2, its failures counted (calls are not, without a rate rule), 30 s until half-open');
select is(pg_temp.events('pgshield_t_a'), '{closed>open@2}', 'one event for the trip');
select is((public.release_breaker('pgshield_t_a', pg_temp.permit('c1'), 'failure')).changed, false,
  'a late failure from the closed generation changes nothing');
select is((select open_until from pgshield.breakers where name = 'pgshield_t_a'),
  '2001-01-01 00:00:30+00'::timestamptz, '... and does not extend the open period');

-- ------------------------------------------------------------------- open ----
select pgshield.advance_clock(interval '29.999 seconds');
select is((select row(d.allowed, d.state, d.generation, d.permit, d.retry_after_ms)::text
             from public.acquire_breaker('pgshield_t_a') d),
          '(f,open,2,,1)', '1 ms before the end of the open period the call is refused, retry after 1 ms');
select pgshield.advance_clock(interval '0.000999 seconds');
select is((public.acquire_breaker('pgshield_t_a')).retry_after_ms, 1, '... and 1 us before it, rounded up');
select pgshield.advance_clock(interval '0.000001 seconds');
select is((select row(d.allowed, d.state, d.generation, d.retry_after_ms)::text
             from pg_temp.keep('t1', public.acquire_breaker('pgshield_t_a')) d),
          '(t,half_open,3,0)', 'at exactly open_until the call moves it to half_open and gets the trial permit');
select is(pg_temp.permit('t1'), 3 * 4294967296::bigint + 1, 'a trial permit carries its generation and lease');

-- -------------------------------------------------------------- half-open ----
select is((select row(d.allowed, d.state, d.retry_after_ms)::text from public.acquire_breaker('pgshield_t_a') d),
  '(f,half_open,30000)', 'the one trial slot is taken: refused until its lease could expire');
select is((select row(r.state, r.changed, r.counted)::text
             from public.release_breaker('pgshield_t_a', pg_temp.permit('c1'), 'success') r),
  '(half_open,f,f)', 'a late success from the closed generation cannot close it');
select is((select row(r.state, r.changed, r.counted)::text
             from public.release_breaker('pgshield_t_a', pg_temp.permit('t1'), 'success') r),
  '(half_open,f,t)', 'the first trial success counts; two are needed');
select is((select row(r.state, r.changed, r.counted)::text
             from public.release_breaker('pgshield_t_a', pg_temp.permit('t1'), 'success') r),
  '(half_open,f,f)', 'the same permit reported twice counts once');
select is((select d.allowed from pg_temp.keep('t2', public.acquire_breaker('pgshield_t_a')) d), true,
  'the slot is free again for the next trial');
select is((select row(r.state, r.generation, r.changed)::text
             from public.release_breaker('pgshield_t_a', pg_temp.permit('t2'), 'success') r),
  '(closed,4,t)', 'the second trial success closes it');
select is(pg_temp.events('pgshield_t_a'), '{closed>open@2,open>half_open@3,half_open>closed@4}',
  'each change recorded once, in order');
select is((select row(s.consecutive_failures, s.trial_leases, s.half_open_in_ms)::text
             from pgshield.breaker_status s where s.name = 'pgshield_t_a'), '(0,0,)',
  'closed again with nothing left over');

-- ------------------------------------------- trial failure, backoff, leases ----
select public.configure_breaker('pgshield_t_b', p_failure_threshold => 1, p_open_ms => 1000,
  p_backoff_factor => 2, p_max_open_ms => 3000, p_half_open_permits => 2, p_lease_ms => 500,
  p_success_threshold => 1);
select is((public.release_breaker('pgshield_t_b', (public.acquire_breaker('pgshield_t_b')).permit, 'failure')).state,
  'open', 'one failure trips a threshold-1 breaker');
select is((select open_until from pgshield.breakers where name = 'pgshield_t_b'),
  pgshield.now() + interval '1 second', 'the first open lasts open_ms');
select pgshield.advance_clock(interval '1 second');
select pg_temp.keep('b1', public.acquire_breaker('pgshield_t_b'));
select pg_temp.keep('b2', public.acquire_breaker('pgshield_t_b'));
select is((select array[pg_temp.permit('b1') % 4294967296, pg_temp.permit('b2') % 4294967296]), '{1,2}'::bigint[],
  'two trial permits, two leases');
select is((public.acquire_breaker('pgshield_t_b')).allowed, false, 'a third acquirer is refused');
select is((select row(r.state, r.changed)::text
             from public.release_breaker('pgshield_t_b', pg_temp.permit('b1'), 'failure') r),
  '(open,t)', 'a failed trial opens it again');
select is((select open_until from pgshield.breakers where name = 'pgshield_t_b'),
  pgshield.now() + interval '2 seconds', 'the second consecutive open lasts twice as long');
select is((select row(r.state, r.changed, r.counted)::text
             from public.release_breaker('pgshield_t_b', pg_temp.permit('b2'), 'success') r),
  '(open,f,f)', 'the other trial''s late success changes nothing');
select pgshield.advance_clock(interval '2 seconds');
select pg_temp.keep('b3', public.acquire_breaker('pgshield_t_b'));
select is((public.release_breaker('pgshield_t_b', pg_temp.permit('b3'), 'failure')).changed, true,
  'another failed trial ...');
select is((select open_until from pgshield.breakers where name = 'pgshield_t_b'),
  pgshield.now() + interval '3 seconds', '... backs off to the cap, max_open_ms');
select pgshield.advance_clock(interval '3 seconds');
select pg_temp.keep('b4', public.acquire_breaker('pgshield_t_b'));
select pg_temp.keep('b5', public.acquire_breaker('pgshield_t_b'));
select is((public.acquire_breaker('pgshield_t_b')).retry_after_ms, 500, 'both slots leased for 500 ms');
select pgshield.advance_clock(interval '499 milliseconds');
select is((public.acquire_breaker('pgshield_t_b')).allowed, false, 'a lease holds until its lease time ...');
select pgshield.advance_clock(interval '1 millisecond');
select is((select d.allowed from pg_temp.keep('b6', public.acquire_breaker('pgshield_t_b')) d), true,
  '... then a holder that never reported loses it, and trials resume');
select is((select row(r.state, r.changed, r.counted)::text
             from public.release_breaker('pgshield_t_b', pg_temp.permit('b4'), 'failure') r),
  '(half_open,f,f)', 'the outcome of an expired lease changes nothing');
select is((select row(r.state, r.changed, r.counted)::text
             from public.release_breaker('pgshield_t_b', pg_temp.permit('b6'), 'ignored') r),
  '(half_open,f,f)', 'ignored gives the trial slot back without counting');
select is((select d.allowed from pg_temp.keep('b7', public.acquire_breaker('pgshield_t_b')) d), true,
  '... so another trial may start');
select is((select row(r.state, r.changed)::text
             from public.release_breaker('pgshield_t_b', pg_temp.permit('b7'), 'success') r),
  '(closed,t)', 'one success closes a success_threshold-1 breaker');
select is((select opens from pgshield.breakers where name = 'pgshield_t_b'), 0, 'closing clears the backoff');

-- ----------------------------------------------------------- manual control ----
select public.force_breaker('pgshield_t_a', 'forced_open', 'pgshield_t incident');
select is((select row(d.allowed, d.state, d.permit, d.retry_after_ms)::text from public.acquire_breaker('pgshield_t_a') d),
  '(f,forced_open,,-1)', 'forced open refuses every call, until reset');
select pgshield.advance_clock(interval '1 day');
select is((public.acquire_breaker('pgshield_t_a')).state, 'forced_open', '... whatever the time');
select public.force_breaker('pgshield_t_a', 'disabled', 'pgshield_t maintenance');
select pg_temp.keep('d1', public.acquire_breaker('pgshield_t_a'));
select is((select array_agg(distinct (public.release_breaker('pgshield_t_a', pg_temp.permit('d1'), 'failure'))::text)
             from generate_series(1, 10)),
  '{"(disabled,6,f,f,pgshield_t_a)"}', 'disabled (forced closed) allows every call and counts nothing');
select is((select consecutive_failures from pgshield.breakers where name = 'pgshield_t_a'), 0,
  '... not even consecutive failures');
select is((public.reset_breaker('pgshield_t_a', 'pgshield_t back to normal'))->>'state', 'closed',
  'reset returns it to closed');
select is(pg_temp.events('pgshield_t_a'),
  '{closed>open@2,open>half_open@3,half_open>closed@4,closed>forced_open@5,forced_open>disabled@6,disabled>closed@7}',
  'manual changes are events too');
select is((select reason from pgshield.breaker_events where name = 'pgshield_t_a' order by id desc limit 1),
  'pgshield_t back to normal', 'with their reason');
select is((public.release_breaker('pgshield_t_a', pg_temp.permit('d1'), 'failure')).counted, false,
  'a permit from before the reset is stale');
select is((select actor::text from pgshield.breaker_events where name = 'pgshield_t_a' order by id desc limit 1),
  session_user::text, 'the event names the role that made the change');

select * from finish();
rollback;

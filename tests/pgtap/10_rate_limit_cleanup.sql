-- rate_limit: cleanup of expired state, storage modes, and the shape of the state table.
begin;
\ir _helpers.psql
select plan(28);

-- ------------------------------------------------------------ table shape ----
select is(
  (select array_agg(i.indexrelid::regclass::text) from pg_index i
    where i.indrelid = 'pgshield.rate_limit_state'::regclass),
  array['pgshield.rate_limit_state_pkey'],
  'the state table has no index but its primary key (updates stay HOT)');
select is(
  (select array_agg(a.attname::text order by k.n) from pg_index i
     cross join lateral unnest(i.indkey) with ordinality k(attnum, n)
     join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indexrelid = 'pgshield.rate_limit_state_pkey'::regclass),
  array['key', 'policy', 'window_seconds'],
  'the primary key starts with key (a Citus distribution column)');
select ok(
  (select (regexp_match(array_to_string(c.reloptions, ','), 'fillfactor=(\d+)'))[1]::integer < 100
     from pg_class c where c.oid = 'pgshield.rate_limit_state'::regclass),
  'the state table leaves room on each page for HOT updates (fillfactor below 100)');
select is(
  (select array_agg(i.indexrelid::regclass::text) from pg_index i
    where i.indrelid = 'pgshield.rate_limit_policy_state'::regclass),
  array['pgshield.rate_limit_policy_state_pkey'],
  'the policy state table has no index but its primary key (subject, policy)');
select ok(
  (select (regexp_match(array_to_string(c.reloptions, ','), 'fillfactor=(\d+)'))[1]::integer < 100
     from pg_class c where c.oid = 'pgshield.rate_limit_policy_state'::regclass),
  'the policy state table leaves room on each page for HOT updates');
-- (Unlogged by default, tested on a fresh database in tests/test_rate_limit.py: a project may
-- have chosen logged.)
select is(pgshield.rate_limit_storage(),
  (select case c.relpersistence when 'u' then 'unlogged' when 'p' then 'logged' end
     from pg_class c where c.oid = 'pgshield.rate_limit_state'::regclass),
  'rate_limit_storage() tells how the state table is stored');

-- --------------------------------------------------------------- cleanup ----
-- The clock stands in 2001, before any row of a real database was written
-- (pgshield.now() moves only in tests, which roll back): cleanup then finds
-- only this file's rows expired, so its counts are exact, and it never deletes
-- (nor locks) a project's own state.
select public.define_rate_limit_policy('pgshield_t_api', '{"free": {"minute": 10, "hour": 100, "day": 500}}',
  'sliding_window');
select pgshield.set_clock('2001-01-01 00:00:10+00');
select increment_rate_limit('pgshield_t_c-fixed', 5, 60);
select increment_rate_limit('pgshield_t_c-sliding', 5, 60, 1, 'sliding_window');
select increment_rate_limit('pgshield_t_c-token', 4, 60, 1, 'token_bucket');
select increment_rate_limit('pgshield_t_c-day', 5, 86400);
select check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_c-user');

select is(pgshield.cleanup_expired_rate_limits(), 0, 'nothing has expired yet');
select pgshield.set_clock('2001-01-01 00:00:25+00');
select is(pgshield.cleanup_expired_rate_limits(), 1,
  'a token bucket expires once it is full again (its TAT has passed: 15 s per token)');
select pgshield.set_clock('2001-01-01 00:01:00+00');
select is(pgshield.cleanup_expired_rate_limits(), 1, 'a fixed window expires at its end');
select is((select array_agg(key order by key) from pgshield.rate_limit_state
            where policy = '' and key like 'pgshield\_t\_c-%'),
  array['pgshield_t_c-day', 'pgshield_t_c-sliding'], '... the sliding window still weighs on the next window');
select pgshield.set_clock('2001-01-01 00:02:00+00');
select is(pgshield.cleanup_expired_rate_limits(), 1, 'the sliding window expires after two windows');
select pgshield.set_clock('2001-01-02 00:00:00+00');
select is(pgshield.cleanup_expired_rate_limits(), 1, 'the day window goes at midnight');
select is((select count(*)::integer from pgshield.rate_limit_policy_state where subject = 'pgshield_t_c-user'), 1,
  '... while the policy''s row stays: it holds every window, and its day window (sliding) is live');
select pgshield.set_clock('2001-01-03 00:00:00+00');
select is(pgshield.cleanup_expired_rate_limits(), 1, 'the policy''s row goes once its last window has reset');
select is((select count(*)::integer from pgshield.rate_limit_state
            where key like 'pgshield\_t\_c-%')
          + (select count(*)::integer from pgshield.rate_limit_policy_state
              where subject like 'pgshield\_t\_c-%'), 0, 'everything is gone');

-- batches
insert into pgshield.rate_limit_state (key, window_seconds, algorithm, limit_value, window_start, count, expires_at)
select 'pgshield_t_b-' || g, 60, 'fixed_window', 10, '2001-01-02 23:00:00+00', 1, '2001-01-02 23:01:00+00'
  from generate_series(1, 25) g;
select is(pgshield.cleanup_expired_rate_limits(10), 10, 'cleanup deletes at most one batch');
select is(pgshield.cleanup_expired_rate_limits(10), 10, '... then the next');
select is(pgshield.cleanup_expired_rate_limits(10), 5, '... and the rest: fewer than a batch means done');
select is(pgshield.cleanup_expired_rate_limits(10), 0, '... then nothing');

-- live state survives, and a fresh decision after cleanup behaves like the first one
select increment_rate_limit('pgshield_t_live', 2, 60);
select increment_rate_limit('pgshield_t_live', 2, 60);
select is(pgshield.cleanup_expired_rate_limits(), 0, 'live state is never deleted');
select is((increment_rate_limit('pgshield_t_live', 2, 60)).allowed, false, '... and still limits');

-- ---------------------------------------------------------- storage modes ----
select is(pgshield.set_rate_limit_storage('logged'), 'logged', 'set_rate_limit_storage makes the state durable');
select is((select relpersistence::text from pg_class where oid = 'pgshield.rate_limit_state'::regclass), 'p',
  '... the table is now permanent (WAL-logged)');
select is((select relpersistence::text from pg_class where oid = 'pgshield.rate_limit_policy_state'::regclass), 'p',
  '... and so is the policy state table');
select is((increment_rate_limit('pgshield_t_live', 2, 60)).allowed, false, '... and keeps its rows');
select is(pgshield.set_rate_limit_storage('unlogged'), 'unlogged', 'and back to unlogged');
select throws_ok($$ select pgshield.set_rate_limit_storage('fast') $$, '22023', 'p_mode must be logged or unlogged',
  'an unknown storage mode is bad input');
select is(
  (select array_agg(distinct c.relpersistence::text) from pg_class c
    where c.relnamespace = 'pgshield'::regnamespace and c.relkind = 'S'
      and c.relname ~ '^rate_limit_(direct|policy)_'),
  array['u'], 'the decision counters follow the storage mode');

select * from finish();
rollback;

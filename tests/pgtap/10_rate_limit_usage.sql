-- rate_limit: usage recorded after the fact, refunds, peeks, resets and reading usage.
begin;
\ir _helpers.psql
select plan(29);

-- Policies, keys and subjects of this file's own (pgshield_t_*); pgshield_t_tokens
-- is shaped like the shipped ai_tokens (a project may have tuned that one).
select public.define_rate_limit_policy('pgshield_t_tokens', '{"free": {"day": 50000}}'::jsonb, 'fixed_window',
  p_unit => 'tokens');

create function pg_temp.rl(r public.rate_limit_result) returns text
language sql set search_path = pg_catalog, pg_temp
as $$
  select concat_ws(' ', case when r.allowed then 'allowed' else 'denied' end,
                   'remaining=' || r.remaining, 'retry=' || r.retry_after_ms)
$$;

-- ------------------------------------------------- tokens counted afterwards ----
select pgshield.set_clock('2030-01-01 10:00:00+00');
select is((check_rate_limit('pgshield_t_tokens', 1000, null, 'pgshield_t_u-ai')).remaining, 49000,
  'a call reserves an estimate of 1000 tokens (free: 50,000 per day)');
select is((record_rate_limit_usage('pgshield_t_tokens', 'pgshield_t_u-ai', 55000)).allowed, false,
  'recording the real count (56,000 in all) goes past the limit and says the next call is denied');
select is(
  (select (w ->> 'used')::integer from jsonb_array_elements(get_rate_limit_usage('pgshield_t_u-ai', 'pgshield_t_tokens')) w),
  56000, 'over-consumption is recorded in full, not capped at the limit');
select is((check_rate_limit('pgshield_t_tokens', 1, null, 'pgshield_t_u-ai')).retry_after_ms, 50400000,
  'the next request is denied until the day window ends (14 h)');
select is((record_rate_limit_usage('pgshield_t_tokens', 'pgshield_t_u-ai', -10000)).remaining, 3999,
  'a refund gives tokens back (reported as what a request of cost 1 would leave)');
select is((record_rate_limit_usage('pgshield_t_tokens', 'pgshield_t_u-ai', -100000)).remaining, 49999,
  'a refund never goes below zero');
select is((check_rate_limit('pgshield_t_tokens', 50000, null, 'pgshield_t_u-ai')).allowed, true, '... so the full quota is back');

-- usage on every window of a multi-window policy
select public.define_rate_limit_policy('pgshield_t_req', '{"free": {"minute": 5, "hour": 50}}'::jsonb, 'sliding_window');
select record_rate_limit_usage('pgshield_t_req', 'pgshield_t_u-req', 7);
select is(
  (select string_agg(w ->> 'used', ',' order by (w ->> 'window_seconds')::integer)
     from jsonb_array_elements(get_rate_limit_usage('pgshield_t_u-req', 'pgshield_t_req')) w),
  '7,7', 'policy usage is recorded in every window of the tier');
select is((check_rate_limit('pgshield_t_req', 1, null, 'pgshield_t_u-req')).violated, array['minute'],
  '... and the window it overfilled denies');

-- ------------------------------------------------------ direct key usage ----
select pgshield.set_clock('2030-01-01 11:00:30+00');
select is(pg_temp.rl(record_rate_limit_key_usage('pgshield_t_fk', 10, 60, 12)), 'denied remaining=0 retry=30000',
  'fixed: recorded usage past the limit denies the next request');
select is(pg_temp.rl(record_rate_limit_key_usage('pgshield_t_fk', 10, 60, -5)), 'allowed remaining=2 retry=0',
  'fixed: a refund makes room again (7 used: a request would leave 2)');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fk', 10, 60, 3)), 'allowed remaining=0 retry=0',
  'fixed: increments see the recorded usage');

select is(pg_temp.rl(record_rate_limit_key_usage('pgshield_t_sk', 10, 60, 10, 'sliding_window')), 'denied remaining=0 retry=36000',
  'sliding: recorded usage fills the window');
select pgshield.set_clock('2030-01-01 11:01:30+00');
select is(pg_temp.rl(record_rate_limit_key_usage('pgshield_t_sk', 10, 60, -8, 'sliding_window')), 'allowed remaining=8 retry=0',
  'sliding: a refund after the window rolled over comes out of the previous window (10 -> 2, weighing 1 at half time)');

select pgshield.set_clock('2030-01-01 12:00:00+00');
select is(pg_temp.rl(record_rate_limit_key_usage('pgshield_t_tk', 4, 60, 6, 'token_bucket')), 'denied remaining=0 retry=45000',
  'token: recording 6 tokens on a burst of 4 pushes the TAT 90 s ahead: wait 45 s for one');
select is(pg_temp.rl(record_rate_limit_key_usage('pgshield_t_tk', 4, 60, -6, 'token_bucket')), 'allowed remaining=3 retry=0',
  'token: a refund never pushes the TAT before now');

-- ------------------------------------------------------------------ peeks ----
select pgshield.set_clock('2030-01-01 13:00:00+00');
select increment_rate_limit('pgshield_t_pk', 3, 60, 2);
select is(pg_temp.rl(peek_rate_limit('pgshield_t_pk', 3, 60)), 'allowed remaining=0 retry=0', 'peek: one more would fit');
select is(pg_temp.rl(peek_rate_limit('pgshield_t_pk', 3, 60)), 'allowed remaining=0 retry=0', 'peek: ... and peeking consumed nothing');
select is(pg_temp.rl(peek_rate_limit('pgshield_t_pk', 3, 60, 2)), 'denied remaining=1 retry=60000', 'peek: a cost of 2 would not');
select is(pg_temp.rl(peek_rate_limit('pgshield_t_never-used', 3, 60)), 'allowed remaining=2 retry=0', 'peek: an unknown key is fresh');
select is((select count(*)::integer from pgshield.rate_limit_state where key = 'pgshield_t_never-used'), 0,
  'peek: ... and writes no row');
select check_rate_limit('pgshield_t_req', 1, null, 'pgshield_t_u-peek');
select is((peek_check_rate_limit('pgshield_t_req', 1, null, 'pgshield_t_u-peek')).remaining, 3, 'peek_check: what check would answer');
select is((peek_check_rate_limit('pgshield_t_req', 1, null, 'pgshield_t_u-peek')).remaining, 3, 'peek_check: ... without consuming');

-- ----------------------------------------------------------------- resets ----
select increment_rate_limit('pgshield_t_rk', 3, 60);
select increment_rate_limit('pgshield_t_rk', 3, 3600);
select is(reset_rate_limit('pgshield_t_rk', 60), 1, 'reset_rate_limit with a window forgets that window only');
select is(reset_rate_limit('pgshield_t_rk'), 1, 'reset_rate_limit forgets every window of the key');
select is(reset_rate_limit('pgshield_t_rk'), 0, 'resetting a clean key deletes nothing');
select is(reset_rate_limit_subject('pgshield_t_u-req', 'pgshield_t_req'), 2, 'reset_rate_limit_subject forgets a subject under one policy');
select is((check_rate_limit('pgshield_t_req', 5, null, 'pgshield_t_u-req')).allowed, true, '... so its quota is whole again');
select is(reset_rate_limit_subject('pgshield_t_u-ai'), 1, 'reset_rate_limit_subject without a policy forgets every policy');

select * from finish();
rollback;

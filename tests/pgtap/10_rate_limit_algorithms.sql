-- rate_limit: the arithmetic of each algorithm at window edges, on a moved clock.
begin;
\ir _helpers.psql
select plan(55);

-- Keys start with pgshield_t_: a project's own keys are never touched.
-- One decision as a short line: outcome, remaining, retry_after_ms, reset_at (day hh:mi:ss.us).
create function pg_temp.rl(r public.rate_limit_result) returns text
language sql set search_path = pg_catalog, pg_temp
as $$
  select concat_ws(' ', case when r.allowed then 'allowed' else 'denied' end,
                   'remaining=' || r.remaining, 'retry=' || r.retry_after_ms,
                   'reset=' || to_char(r.reset_at at time zone 'UTC', 'DD HH24:MI:SS.US'))
$$;
create function pg_temp.rl_row(p_key text) returns jsonb
language sql set search_path = pg_catalog, pg_temp
as $$ select to_jsonb(s) from pgshield.rate_limit_state s where s.key = p_key and s.policy = '' $$;

-- ---------------------------------------------------------- fixed_window ----
select pgshield.set_clock('2030-01-01 00:00:10+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fw', 3, 60)), 'allowed remaining=2 retry=0 reset=01 00:01:00.000000',
  'fixed: the first request of a window is allowed; reset at the epoch-aligned window end');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fw', 3, 60)), 'allowed remaining=1 retry=0 reset=01 00:01:00.000000',
  'fixed: the second request is allowed');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fw', 3, 60)), 'allowed remaining=0 retry=0 reset=01 00:01:00.000000',
  'fixed: the limit-th request is allowed with nothing remaining');
create temp table t_before as select pg_temp.rl_row('pgshield_t_fw') as r;
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fw', 3, 60)), 'denied remaining=0 retry=50000 reset=01 00:01:00.000000',
  'fixed: one past the limit is denied and told to wait until the window ends');
select is(pg_temp.rl_row('pgshield_t_fw'), (select r from t_before), 'fixed: a denied request changes no column of the row');
select pgshield.set_clock('2030-01-01 00:00:59.999999+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fw', 3, 60)), 'denied remaining=0 retry=1 reset=01 00:01:00.000000',
  'fixed: one microsecond before the edge is still denied; retry_after rounds up to 1 ms');
select pgshield.set_clock('2030-01-01 00:01:00+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fw', 3, 60)), 'allowed remaining=2 retry=0 reset=01 00:02:00.000000',
  'fixed: at the edge a new window starts from zero');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fw', 3, 60, 3)), 'denied remaining=2 retry=60000 reset=01 00:02:00.000000',
  'fixed: a cost larger than what remains is denied and consumes nothing');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fw', 3, 60, 2)), 'allowed remaining=0 retry=0 reset=01 00:02:00.000000',
  'fixed: a cost that fits exactly is allowed');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fw', 3, 60, 4)), 'denied remaining=0 retry=-1 reset=01 00:02:00.000000',
  'fixed: a cost larger than the limit can never fit: retry_after_ms is -1');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fw-new', 3, 60, 4)), 'denied remaining=3 retry=-1 reset=01 00:01:00.000000',
  'fixed: cost > limit on a fresh key is denied');
select is(pg_temp.rl_row('pgshield_t_fw-new'), null, 'fixed: ... and writes no row');

-- retry_after_ms rounds up: waiting exactly that long is enough.
select pgshield.set_clock('2030-01-01 00:02:10.0004+00');
select increment_rate_limit('pgshield_t_fw-wait', 1, 60);
select is(pg_temp.rl(increment_rate_limit('pgshield_t_fw-wait', 1, 60)), 'denied remaining=0 retry=50000 reset=01 00:03:00.000000',
  'fixed: a wait of 49.9996 s is reported as 50000 ms (rounded up)');
select pgshield.advance_clock('49999 milliseconds');
select is((increment_rate_limit('pgshield_t_fw-wait', 1, 60)).allowed, false,
  'fixed: one millisecond less than retry_after_ms is not enough here');
select pgshield.advance_clock('1 millisecond');
select is((increment_rate_limit('pgshield_t_fw-wait', 1, 60)).allowed, true,
  'fixed: waiting exactly retry_after_ms is');

-- ---------------------------------------------------------- sliding_window ----
select pgshield.set_clock('2030-01-01 01:00:30+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_sw', 10, 60, 10, 'sliding_window')),
  'allowed remaining=0 retry=0 reset=01 01:02:00.000000',
  'sliding: 10 of 10 in the first window; reset when both windows have passed');
select pgshield.set_clock('2030-01-01 01:01:00+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_sw', 10, 60, 1, 'sliding_window')),
  'denied remaining=0 retry=6000 reset=01 01:02:00.000000',
  'sliding: at the next window''s start the previous window weighs fully; wait until 10*(1-e/60)+1 <= 10, e = 6 s');
select pgshield.set_clock('2030-01-01 01:01:05.999999+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_sw', 10, 60, 1, 'sliding_window')),
  'denied remaining=0 retry=1 reset=01 01:02:00.000000',
  'sliding: one microsecond early is denied');
select pgshield.set_clock('2030-01-01 01:01:06+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_sw', 10, 60, 1, 'sliding_window')),
  'allowed remaining=0 retry=0 reset=01 01:03:00.000000',
  'sliding: at exactly 6 s the estimate 9 + 1 fits');
select pgshield.set_clock('2030-01-01 01:01:30+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_sw', 10, 60, 1, 'sliding_window')),
  'allowed remaining=3 retry=0 reset=01 01:03:00.000000',
  'sliding: halfway, 10 * 0.5 + 2 = 7 used, 3 remain');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_sw', 10, 60, 4, 'sliding_window')),
  'denied remaining=3 retry=6000 reset=01 01:03:00.000000',
  'sliding: a cost of 4 needs the previous weight to fall to 4 (e = 36 s)');
select pgshield.set_clock('2030-01-01 01:02:30+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_sw', 10, 60, 9, 'sliding_window')),
  'allowed remaining=0 retry=0 reset=01 01:04:00.000000',
  'sliding: the window before (2 used) weighs half: 1 + 9 fits');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_sw', 10, 60, 1, 'sliding_window')),
  'denied remaining=0 retry=30000 reset=01 01:04:00.000000',
  'sliding: 9 + 1 fits once the previous window weighs nothing: at the edge, 30 s away');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_sw', 10, 60, 2, 'sliding_window')),
  'denied remaining=0 retry=36667 reset=01 01:04:00.000000',
  'sliding: 9 + 2 cannot fit in this window: wait into the next until 9*(1-e/60)+2 <= 10 (30 s + 6.67 s)');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_sw', 10, 60, 11, 'sliding_window')),
  'denied remaining=0 retry=-1 reset=01 01:04:00.000000',
  'sliding: cost > limit: -1');
select pgshield.set_clock('2030-01-01 01:04:00+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_sw', 10, 60, 10, 'sliding_window')),
  'allowed remaining=0 retry=0 reset=01 01:06:00.000000',
  'sliding: two windows later everything is forgotten');

-- ---------------------------------------------------------- token_bucket ----
select pgshield.set_clock('2030-01-01 02:00:00+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_tb', 4, 60, 1, 'token_bucket')),
  'allowed remaining=3 retry=0 reset=01 02:00:15.000000',
  'token: burst of 4, one token every 15 s; full again 15 s after one is taken');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_tb', 4, 60, 3, 'token_bucket')),
  'allowed remaining=0 retry=0 reset=01 02:01:00.000000',
  'token: the whole burst is usable at once');
create temp table t_before_tb as select pg_temp.rl_row('pgshield_t_tb') as r;
select is(pg_temp.rl(increment_rate_limit('pgshield_t_tb', 4, 60, 1, 'token_bucket')),
  'denied remaining=0 retry=15000 reset=01 02:01:00.000000',
  'token: the next token arrives 15 s later');
select is(pg_temp.rl_row('pgshield_t_tb'), (select r from t_before_tb), 'token: a denied request leaves the stored TAT alone');
select pgshield.set_clock('2030-01-01 02:00:14.999999+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_tb', 4, 60, 1, 'token_bucket')),
  'denied remaining=0 retry=1 reset=01 02:01:00.000000',
  'token: one microsecond early is denied');
select pgshield.set_clock('2030-01-01 02:00:15+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_tb', 4, 60, 1, 'token_bucket')),
  'allowed remaining=0 retry=0 reset=01 02:01:15.000000',
  'token: exactly on time is allowed');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_tb', 4, 60, 2, 'token_bucket')),
  'denied remaining=0 retry=30000 reset=01 02:01:15.000000',
  'token: two tokens take 30 s');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_tb', 4, 60, 5, 'token_bucket')),
  'denied remaining=0 retry=-1 reset=01 02:01:15.000000',
  'token: cost > burst: -1');
select pgshield.set_clock('2030-01-01 02:05:00+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_tb', 4, 60, 4, 'token_bucket')),
  'allowed remaining=0 retry=0 reset=01 02:06:00.000000',
  'token: an idle bucket refills to the burst, never beyond');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_tb', 4, 60, 1, 'token_bucket')),
  'denied remaining=0 retry=15000 reset=01 02:06:00.000000',
  'token: ... so a fifth is denied');

-- A limit that does not divide the window: the burst is exact and the wait rounds up.
select pgshield.set_clock('2030-01-01 03:00:00+00');
select is((select count(*)::integer from generate_series(1, 7) g
            where (increment_rate_limit('pgshield_t_tb7', 7, 60, 1, 'token_bucket')).allowed),
  7, 'token: limit 7 per 60 s admits a burst of exactly 7');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_tb7', 7, 60, 1, 'token_bucket')),
  'denied remaining=0 retry=8572 reset=01 03:01:00.000000',
  'token: the 8th waits 60/7 s = 8571.43 ms, rounded up to 8572');
select pgshield.advance_clock('8572 milliseconds');
select is((increment_rate_limit('pgshield_t_tb7', 7, 60, 1, 'token_bucket')).allowed, true,
  'token: waiting exactly retry_after_ms is enough');
select is((increment_rate_limit('pgshield_t_tb7', 7, 60, 1, 'token_bucket')).allowed, false,
  'token: ... for one token only');

-- ------------------------------------------------------ large figures ----
select pgshield.set_clock('2030-01-02 00:00:00+00');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_big', 10000000, 86400, 9999999, 'token_bucket')),
  'allowed remaining=1 retry=0 reset=02 23:59:59.991360',
  'token: 10,000,000 per day keeps its arithmetic exact (8.64 ms per token)');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_big', 10000000, 86400, 1, 'token_bucket')),
  'allowed remaining=0 retry=0 reset=03 00:00:00.000000', 'token: the last of ten million fits');
select is(pg_temp.rl(increment_rate_limit('pgshield_t_big', 10000000, 86400, 1, 'token_bucket')),
  'denied remaining=0 retry=9 reset=03 00:00:00.000000', 'token: one more waits 8.64 ms, rounded to 9');
select pgshield.set_clock(timestamptz 'epoch'
  + (floor(extract(epoch from timestamptz '2030-01-02 00:00:00+00') / 2678400) * 2678400 + 1) * interval '1 second');
select is((increment_rate_limit('pgshield_t_bigf', 2147483647, 2678400, 2147483647)).remaining, 0,
  'fixed: the largest limit and a 31-day window are accepted');
select is((increment_rate_limit('pgshield_t_bigf', 2147483647, 2678400, 1)).retry_after_ms, 2147483647,
  'fixed: a wait beyond 24.8 days is capped at the largest integer');
select is((increment_rate_limit('pgshield_t_bigs', 2147483647, 2678400, 2147483647, 'sliding_window')).remaining, 0,
  'sliding: the largest figures do not overflow');
select is((increment_rate_limit('pgshield_t_bigs', 2147483647, 2678400, 2147483647, 'sliding_window')).allowed, false,
  'sliding: ... and are still refused past the limit');

-- -------------------------------------------------------- peek agrees ----
select pgshield.set_clock('2030-01-01 04:00:20+00');
select increment_rate_limit('pgshield_t_pk-' || a, 5, 60, 3, a)
  from unnest(array['fixed_window', 'sliding_window', 'token_bucket']) a;
select pgshield.advance_clock('7.5 seconds');
select is(pg_temp.rl(peek_rate_limit('pgshield_t_pk-' || a, 5, 60, c, a)), pg_temp.rl(increment_rate_limit('pgshield_t_pk-' || a, 5, 60, c, a)),
  format('peek_rate_limit answers what increment_rate_limit then does (%s, cost %s)', a, c))
  from unnest(array['fixed_window', 'sliding_window', 'token_bucket']) a, unnest(array[3, 1]) c;
select is(pg_temp.rl_row('pgshield_t_pk-fixed_window') ->> 'count', '4', 'peek consumed nothing: only the increments counted');

-- ------------------------------------------------------ switching algorithm ----
select pgshield.set_clock('2030-01-01 05:00:00+00');
select increment_rate_limit('pgshield_t_sw2', 2, 60, 2);
select is((increment_rate_limit('pgshield_t_sw2', 2, 60, 2, 'token_bucket')).allowed, true,
  'a key used with another algorithm starts afresh (state of one algorithm is not read as another)');

select * from finish();
rollback;

-- rate_limit: policies, tiers, multi-window atomicity, endpoint costs, counters.
begin;
\ir _helpers.psql
select plan(45);

-- One policy decision as a short line: outcome, limit, remaining, retry, tier, violated windows.
create function pg_temp.ck(r public.rate_limit_check_result) returns text
language sql set search_path = pg_catalog, pg_temp
as $$
  select concat_ws(' ', case when r.allowed then 'allowed' else 'denied' end,
                   'limit=' || r."limit", 'remaining=' || r.remaining, 'retry=' || r.retry_after_ms,
                   'tier=' || r.tier, 'violated=' || array_to_string(r.violated, ','))
$$;
-- The used figure of every window of a subject, by window length.
create function pg_temp.used(p_policy text, p_subject text) returns text
language sql set search_path = pg_catalog, pg_temp
as $$
  select string_agg(w ->> 'name' || '=' || (w ->> 'used'), ' ' order by (w ->> 'window_seconds')::integer)
    from jsonb_array_elements(public.get_rate_limit_usage(p_subject, p_policy)) w
$$;

-- ------------------------------------------------------------ the defaults ----
-- The shipped policies' figures as the migration seeds them. They check the
-- pack, not a project: one that changed these windows sees the three fail
-- (flags and endpoint costs may differ). Every other test uses policies,
-- subjects and tiers of its own (pgshield_t_*).
select is(
  (select jsonb_object_agg(t.key, (select jsonb_agg(w -> 'limit' order by (w ->> 'window_seconds')::integer)
                                     from jsonb_array_elements(t.value) w))
     from jsonb_array_elements(public.get_rate_limit_policies()) p, jsonb_each(p -> 'tiers') t
    where p ->> 'name' = 'api'),
  '{"free": [10, 100, 500], "basic": [30, 500, 5000], "pro": [100, 2000, 20000],
    "enterprise": [1000, 10000, 100000]}'::jsonb,
  'the api policy ships requests per minute, hour and day for free, basic, pro, enterprise');
select is(
  (select jsonb_object_agg(t.key, t.value -> 0 -> 'limit')
     from jsonb_array_elements(public.get_rate_limit_policies()) p, jsonb_each(p -> 'tiers') t
    where p ->> 'name' = 'ai_tokens'),
  '{"free": 50000, "basic": 500000, "pro": 2000000, "enterprise": 10000000}'::jsonb,
  'the ai_tokens policy ships tokens per day for each tier');
select is(
  (select p ->> 'unit' || '/' || (p ->> 'default_tier') || '/' || (p -> 'tiers' -> 'free' -> 0 ->> 'window_seconds')
     from jsonb_array_elements(public.get_rate_limit_policies()) p where p ->> 'name' = 'ai_tokens'),
  'tokens/free/86400', 'ai_tokens counts tokens, per day, free by default');

-- ----------------------------------------------------- a policy of our own ----
select lives_ok($$
  select public.define_rate_limit_policy('pgshield_t_api',
    '{"free": {"minute": 3, "hour": 5}, "pro": {"60": 10, "3600": 100}}'::jsonb,
    p_algorithm => 'fixed_window', p_endpoint_costs => '{"/chat": 2.5}'::jsonb)
$$, 'define_rate_limit_policy creates a policy with two tiers');
select is(
  (select jsonb_agg(w ->> 'name' order by (w ->> 'window_seconds')::integer)
     from jsonb_array_elements(public.define_rate_limit_policy('pgshield_t_api',
            '{"free": {"minute": 3, "hour": 5}, "pro": {"60": 10, "3600": 100}}'::jsonb,
            p_algorithm => 'fixed_window', p_endpoint_costs => '{"/chat": 2.5}'::jsonb) -> 'tiers' -> 'pro') w),
  '["minute", "hour"]'::jsonb, 'defining it again replaces it; windows get names from their length');

select pgshield.set_clock('2030-01-01 00:00:10+00');
select is(pg_temp.ck(check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_alice')), 'allowed limit=3 remaining=2 retry=0 tier=free violated=',
  'the first call is allowed; the tightest window (minute) is reported');
select is(pg_temp.ck(check_rate_limit('pgshield_t_api', 2, null, 'pgshield_t_alice')), 'allowed limit=3 remaining=0 retry=0 tier=free violated=',
  'a cost of 2 fits both windows');
select is(pg_temp.ck(check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_alice')), 'denied limit=3 remaining=0 retry=50000 tier=free violated=minute',
  'the minute window denies; the violated window is named');
select is(pg_temp.used('pgshield_t_api', 'pgshield_t_alice'), 'minute=3 hour=3', 'a denial consumes nothing in any window');

select pgshield.set_clock('2030-01-01 00:01:00+00');
select is(pg_temp.ck(check_rate_limit('pgshield_t_api', 2, null, 'pgshield_t_alice')), 'allowed limit=5 remaining=0 retry=0 tier=free violated=',
  'in the next minute the hour window becomes the tightest');
select is(pg_temp.ck(check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_alice')), 'denied limit=5 remaining=0 retry=3540000 tier=free violated=hour',
  'the hour window denies while the minute window still has room');
select is(pg_temp.used('pgshield_t_api', 'pgshield_t_alice'), 'minute=2 hour=5',
  'all windows are decided together: the minute window was not consumed by the denied call');

select pgshield.set_clock('2030-01-01 00:02:00+00');
select is(pg_temp.ck(check_rate_limit('pgshield_t_api', 3, null, 'pgshield_t_alice')), 'denied limit=5 remaining=0 retry=3480000 tier=free violated=hour',
  'with room in the minute only the hour is violated');
select is(pg_temp.ck(check_rate_limit('pgshield_t_api', 4, null, 'pgshield_t_alice')), 'denied limit=3 remaining=0 retry=-1 tier=free violated=minute,hour',
  'a cost above one window''s limit: every violated window is named and retry_after_ms is -1');
select is((check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_alice')).windows -> 0 ->> 'allowed', 'true',
  'per-window details say which windows would have allowed the call');
select is(
  (select jsonb_agg(jsonb_build_object('name', w ->> 'name', 'limit', (w ->> 'limit')::integer,
                                       'remaining', (w ->> 'remaining')::integer))
     from jsonb_array_elements((check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_bob')).windows) w),
  '[{"name": "minute", "limit": 3, "remaining": 2}, {"name": "hour", "limit": 5, "remaining": 4}]'::jsonb,
  'the per-window list carries each window''s limit and remaining');

-- ------------------------------------------------------------------ tiers ----
select public.define_rate_limit_policy('pgshield_t_other',
  '{"free": {"minute": 1}, "pgshield_t_gold": {"minute": 50}}'::jsonb);
select is(public.set_rate_limit_tier('pgshield_t_carol', 'pro'), 'pro', 'set_rate_limit_tier assigns a tier');
select is(pg_temp.ck(check_rate_limit('pgshield_t_api', 4, null, 'pgshield_t_carol')), 'allowed limit=10 remaining=6 retry=0 tier=pro violated=',
  'a subject on pro gets the pro windows');
select is(public.set_rate_limit_tier('pgshield_t_carol', 'pgshield_t_gold'), 'pgshield_t_gold',
  'a tier that only another policy defines can be assigned');
select is((check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_carol')).tier, 'free',
  'a tier the policy does not define falls back to the policy''s default tier');
select is((check_rate_limit('pgshield_t_other', 1, null, 'pgshield_t_carol')).tier, 'pgshield_t_gold',
  '... while the other policy uses it');
select is(public.set_rate_limit_tier('pgshield_t_carol', null), null, 'a null tier removes the assignment');
select is((check_rate_limit('pgshield_t_other', 1, null, 'pgshield_t_carol')).tier, 'free', '... back to the default tier');

-- ------------------------------------------------------------- endpoints ----
select is((check_rate_limit('pgshield_t_api', 1, '/chat', 'pgshield_t_dave')).cost, 3,
  'an endpoint multiplier scales the cost, rounded up (1 * 2.5 -> 3)');
select is(pg_temp.used('pgshield_t_api', 'pgshield_t_dave'), 'minute=3 hour=3', '... and that cost is what is consumed');

-- ------------------------------------------------------ other algorithms ----
select public.define_rate_limit_policy('pgshield_t_tb', '{"free": {"minute": 2, "hour": 3}}'::jsonb, 'token_bucket');
select pgshield.set_clock('2030-01-01 01:00:00+00');
select is(pg_temp.ck(check_rate_limit('pgshield_t_tb', 2, null, 'pgshield_t_erin')), 'allowed limit=2 remaining=0 retry=0 tier=free violated=',
  'token_bucket policies: a burst of 2 in the minute bucket');
select is(pg_temp.ck(check_rate_limit('pgshield_t_tb', 1, null, 'pgshield_t_erin')), 'denied limit=2 remaining=0 retry=30000 tier=free violated=minute',
  'token_bucket policies: the minute bucket refills one token per 30 s');
select pgshield.advance_clock('30 seconds');
select is(pg_temp.ck(check_rate_limit('pgshield_t_tb', 1, null, 'pgshield_t_erin')), 'allowed limit=3 remaining=0 retry=0 tier=free violated=',
  'token_bucket policies: after 30 s the hour bucket (3) is the tightest');
select is(pg_temp.ck(check_rate_limit('pgshield_t_tb', 1, null, 'pgshield_t_erin')),
  'denied limit=3 remaining=0 retry=1170000 tier=free violated=minute,hour',
  'token_bucket policies: retry is the longest wait among violated windows (19.5 min for the hour)');
-- A tier change keeps the tokens used, not the bucket's time debt (2 of free's 2 used a full
-- minute of debt, which under pro's 100 a minute read as a full bucket).
select public.define_rate_limit_policy('pgshield_t_tbt', '{"free": {"minute": 2}, "pro": {"minute": 100}}'::jsonb,
                                       'token_bucket');
select check_rate_limit('pgshield_t_tbt', 2, null, 'pgshield_t_fay');
select public.set_rate_limit_tier('pgshield_t_fay', 'pro');
select is(pg_temp.ck(check_rate_limit('pgshield_t_tbt', 1, null, 'pgshield_t_fay')), 'allowed limit=100 remaining=97 retry=0 tier=pro violated=',
  'token_bucket: 2 used on free are 2 of pro''s 100 after an upgrade');
select is((check_rate_limit('pgshield_t_tbt', 1, null, 'pgshield_t_fay')).remaining, 96, '... and pro counts on from there');
select public.set_rate_limit_tier('pgshield_t_fay', 'free');
select is(pg_temp.ck(check_rate_limit('pgshield_t_tbt', 1, null, 'pgshield_t_fay')), 'denied limit=2 remaining=0 retry=30000 tier=free violated=minute',
  '... and back on free the 4 used are more than free holds: an empty bucket, one token''s wait (30 s), not 90 s');
-- Converted when the tier changes, a refused bucket refills at the new tier's rate (converted
-- only by the decision, it went on draining at pro's rate, and the wait it gave was wrong).
select public.define_rate_limit_policy('pgshield_t_tbd', '{"free": {"minute": 2}, "pro": {"minute": 100}}'::jsonb,
                                       'token_bucket');
select public.set_rate_limit_tier('pgshield_t_gus', 'pro');
select check_rate_limit('pgshield_t_tbd', 100, null, 'pgshield_t_gus');
select public.set_rate_limit_tier('pgshield_t_gus', 'free');
select is((check_rate_limit('pgshield_t_tbd', 1, null, 'pgshield_t_gus')).retry_after_ms, 30000,
  'token_bucket: a downgrade after 100 of pro''s 100 is an empty free bucket: one token in 30 s');
select pgshield.advance_clock('30 seconds');
select is((check_rate_limit('pgshield_t_tbd', 1, null, 'pgshield_t_gus')).allowed, true,
  '... and 30 s later, as it said, the token is there');

select public.define_rate_limit_policy('pgshield_t_sw', '{"free": {"minute": 4}}'::jsonb, 'sliding_window');
select pgshield.set_clock('2030-01-01 02:00:30+00');
select is((check_rate_limit('pgshield_t_sw', 4, null, 'pgshield_t_fay')).allowed, true, 'sliding_window policies: 4 of 4');
select pgshield.set_clock('2030-01-01 02:01:30+00');
select is(pg_temp.ck(check_rate_limit('pgshield_t_sw', 2, null, 'pgshield_t_fay')), 'allowed limit=4 remaining=0 retry=0 tier=free violated=',
  'sliding_window policies: half a window later the previous 4 weigh 2');

-- --------------------------------------------------------------- counters ----
create temp table t_counts as
  select allowed, denied from pgshield.rate_limit_counters where policy = 'pgshield_t_api';
select is((select (allowed, denied)::text from t_counts), '(6,6)',
  'counters: allowed and denied decisions of the policy, peeks not included');
select peek_check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_alice');
select check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_zed');
select is((select (c.allowed - t.allowed, c.denied - t.denied)::text
             from pgshield.rate_limit_counters c, t_counts t where c.policy = 'pgshield_t_api'),
  '(1,0)', 'counters: a check counts once, a peek not at all');

select is(public.define_rate_limit_policy('pgshield_t_float', '{"free": {"minute": 50.0, "3600": 1e3}}')
            -> 'tiers' -> 'free',
          '[{"name": "minute", "limit": 50, "window_seconds": 60}, {"name": "hour", "limit": 1000, "window_seconds": 3600}]',
          'a whole number written as 50.0 or 1e3 (JSON from a float) is a limit');

-- ---------------------------------------------------------- drop a policy ----
create temp table t_seq as
  select allowed_counter::text as seq from pgshield.rate_limit_policies where name = 'pgshield_t_api';
select ok((select count(*) from pgshield.rate_limit_policy_state where policy = 'pgshield_t_api') > 0,
  'the policy has state to drop');
select is(public.drop_rate_limit_policy('pgshield_t_api'), true, 'drop_rate_limit_policy drops it');
select is((select count(*)::integer from pgshield.rate_limit_policy_state where policy = 'pgshield_t_api'), 0,
  '... with its state');
select is(to_regclass((select seq from t_seq)), null, '... and its counters');
select is(public.drop_rate_limit_policy('pgshield_t_api'), false, 'dropping a missing policy returns false');
select throws_ok($$ select check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_alice') $$, '22023', null,
  'checking a dropped policy is bad input');

select * from finish();
rollback;

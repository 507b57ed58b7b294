-- rate_limit: bad input is 22023 with a message naming the parameter, and writes nothing.
begin;
\ir _helpers.psql
select plan(54);

-- Keys, subjects, policies and tiers start with pgshield_t_: no project has them.
select public.define_rate_limit_policy('pgshield_t_api', '{"free": {"minute": 10}}');
select pgshield.set_clock('2030-01-01 00:00:10+00');

-- ---------------------------------------------------- increment_rate_limit ----
select throws_ok($$ select increment_rate_limit(null, 10, 60) $$, '22023',
  'p_key must be 1 to 256 characters', 'a null key');
select throws_ok($$ select increment_rate_limit('', 10, 60) $$, '22023',
  'p_key must be 1 to 256 characters', 'an empty key');
select throws_ok($$ select increment_rate_limit('pgshield_t_' || repeat('k', 246), 10, 60) $$, '22023',
  'p_key must be 1 to 256 characters', 'a key of 257 characters');
select lives_ok($$ select increment_rate_limit('pgshield_t_' || repeat('k', 245), 10, 60) $$, 'a key of 256 characters is fine');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 0, 60) $$, '22023',
  'p_limit must be a positive integer', 'a zero limit');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', -1, 60) $$, '22023',
  'p_limit must be a positive integer', 'a negative limit');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', null, 60) $$, '22023',
  'p_limit must be a positive integer', 'a null limit');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 10, 0) $$, '22023',
  'p_window_seconds must be between 1 and 2678400 (31 days)', 'a zero window');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 10, -60) $$, '22023',
  'p_window_seconds must be between 1 and 2678400 (31 days)', 'a negative window');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 10, 2678401) $$, '22023',
  'p_window_seconds must be between 1 and 2678400 (31 days)', 'a window over 31 days');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 10, 60, 0) $$, '22023',
  'p_cost must be a positive integer', 'a zero cost');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 10, 60, -5) $$, '22023',
  'p_cost must be a positive integer', 'a negative cost (no refunds through increment)');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 10, 60, null) $$, '22023',
  'p_cost must be a positive integer', 'a null cost');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 10, 60, 1, 'leaky_bucket') $$, '22023',
  'p_algorithm must be fixed_window, sliding_window or token_bucket', 'an unknown algorithm');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 10, 60, 20, 'leaky_bucket') $$, '22023',
  'p_algorithm must be fixed_window, sliding_window or token_bucket',
  'an unknown algorithm is refused even when the cost exceeds the limit');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 10, 60, 1, null) $$, '22023',
  'p_algorithm must be fixed_window, sliding_window or token_bucket', 'a null algorithm');

-- The same on a key whose row is in the current window, which an allowed
-- call updates without the argument test (one update): still 22023, and the
-- row keeps its one allowed call.
select ok((select allowed from increment_rate_limit('pgshield_t_live', 10, 60)), 'a key with a live row');
select throws_ok($$ select increment_rate_limit('pgshield_t_live', 10, 60, 0) $$, '22023',
  'p_cost must be a positive integer', 'a zero cost on a live row');
select throws_ok($$ select increment_rate_limit('pgshield_t_live', 10, 60, -5) $$, '22023',
  'p_cost must be a positive integer', 'a negative cost on a live row (no refunds through increment)');
select throws_ok($$ select increment_rate_limit('pgshield_t_live', 10, 60, null) $$, '22023',
  'p_cost must be a positive integer', 'a null cost on a live row');
select throws_ok($$ select increment_rate_limit('pgshield_t_live', 0, 60) $$, '22023',
  'p_limit must be a positive integer', 'a zero limit on a live row');
select throws_ok($$ select increment_rate_limit('pgshield_t_live', null, 60) $$, '22023',
  'p_limit must be a positive integer', 'a null limit on a live row');
select is(
  (select row(count, limit_value, window_start)::text from pgshield.rate_limit_state
    where key = 'pgshield_t_live' and policy = '' and window_seconds = 60),
  row(1::bigint, 10, timestamptz '2030-01-01 00:00:00+00')::text,
  'the live row still holds its one call, under its limit, in its window');

-- ------------------------------------------------------- the other direct calls ----
select throws_ok($$ select peek_rate_limit('', 10, 60) $$, '22023', 'p_key must be 1 to 256 characters',
  'peek_rate_limit checks its key');
select throws_ok($$ select peek_rate_limit('pgshield_t_k', 10, 60, 0) $$, '22023', 'p_cost must be a positive integer',
  'peek_rate_limit checks its cost');
select is((record_rate_limit_key_usage('pgshield_t_k', 10, 60, 0)).remaining, 9,
  'record_rate_limit_key_usage of 0 (an exact estimate) answers as for a request of cost 1, recording nothing (checked below)');
select throws_ok($$ select record_rate_limit_key_usage('pgshield_t_k', 10, 60, 5, 'nope') $$, '22023',
  'p_algorithm must be fixed_window, sliding_window or token_bucket', 'record_rate_limit_key_usage checks the algorithm');
select throws_ok($$ select reset_rate_limit(null) $$, '22023', 'p_key must be 1 to 256 characters',
  'reset_rate_limit checks its key');
select throws_ok($$ select reset_rate_limit('pgshield_t_k', 0) $$, '22023',
  'p_window_seconds must be between 1 and 2678400 (31 days)', 'reset_rate_limit checks its window');

-- -------------------------------------------------------------- policies ----
select throws_ok($$ select check_rate_limit('pgshield_t_no_such_policy', 1, null, 'pgshield_t_s') $$, '22023',
  'p_policy: unknown policy ''pgshield_t_no_such_policy''', 'an unknown policy');
select throws_ok($$ select check_rate_limit(null, 1, null, 'pgshield_t_s') $$, '22023',
  'p_policy must not be null', 'a null policy');
select throws_ok($$ select check_rate_limit('pgshield_t_api', 0, null, 'pgshield_t_s') $$, '22023',
  'p_cost must be a positive integer', 'a zero cost on a policy');
select throws_ok($$ select check_rate_limit('pgshield_t_api', 1, '/nope', 'pgshield_t_s') $$, '22023',
  'p_endpoint: unknown endpoint ''/nope'' for policy ''pgshield_t_api''', 'an unknown endpoint');
select throws_ok($$ select check_rate_limit('pgshield_t_api', 1, null, repeat('s', 257)) $$, '22023',
  'p_subject must be 1 to 256 characters', 'an over-long subject');
select throws_ok($$ select check_rate_limit('pgshield_t_api', 1, null, '') $$, '22023',
  'p_subject must be 1 to 256 characters', 'an empty subject');
select is((record_rate_limit_usage('pgshield_t_api', 'pgshield_t_s', 0)).remaining, 9,
  'record_rate_limit_usage of 0 (an exact estimate) answers as for a request of cost 1, recording nothing (checked below)');
select throws_ok($$ select record_rate_limit_usage('pgshield_t_api', 'pgshield_t_s', null) $$, '22023',
  'p_amount must be an integer', 'record_rate_limit_usage refuses a null amount');
select throws_ok($$ select record_rate_limit_usage('pgshield_t_api', null, 5) $$, '22023',
  'p_subject must be 1 to 256 characters', 'record_rate_limit_usage needs a subject');
select throws_ok($$ select reset_rate_limit_subject('pgshield_t_s', 'pgshield_t_no_such_policy') $$, '22023',
  'p_policy: unknown policy ''pgshield_t_no_such_policy''', 'reset_rate_limit_subject checks the policy');
select throws_ok($$ select set_rate_limit_tier('pgshield_t_s', 'pgshield_t_platinum') $$, '22023',
  'p_tier: unknown tier ''pgshield_t_platinum''', 'an unknown tier');
select throws_ok($$ select set_rate_limit_tier(null, 'pro') $$, '22023',
  'p_subject must be 1 to 256 characters', 'set_rate_limit_tier needs a subject');

-- ------------------------------------------------------- policy definitions ----
select throws_ok($$ select define_rate_limit_policy('Bad Name', '{"free": {"minute": 1}}') $$, '22023',
  null, 'a policy name with spaces and capitals');
select throws_ok($$ select define_rate_limit_policy('pgshield_t_p', '{}') $$, '22023', null, 'no tiers');
select throws_ok($$ select define_rate_limit_policy('pgshield_t_p', '{"free": {"60": 5, "minute": 100}}') $$, '22023',
  'p_windows: tier ''free'' names the 60-second window twice', 'one window named twice (the stricter limit was dropped)');
select throws_ok($$ select define_rate_limit_policy('pgshield_t_p', '{"free": {"fortnight": 1}}') $$, '22023',
  'p_windows: bad window ''fortnight'' in tier ''free''', 'an unknown window name');
select throws_ok($$ select define_rate_limit_policy('pgshield_t_p', '{"free": {"minute": 0}}') $$, '22023',
  'p_windows: the limit of ''minute'' in tier ''free'' must be a positive integer', 'a zero limit');
select throws_ok($$ select define_rate_limit_policy('pgshield_t_p', '{"free": {"minute": 1.5}}') $$, '22023',
  'p_windows: the limit of ''minute'' in tier ''free'' must be a positive integer', 'a fractional limit');
select throws_ok($$ select define_rate_limit_policy('pgshield_t_p', '{"free": {"minute": 1}}', 'leaky') $$, '22023',
  'p_algorithm must be fixed_window, sliding_window or token_bucket', 'an unknown policy algorithm');
select throws_ok($$ select define_rate_limit_policy('pgshield_t_p', '{"free": {"minute": 1}}', p_unit => 'bytes') $$, '22023',
  'p_unit must be requests or tokens', 'an unknown unit');
select throws_ok($$ select define_rate_limit_policy('pgshield_t_p', '{"pro": {"minute": 1}}') $$, '22023',
  'p_default_tier must be one of the tiers in p_windows', 'a default tier without windows');
select throws_ok($$ select define_rate_limit_policy('pgshield_t_p', '{"free": {"minute": 1}}',
                     p_endpoint_costs => '{"/x": 0}') $$, '22023',
  'p_endpoint_costs: endpoint ''/x'' needs a positive multiplier', 'a zero endpoint multiplier');
select throws_ok($$ select pgshield.cleanup_expired_rate_limits(0) $$, '22023',
  'p_batch_size must be a positive integer', 'a zero cleanup batch');
select throws_ok($$ select pgshield.cleanup_expired_rate_limits(10, interval '300000 years') $$, '22023',
  'p_expired_for must be an interval of zero to 1000 years', 'a cleanup age past the timestamp range');

-- ----------------------------------------------------------- nothing written ----
-- Only keys this file used (a project's own state is not counted): pgshield_t_*
-- but the good calls', and keys no good call can write.
select is(
  (select count(*)::integer from pgshield.rate_limit_state
    where (key like 'pgshield\_t\_%'
           and key not in ('pgshield_t_' || repeat('k', 245), 'pgshield_t_live'))
       or key = '' or length(key) > 256)
  + (select count(*)::integer from pgshield.rate_limit_policy_state
      where subject like 'pgshield\_t\_%' or subject = '' or length(subject) > 256), 0,
  'no bad call wrote any rate limit state');
select * from finish();
rollback;

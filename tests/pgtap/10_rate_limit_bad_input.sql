-- rate_limit: bad input is 22023 with a message naming the parameter, and writes nothing.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(44);

select pgshield.set_clock('2030-01-01 00:00:10+00');

-- ---------------------------------------------------- increment_rate_limit ----
select throws_ok($$ select increment_rate_limit(null, 10, 60) $$, '22023',
  'p_key must be 1 to 256 characters', 'a null key');
select throws_ok($$ select increment_rate_limit('', 10, 60) $$, '22023',
  'p_key must be 1 to 256 characters', 'an empty key');
select throws_ok($$ select increment_rate_limit(repeat('k', 257), 10, 60) $$, '22023',
  'p_key must be 1 to 256 characters', 'a key of 257 characters');
select lives_ok($$ select increment_rate_limit(repeat('k', 256), 10, 60) $$, 'a key of 256 characters is fine');
select throws_ok($$ select increment_rate_limit('k', 0, 60) $$, '22023',
  'p_limit must be a positive integer', 'a zero limit');
select throws_ok($$ select increment_rate_limit('k', -1, 60) $$, '22023',
  'p_limit must be a positive integer', 'a negative limit');
select throws_ok($$ select increment_rate_limit('k', null, 60) $$, '22023',
  'p_limit must be a positive integer', 'a null limit');
select throws_ok($$ select increment_rate_limit('k', 10, 0) $$, '22023',
  'p_window_seconds must be between 1 and 2678400 (31 days)', 'a zero window');
select throws_ok($$ select increment_rate_limit('k', 10, -60) $$, '22023',
  'p_window_seconds must be between 1 and 2678400 (31 days)', 'a negative window');
select throws_ok($$ select increment_rate_limit('k', 10, 2678401) $$, '22023',
  'p_window_seconds must be between 1 and 2678400 (31 days)', 'a window over 31 days');
select throws_ok($$ select increment_rate_limit('k', 10, 60, 0) $$, '22023',
  'p_cost must be a positive integer', 'a zero cost');
select throws_ok($$ select increment_rate_limit('k', 10, 60, -5) $$, '22023',
  'p_cost must be a positive integer', 'a negative cost (no refunds through increment)');
select throws_ok($$ select increment_rate_limit('k', 10, 60, null) $$, '22023',
  'p_cost must be a positive integer', 'a null cost');
select throws_ok($$ select increment_rate_limit('k', 10, 60, 1, 'leaky_bucket') $$, '22023',
  'p_algorithm must be fixed_window, sliding_window or token_bucket', 'an unknown algorithm');
select throws_ok($$ select increment_rate_limit('k', 10, 60, 20, 'leaky_bucket') $$, '22023',
  'p_algorithm must be fixed_window, sliding_window or token_bucket',
  'an unknown algorithm is refused even when the cost exceeds the limit');
select throws_ok($$ select increment_rate_limit('k', 10, 60, 1, null) $$, '22023',
  'p_algorithm must be fixed_window, sliding_window or token_bucket', 'a null algorithm');

-- ------------------------------------------------------- the other direct calls ----
select throws_ok($$ select peek_rate_limit('', 10, 60) $$, '22023', 'p_key must be 1 to 256 characters',
  'peek_rate_limit checks its key');
select throws_ok($$ select peek_rate_limit('k', 10, 60, 0) $$, '22023', 'p_cost must be a positive integer',
  'peek_rate_limit checks its cost');
select throws_ok($$ select record_rate_limit_key_usage('k', 10, 60, 0) $$, '22023',
  'p_amount must be a non-zero integer', 'record_rate_limit_key_usage refuses an amount of 0');
select throws_ok($$ select record_rate_limit_key_usage('k', 10, 60, 5, 'nope') $$, '22023',
  'p_algorithm must be fixed_window, sliding_window or token_bucket', 'record_rate_limit_key_usage checks the algorithm');
select throws_ok($$ select reset_rate_limit(null) $$, '22023', 'p_key must be 1 to 256 characters',
  'reset_rate_limit checks its key');
select throws_ok($$ select reset_rate_limit('k', 0) $$, '22023',
  'p_window_seconds must be between 1 and 2678400 (31 days)', 'reset_rate_limit checks its window');

-- -------------------------------------------------------------- policies ----
select throws_ok($$ select check_rate_limit('no-such-policy', 1, null, 's') $$, '22023',
  'p_policy: unknown policy ''no-such-policy''', 'an unknown policy');
select throws_ok($$ select check_rate_limit(null, 1, null, 's') $$, '22023',
  'p_policy must not be null', 'a null policy');
select throws_ok($$ select check_rate_limit('api', 0, null, 's') $$, '22023',
  'p_cost must be a positive integer', 'a zero cost on a policy');
select throws_ok($$ select check_rate_limit('api', 1, '/nope', 's') $$, '22023',
  'p_endpoint: unknown endpoint ''/nope'' for policy ''api''', 'an unknown endpoint');
select throws_ok($$ select check_rate_limit('api', 1, null, repeat('s', 257)) $$, '22023',
  'p_subject must be 1 to 256 characters', 'an over-long subject');
select throws_ok($$ select check_rate_limit('api', 1, null, '') $$, '22023',
  'p_subject must be 1 to 256 characters', 'an empty subject');
select throws_ok($$ select record_rate_limit_usage('api', 's', 0) $$, '22023',
  'p_amount must be a non-zero integer', 'record_rate_limit_usage refuses an amount of 0');
select throws_ok($$ select record_rate_limit_usage('api', null, 5) $$, '22023',
  'p_subject must be 1 to 256 characters', 'record_rate_limit_usage needs a subject');
select throws_ok($$ select reset_rate_limit_subject('s', 'no-such-policy') $$, '22023',
  'p_policy: unknown policy ''no-such-policy''', 'reset_rate_limit_subject checks the policy');
select throws_ok($$ select set_rate_limit_tier('s', 'platinum') $$, '22023',
  'p_tier: unknown tier ''platinum''', 'an unknown tier');
select throws_ok($$ select set_rate_limit_tier(null, 'pro') $$, '22023',
  'p_subject must be 1 to 256 characters', 'set_rate_limit_tier needs a subject');

-- ------------------------------------------------------- policy definitions ----
select throws_ok($$ select define_rate_limit_policy('Bad Name', '{"free": {"minute": 1}}') $$, '22023',
  null, 'a policy name with spaces and capitals');
select throws_ok($$ select define_rate_limit_policy('p', '{}') $$, '22023', null, 'no tiers');
select throws_ok($$ select define_rate_limit_policy('p', '{"free": {"fortnight": 1}}') $$, '22023',
  'p_windows: bad window ''fortnight'' in tier ''free''', 'an unknown window name');
select throws_ok($$ select define_rate_limit_policy('p', '{"free": {"minute": 0}}') $$, '22023',
  'p_windows: the limit of ''minute'' in tier ''free'' must be a positive integer', 'a zero limit');
select throws_ok($$ select define_rate_limit_policy('p', '{"free": {"minute": 1.5}}') $$, '22023',
  'p_windows: the limit of ''minute'' in tier ''free'' must be a positive integer', 'a fractional limit');
select throws_ok($$ select define_rate_limit_policy('p', '{"free": {"minute": 1}}', 'leaky') $$, '22023',
  'p_algorithm must be fixed_window, sliding_window or token_bucket', 'an unknown policy algorithm');
select throws_ok($$ select define_rate_limit_policy('p', '{"free": {"minute": 1}}', p_unit => 'bytes') $$, '22023',
  'p_unit must be requests or tokens', 'an unknown unit');
select throws_ok($$ select define_rate_limit_policy('p', '{"pro": {"minute": 1}}') $$, '22023',
  'p_default_tier must be one of the tiers in p_windows', 'a default tier without windows');
select throws_ok($$ select define_rate_limit_policy('p', '{"free": {"minute": 1}}',
                     p_endpoint_costs => '{"/x": 0}') $$, '22023',
  'p_endpoint_costs: endpoint ''/x'' needs a positive multiplier', 'a zero endpoint multiplier');
select throws_ok($$ select pgshield.cleanup_expired_rate_limits(0) $$, '22023',
  'p_batch_size must be a positive integer', 'a zero cleanup batch');

-- ----------------------------------------------------------- nothing written ----
select is(
  (select count(*)::integer from pgshield.rate_limit_state where key <> repeat('k', 256)), 0,
  'no bad call wrote any rate limit state');
select * from finish();
rollback;

-- rate_limit: who may call what (anon, authenticated, service_role), and as whom.
begin;
\ir _helpers.psql
select plan(48);

-- Policies, keys and subjects of this file's own (pgshield_t_*). The clock
-- stands in 2001, where cleanup (called below) finds no project row expired.
select public.define_rate_limit_policy('pgshield_t_open', '{"free": {"minute": 2}}'::jsonb, 'fixed_window',
  p_allow_anonymous => true);
select public.define_rate_limit_policy('pgshield_t_api',
  '{"free": {"minute": 10, "hour": 100, "day": 500}, "pro": {"minute": 100, "hour": 2000, "day": 20000}}'::jsonb);
select public.define_rate_limit_policy('pgshield_t_tokens', '{"free": {"day": 50000}}'::jsonb, 'fixed_window',
  p_unit => 'tokens');
select pg_temp.create_test_user('alice');
select pgshield.set_clock('2001-01-01 00:00:10+00');

-- ---------------------------------------------------------------- grants ----
-- Which functions anon and authenticated may execute, and search_path: 05_pack_exposure.sql.
select ok(
  not exists (
    select 1 from pg_class c
     where c.relnamespace = 'pgshield'::regnamespace and c.relname like 'rate\_limit%' and c.relkind = 'r'
       and (has_table_privilege('authenticated', c.oid, 'select,insert,update,delete')
            or has_table_privilege('service_role', c.oid, 'select,insert,update,delete'))
  ),
  'API roles have no privilege on any rate limit table');
select ok(
  not (has_table_privilege('anon', 'pgshield.rate_limit_policy_state_windows', 'select')
       or has_table_privilege('authenticated', 'pgshield.rate_limit_policy_state_windows', 'select')
       or has_table_privilege('service_role', 'pgshield.rate_limit_policy_state_windows', 'select')),
  'no API role may read the view of every subject''s policy windows (it runs as its owner)');
select ok(
  (select bool_and(c.relrowsecurity) from pg_class c
    where c.relnamespace = 'pgshield'::regnamespace and c.relname like 'rate\_limit%' and c.relkind = 'r'),
  'row-level security is on for every rate limit table');
select ok(
  (select bool_and(p.prosecdef = not (has_function_privilege('anon', p.oid, 'execute')
                                      or has_function_privilege('authenticated', p.oid, 'execute')))
     from pg_proc p
    where p.oid in (select f from pg_temp.pack_functions() f)
      and p.pronamespace = 'public'::regnamespace and p.proname like '%rate\_limit%'),
  'public rate limit entry points that anon or authenticated may call run as the invoker, the rest as definer');
select ok(has_type_privilege('anon', 'public.rate_limit_check_result', 'usage'),
  'anon may use the result type of the entry points it may call');

-- ------------------------------------------------------------------- anon ----
select pg_temp.act_as('anon');
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 10, 60) $$, '42501', null,
  'anon cannot call increment_rate_limit');
select throws_ok($$ select peek_rate_limit('pgshield_t_k', 10, 60) $$, '42501', null, 'anon cannot call peek_rate_limit');
select throws_ok($$ select reset_rate_limit('pgshield_t_k') $$, '42501', null, 'anon cannot call reset_rate_limit');
select throws_ok($$ select get_rate_limit_usage() $$, '42501', null, 'anon cannot read usage');
select throws_ok($$ select check_rate_limit('pgshield_t_api') $$, '42501', null,
  'anon is denied on a policy that does not allow anonymous callers');
select throws_ok($$ select peek_check_rate_limit('pgshield_t_api') $$, '42501', null, '... also for a peek');
select throws_ok($$ select check_rate_limit('pgshield_t_no_such_policy', 1, '/nope') $$, '42501',
  'this policy is not available to anonymous callers',
  'anon gets the same answer for a policy that does not exist: it cannot enumerate policies');
select is((check_rate_limit('pgshield_t_open')).subject, 'anon:unknown',
  'anon without request headers shares the anon:unknown bucket');
select pg_temp.act_as_owner();
select pgshield.set_client_address_source('x-forwarded-for', 1);  -- whatever the project set
select pg_temp.act_as('anon', p_headers => '{"x-forwarded-for": "10.0.0.1, 203.0.113.7"}',
                      p_method => 'POST', p_path => '/rpc/check_rate_limit');
select is((check_rate_limit('pgshield_t_open')).subject, 'anon:203.0.113.7',
  'anon is keyed by the entry its trusted proxy wrote (the rightmost), never by what the client prepends');
select is((check_rate_limit('pgshield_t_open')).remaining, 0, '... and limited per address (2 per minute)');
select is((check_rate_limit('pgshield_t_open')).allowed, false, '... the third call from it is denied');
select pg_temp.act_as('anon', p_headers => '{"x-forwarded-for": "2001:DB8::1"}');
select is((check_rate_limit('pgshield_t_open')).subject, 'anon:2001:db8::/64',
  'IPv6 addresses are normalised and grouped by /64');
select pg_temp.act_as('anon', p_headers => '{"x-forwarded-for": "not-an-ip"}');
select is((check_rate_limit('pgshield_t_open')).subject, 'anon:unknown', 'a garbage address falls back to anon:unknown');
select pg_temp.act_as('anon', p_headers => '{"x-forwarded-for": "1:2:3:4:5:6:7:8:9"}');
select is((check_rate_limit('pgshield_t_open')).subject, 'anon:unknown', 'an address that does not parse falls back too');
select throws_ok($$ select check_rate_limit('pgshield_t_open', 1, null, 'pgshield_t_someone') $$, '42501', null,
  'anon cannot choose a subject');
select throws_ok($$ select * from pgshield.rate_limit_usage $$, '42501', null, 'anon cannot read the usage view');

-- ---------------------------------------------------------- authenticated ----
select pg_temp.act_as('authenticated', pg_temp.test_user('alice'));
select throws_ok($$ select increment_rate_limit('pgshield_t_k', 10, 60) $$, '42501', null,
  'authenticated cannot call increment_rate_limit (the caller would pick the limit)');
select throws_ok($$ select record_rate_limit_usage('pgshield_t_api', 'pgshield_t_x', 5) $$, '42501', null,
  'authenticated cannot record usage');
select throws_ok($$ select reset_rate_limit_subject(pg_temp.test_user('alice')::text) $$, '42501', null,
  'authenticated cannot reset itself');
select throws_ok($$ select set_rate_limit_tier(pg_temp.test_user('alice')::text, 'pro') $$, '42501', null,
  'authenticated cannot pick its tier');
select throws_ok($$ select define_rate_limit_policy('pgshield_t_mine', '{"free": {"minute": 1000000}}') $$,
  '42501', null, 'authenticated cannot define policies');
select throws_ok($$ select pgshield.cleanup_expired_rate_limits() $$, '42501', null,
  'authenticated cannot run cleanup');
select throws_ok($$ select * from pgshield.rate_limit_state $$, '42501', null,
  'authenticated cannot read the state table');
select throws_ok($$ select * from pgshield.rate_limit_policy_state $$, '42501', null,
  'authenticated cannot read the policy state table');
select throws_ok($$ select * from pgshield.rate_limit_policy_tiers $$, '42501', null,
  'authenticated cannot read the policy tiers');
select is((check_rate_limit('pgshield_t_api')).subject, pg_temp.test_user('alice')::text,
  'authenticated is limited as auth.uid()');
select is((check_rate_limit('pgshield_t_api', 1, null, pg_temp.test_user('alice')::text)).subject,
  pg_temp.test_user('alice')::text, 'passing its own id is accepted');
select throws_ok($$ select check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_someone-else') $$, '42501', null,
  'authenticated cannot be limited as someone else');
select throws_ok($$ select peek_check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_someone-else') $$, '42501',
  null, 'authenticated cannot peek at someone else');
select is(jsonb_array_length(get_rate_limit_usage()), 3, 'authenticated reads its own usage (3 windows)');
select throws_ok($$ select get_rate_limit_usage('pgshield_t_someone-else') $$, '42501', null,
  'authenticated cannot read someone else''s usage');
select pg_temp.act_as('authenticated');
select throws_ok($$ select check_rate_limit('pgshield_t_api') $$, '42501', null,
  'authenticated without a sub is refused');

-- ----------------------------------------------------------- service_role ----
select pg_temp.act_as('service_role');
select lives_ok($$ select increment_rate_limit('pgshield_t_svc', 10, 60) $$, 'service_role may call increment_rate_limit');
select is((check_rate_limit('pgshield_t_api', 1, null, 'pgshield_t_key:abc')).subject, 'pgshield_t_key:abc',
  'service_role chooses the subject (an API key here)');
select throws_ok($$ select check_rate_limit('pgshield_t_api') $$, '22023', null,
  'service_role must name a subject');
select lives_ok($$ select record_rate_limit_usage('pgshield_t_tokens', 'pgshield_t_key:abc', 100) $$,
  'service_role may record usage');
select lives_ok($$ select set_rate_limit_tier('pgshield_t_key:abc', 'pro') $$, 'service_role may assign tiers');
select is(jsonb_array_length(get_rate_limit_usage('pgshield_t_key:abc')), 4, 'service_role reads any subject''s usage');
select lives_ok($$ select pgshield.cleanup_expired_rate_limits() $$, 'service_role may run cleanup');
select ok((select count(*) from pgshield.rate_limit_counters where policy like 'pgshield\_t\_%') = 3,
  'service_role may read the counters view');
select ok((select count(*) from pgshield.rate_limit_usage where key = 'pgshield_t_key:abc') = 4,
  'service_role may read the usage view');
select throws_ok($$ select * from pgshield.rate_limit_state $$, '42501', null,
  'service_role still cannot touch the state table directly');
select throws_ok($$ update pgshield.rate_limit_policy_state set counts = '{}' $$, '42501', null,
  'service_role cannot touch the policy state table directly');
select pg_temp.act_as_owner();

select * from finish();
rollback;

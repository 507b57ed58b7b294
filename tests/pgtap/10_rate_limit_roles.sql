-- rate_limit: who may call what (anon, authenticated, service_role), and as whom.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(47);

select public.define_rate_limit_policy('t-open', '{"free": {"minute": 2}}'::jsonb, 'fixed_window',
  p_allow_anonymous => true);
select pgshield.set_clock('2030-01-01 00:00:10+00');

-- ---------------------------------------------------------------- grants ----
select ok(
  not exists (
    select 1 from pg_class c
     where c.relnamespace = 'pgshield'::regnamespace and c.relname like 'rate\_limit%' and c.relkind = 'r'
       and (has_table_privilege('authenticated', c.oid, 'select,insert,update,delete')
            or has_table_privilege('service_role', c.oid, 'select,insert,update,delete'))
  ),
  'API roles have no privilege on any rate limit table');
select ok(
  (select bool_and(c.relrowsecurity) from pg_class c
    where c.relnamespace = 'pgshield'::regnamespace and c.relname like 'rate\_limit%' and c.relkind = 'r'),
  'row-level security is on for every rate limit table');
select ok(
  (select bool_and(p.prosecdef) from pg_proc p
    where p.pronamespace = 'public'::regnamespace and p.proname like any (array['%rate\_limit%'])),
  'every public rate limit entry point is security definer');
select ok(
  not exists (
    select 1 from pg_proc p
     where p.proname like '%rate\_limit%'
       and p.pronamespace in ('public'::regnamespace, 'pgshield'::regnamespace)
       and not exists (select 1 from unnest(p.proconfig) s where s = 'search_path=pg_catalog, pg_temp')
  ),
  'every rate limit function pins search_path to pg_catalog, pg_temp');
select ok(
  not exists (
    select 1 from pg_proc p
     where p.proname like '%rate\_limit%' and p.pronamespace = 'public'::regnamespace
       and has_function_privilege('public', p.oid, 'execute')
  ),
  'PUBLIC may execute no rate limit entry point');
select is(
  (select array_agg(p.proname::text order by p.proname) from pg_proc p
    where p.pronamespace = 'public'::regnamespace and p.proname like '%rate\_limit%'
      and has_function_privilege('anon', p.oid, 'execute')),
  array['check_rate_limit', 'peek_check_rate_limit'],
  'anon may execute only check_rate_limit and peek_check_rate_limit');
select is(
  (select array_agg(p.proname::text order by p.proname) from pg_proc p
    where p.pronamespace = 'public'::regnamespace and p.proname like '%rate\_limit%'
      and has_function_privilege('authenticated', p.oid, 'execute')),
  array['check_rate_limit', 'get_rate_limit_usage', 'peek_check_rate_limit'],
  'authenticated may execute check, peek_check and get_rate_limit_usage');
select ok(has_type_privilege('anon', 'public.rate_limit_check_result', 'usage'),
  'anon may use the result type of the entry points it may call');

-- ------------------------------------------------------------------- anon ----
set local role anon;
select set_config('request.jwt.claims', '{"role": "anon"}', true);
select throws_ok($$ select increment_rate_limit('k', 10, 60) $$, '42501', null,
  'anon cannot call increment_rate_limit');
select throws_ok($$ select peek_rate_limit('k', 10, 60) $$, '42501', null, 'anon cannot call peek_rate_limit');
select throws_ok($$ select reset_rate_limit('k') $$, '42501', null, 'anon cannot call reset_rate_limit');
select throws_ok($$ select get_rate_limit_usage() $$, '42501', null, 'anon cannot read usage');
select throws_ok($$ select check_rate_limit('api') $$, '42501', null,
  'anon is denied on a policy that does not allow anonymous callers');
select throws_ok($$ select peek_check_rate_limit('api') $$, '42501', null, '... also for a peek');
select is((check_rate_limit('t-open')).subject, 'anon:unknown',
  'anon without request headers shares the anon:unknown bucket');
select set_config('request.headers', '{"x-forwarded-for": "203.0.113.7, 10.0.0.1"}', true);
select is((check_rate_limit('t-open')).subject, 'anon:203.0.113.7',
  'anon is keyed by the first x-forwarded-for entry');
select is((check_rate_limit('t-open')).remaining, 0, '... and limited per address (2 per minute)');
select is((check_rate_limit('t-open')).allowed, false, '... the third call from it is denied');
select set_config('request.headers', '{"x-forwarded-for": "2001:DB8::1"}', true);
select is((check_rate_limit('t-open')).subject, 'anon:2001:db8::1', 'IPv6 addresses are normalised');
select set_config('request.headers', '{"x-forwarded-for": "not-an-ip"}', true);
select is((check_rate_limit('t-open')).subject, 'anon:unknown', 'a garbage address falls back to anon:unknown');
select set_config('request.headers', '{"x-forwarded-for": "1:2:3:4:5:6:7:8:9"}', true);
select is((check_rate_limit('t-open')).subject, 'anon:unknown', 'an address that does not parse falls back too');
select throws_ok($$ select check_rate_limit('t-open', 1, null, 'someone') $$, '42501', null,
  'anon cannot choose a subject');
select throws_ok($$ select * from pgshield.rate_limit_usage $$, '42501', null, 'anon cannot read the usage view');
reset role;

-- ---------------------------------------------------------- authenticated ----
set local role authenticated;
select set_config('request.jwt.claims',
  '{"sub": "00000000-0000-0000-0000-0000000000a1", "role": "authenticated"}', true);
select throws_ok($$ select increment_rate_limit('k', 10, 60) $$, '42501', null,
  'authenticated cannot call increment_rate_limit (the caller would pick the limit)');
select throws_ok($$ select record_rate_limit_usage('api', 'x', 5) $$, '42501', null,
  'authenticated cannot record usage');
select throws_ok($$ select reset_rate_limit_subject('00000000-0000-0000-0000-0000000000a1') $$, '42501', null,
  'authenticated cannot reset itself');
select throws_ok($$ select set_rate_limit_tier('00000000-0000-0000-0000-0000000000a1', 'pro') $$, '42501', null,
  'authenticated cannot pick its tier');
select throws_ok($$ select define_rate_limit_policy('mine', '{"free": {"minute": 1000000}}') $$, '42501', null,
  'authenticated cannot define policies');
select throws_ok($$ select pgshield.cleanup_expired_rate_limits() $$, '42501', null,
  'authenticated cannot run cleanup');
select throws_ok($$ select * from pgshield.rate_limit_state $$, '42501', null,
  'authenticated cannot read the state table');
select is((check_rate_limit('api')).subject, '00000000-0000-0000-0000-0000000000a1',
  'authenticated is limited as auth.uid()');
select is((check_rate_limit('api', 1, null, '00000000-0000-0000-0000-0000000000a1')).subject,
  '00000000-0000-0000-0000-0000000000a1', 'passing its own id is accepted');
select throws_ok($$ select check_rate_limit('api', 1, null, 'someone-else') $$, '42501', null,
  'authenticated cannot be limited as someone else');
select throws_ok($$ select peek_check_rate_limit('api', 1, null, 'someone-else') $$, '42501', null,
  'authenticated cannot peek at someone else');
select is(jsonb_array_length(get_rate_limit_usage()), 3, 'authenticated reads its own usage (3 api windows)');
select throws_ok($$ select get_rate_limit_usage('someone-else') $$, '42501', null,
  'authenticated cannot read someone else''s usage');
select set_config('request.jwt.claims', '{"role": "authenticated"}', true);
select throws_ok($$ select check_rate_limit('api') $$, '42501', null, 'authenticated without a sub is refused');
reset role;

-- ----------------------------------------------------------- service_role ----
set local role service_role;
select lives_ok($$ select increment_rate_limit('svc', 10, 60) $$, 'service_role may call increment_rate_limit');
select is((check_rate_limit('api', 1, null, 'key:abc')).subject, 'key:abc',
  'service_role chooses the subject (an API key here)');
select throws_ok($$ select check_rate_limit('api') $$, '22023', null,
  'service_role must name a subject');
select lives_ok($$ select record_rate_limit_usage('ai_tokens', 'key:abc', 100) $$, 'service_role may record usage');
select lives_ok($$ select set_rate_limit_tier('key:abc', 'pro') $$, 'service_role may assign tiers');
select is(jsonb_array_length(get_rate_limit_usage('key:abc')), 4, 'service_role reads any subject''s usage');
select lives_ok($$ select pgshield.cleanup_expired_rate_limits() $$, 'service_role may run cleanup');
select ok((select count(*) from pgshield.rate_limit_counters) >= 3, 'service_role may read the counters view');
select ok((select count(*) from pgshield.rate_limit_usage where key = 'key:abc') = 4,
  'service_role may read the usage view');
select throws_ok($$ select * from pgshield.rate_limit_state $$, '42501', null,
  'service_role still cannot touch the state table directly');
reset role;

select * from finish();
rollback;

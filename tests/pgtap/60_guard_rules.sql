-- guard: rules, the hook as PostgREST calls it, read-only requests, roles and bad input.
begin;
\ir _helpers.psql
select plan(41);

select pgshield.set_clock('2001-01-01 00:00:05+00');
select pgshield.set_client_address_source('x-forwarded-for', 1);  -- whatever the project set
select public.define_rate_limit_policy('pgshield_t_writes', '{"free": {"60": 3}}',
                                       p_algorithm => 'fixed_window');
select pg_temp.create_test_user('alice');

-- ------------------------------------------------------------------ rules ----
select is((pgshield.define_guard_rule('pgshield_t_writes', 'authenticated', 'post', '/pgshield_t_todos'))
          ->> 'method', 'POST', 'a rule stores its method in upper case');
select is((pgshield.define_guard_rule(null, '*', '*', '/rpc/pgshield_t_health', p_action => 'exempt',
                                      p_position => 10)) ->> 'action', 'exempt', 'an exempt rule needs no policy');
select is((pgshield.define_guard_rule('pgshield_t_writes', 'anon', '*', '/rpc/pgshield_t_*', 2)) ->> 'cost', '2',
          'a prefix rule with a cost');
select is((select count(*)::integer from pgshield.guard_rule_list() r
            where r.rule ->> 'policy' = 'pgshield_t_writes' or r.rule ->> 'path' like '%pgshield_t_%'), 3,
          'guard_rule_list shows the rules');

select throws_ok($$ select pgshield.define_guard_rule('pgshield_t_writes', 'admin') $$, '22023', null,
  'an unknown role is refused');
select throws_ok($$ select pgshield.define_guard_rule('pgshield_t_writes', '*', 'TRACE') $$, '22023', null,
  'an unknown method is refused');
select throws_ok($$ select pgshield.define_guard_rule('pgshield_t_writes', '*', '*', 'todos%') $$, '22023', null,
  'a path that is not /... or * is refused');
select throws_ok($$ select pgshield.define_guard_rule('pgshield_t_writes', '*', '*', '/rest/v1/pgshield_t_todos') $$,
  '22023', null, 'a path with the gateway''s /rest/v1 is refused (PostgREST never sees it)');
select throws_ok($$ select pgshield.define_guard_rule('pgshield_t_writes', '*', '*', '/pgshield_t_todos/1') $$,
  '22023', null, 'a path below a table is refused (PostgREST routes none)');
select throws_ok($$ select pgshield.define_guard_rule('pgshield_t_writes', '*', '*', '/rpc/a/b*') $$,
  '22023', null, 'a path below a function is refused');
select throws_ok($$ select pgshield.define_guard_rule('pgshield_t_writes', p_cost => 0) $$, '22023', null,
  'a cost below 1 is refused');
select throws_ok($$ select pgshield.define_guard_rule('pgshield_t_no_such_policy') $$, '22023', null,
  'an unknown policy is refused');
select throws_ok($$ select pgshield.define_guard_rule('pgshield_t_writes', p_action => 'exempt') $$, '22023', null,
  'an exempt rule with a policy is refused');
select is((select count(*)::integer from pgshield.guard_rules r where r.policy = 'pgshield_t_writes'), 2,
          '... and refused rules wrote nothing');

-- ------------------------------------------------------------------- hook ----
select pg_temp.act_as('authenticated', pg_temp.test_user('alice'), p_method => 'POST', p_path => '/pgshield_t_todos');
select lives_ok($$ select pgshield.request_guard() $$, 'the first POST passes');
select matches(current_setting('response.headers', true), 'pgshield_t_writes-minute.*;r=2;t=55',
  '... and carries the RateLimit header in response.headers');
select lives_ok($$ select pgshield.request_guard() $$, 'the second passes');
select lives_ok($$ select pgshield.request_guard() $$, 'the third passes');
select throws_ok($$ select pgshield.request_guard() $$, 'PGRST', null, 'the fourth is refused (SQLSTATE PGRST)');
select pg_temp.act_as('authenticated', pg_temp.test_user('alice'), p_method => 'POST',
                      p_path => '/rpc/pgshield_t_health');
select lives_ok($$ select pgshield.request_guard() $$, 'an exempt path passes even over the limit');
select pg_temp.act_as('authenticated', pg_temp.test_user('alice'), p_method => 'PATCH', p_path => '/pgshield_t_todos');
select lives_ok($$ select pgshield.request_guard() $$, 'a request no rule matches passes');

-- anon: the prefix rule, keyed by the trusted address, cost 2 of 3
select pg_temp.act_as('anon', p_headers => '{"x-forwarded-for": "198.51.100.1, 203.0.113.9"}',
                      p_method => 'POST', p_path => '/rpc/pgshield_t_send');
select lives_ok($$ select pgshield.request_guard() $$, 'anon passes once (cost 2)');
select pg_temp.act_as('anon', p_headers => '{"x-forwarded-for": "198.51.100.2, 203.0.113.9"}',
                      p_method => 'POST', p_path => '/rpc/pgshield_t_send');
select throws_ok($$ select pgshield.request_guard() $$, 'PGRST', null,
  '... and a new prepended address buys nothing: the same trusted address is refused');

-- service_role: exempt unless a rule names it
select pg_temp.act_as('service_role', p_method => 'POST', p_path => '/pgshield_t_todos');
select lives_ok($$ select pgshield.request_guard() $$, 'service_role is exempt from * and other roles'' rules');

-- roles on the rule functions
select pg_temp.act_as('authenticated', pg_temp.test_user('alice'));
select throws_ok($$ select pgshield.define_guard_rule('pgshield_t_writes') $$, '42501', null,
  'authenticated cannot define rules');
select throws_ok($$ select pgshield.guard_rule_list() $$, '42501', null, 'authenticated cannot list rules');
select throws_ok($$ select pgshield.guard_set_chained('public.pgshield_t_hook') $$, '42501', null,
  'authenticated cannot choose the chained hook');
select pg_temp.act_as('anon');
select throws_ok($$ select pgshield.define_guard_rule('pgshield_t_writes') $$, '42501', null,
  'anon cannot define rules');
select throws_ok($$ select pgshield.install_request_guard() $$, '42501', null, 'anon cannot install the guard');
select throws_ok($$ select pgshield.guard_set_chained('public.pgshield_t_hook') $$, '42501', null,
  'anon cannot choose the chained hook');
select pg_temp.act_as('service_role');
select is((pgshield.define_guard_rule('pgshield_t_writes', 'authenticated', 'DELETE', '/pgshield_t_svc'))
          ->> 'path', '/pgshield_t_svc', 'service_role defines rules');
select throws_ok($$ select pgshield.drop_guard_rule(null) $$, '22023', null, 'drop_guard_rule(null) is bad input');
select throws_ok($$ select pgshield.set_guard_options(null) $$, '22023', null,
  'set_guard_options(null) is bad input');
select is((pgshield.request_guard_status() ->> 'allowed_headers')::boolean, true,
          '... and changed nothing');
select pg_temp.act_as_owner();

-- the chained hook: request_guard's body calls it by name, written by guard_set_chained
create function public.pgshield_t_hook() returns void language sql set search_path = pg_catalog as 'select 1';
create temp table t_hook as
  select p.prosrc as body, (select o.chained_function from pgshield.guard_options o where o.id) as chained
    from pg_proc p where p.oid = 'pgshield.request_guard()'::regprocedure;
grant select on t_hook to service_role;
select pg_temp.act_as('service_role');
select throws_ok($$ select pgshield.guard_set_chained('public.pgshield_t_no_such_hook') $$, '22023', null,
  'guard_set_chained refuses a function that does not exist');
select throws_ok($$ select pgshield.guard_set_chained('public.x(); drop table y') $$, '22023', null,
  '... and a name that is not schema.function');
select ok((select p.prosrc = t.body
                  and pgshield.request_guard_status() ->> 'chained_function' is not distinct from t.chained
             from pg_proc p, t_hook t where p.oid = 'pgshield.request_guard()'::regprocedure),
  '... changing neither the hook''s body nor the options');
select pgshield.guard_set_chained('public.pgshield_t_hook');
select ok((select p.prosrc like '%perform public.pgshield_t_hook();%' from pg_proc p
            where p.oid = 'pgshield.request_guard()'::regprocedure),
  'service_role chains a hook: request_guard calls it by name');
select pgshield.guard_set_chained(null);
select ok((select p.prosrc not like '%pgshield_t_hook%' from pg_proc p
            where p.oid = 'pgshield.request_guard()'::regprocedure),
  '... and unchains it');
select pg_temp.act_as_owner();


-- read-only: checked, not counted, never 25006
select pg_temp.act_as_owner();
select pgshield.define_guard_rule('pgshield_t_writes', 'authenticated', 'GET', '/pgshield_t_reads');
select pg_temp.create_test_user('bob');
select pg_temp.act_as('authenticated', pg_temp.test_user('bob'), p_method => 'GET', p_path => '/pgshield_t_reads');
set local transaction_read_only = on;
select lives_ok($$ select pgshield.request_guard() $$, 'a GET in a read-only transaction is checked without writing');
select pg_temp.act_as_owner();
select is((select count(*)::integer from pgshield.rate_limit_policy_state s
            where s.policy = 'pgshield_t_writes' and s.subject = pg_temp.test_user('bob')::text), 0,
          '... and counted nothing');

select * from finish();
rollback;

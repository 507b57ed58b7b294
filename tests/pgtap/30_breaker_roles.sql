-- breaker: who may call what. Only service_role and the owner; anon and
-- authenticated are refused everything (per-breaker grants are not supported).
begin;
\ir _helpers.psql
select plan(34);

select pgshield.set_clock('2001-01-01 00:00:00+00');
select public.configure_breaker('pgshield_t_r');
select pg_temp.create_test_user('alice');

-- ---------------------------------------------------------------- grants ----
select ok(
  not exists (
    select 1 from pg_class c
     where c.relnamespace = 'pgshield'::regnamespace and c.relname like 'breaker%' and c.relkind = 'r'
       and (has_table_privilege('anon', c.oid, 'select,insert,update,delete')
            or has_table_privilege('authenticated', c.oid, 'select,insert,update,delete')
            or has_table_privilege('service_role', c.oid, 'select,insert,update,delete'))
  ),
  'API roles have no privilege on any breaker table');
select ok(
  (select bool_and(c.relrowsecurity) from pg_class c
    where c.relnamespace = 'pgshield'::regnamespace and c.relname like 'breaker%' and c.relkind = 'r'),
  'row-level security is on for every breaker table');
select ok(
  (select bool_and(p.prosecdef and not has_function_privilege('anon', p.oid, 'execute')
                   and not has_function_privilege('authenticated', p.oid, 'execute')
                   and has_function_privilege('service_role', p.oid, 'execute'))
     from pg_proc p
    where p.oid in (select f from pg_temp.pack_functions() f)
      and p.pronamespace = 'public'::regnamespace and p.proname like '%breaker%'),
  'the public breaker entry points run as definer, for service_role only');
select is(
  (select array_agg(a.attname::text order by a.attname) from pg_attribute a
    where a.attrelid = 'pgshield.breakers'::regclass and a.attnum > 0 and not a.attisdropped
      and has_column_privilege('service_role', a.attrelid, a.attnum, 'select')),
  array['consecutive_failures', 'failure_rate', 'generation', 'name', 'slow_call_rate', 'state'],
  'service_role may read the six state columns of a breaker (the client''s prepared read), no other');
select ok(
  not exists (
    select 1 from pg_attribute a join pg_class c on c.oid = a.attrelid
     where c.relnamespace = 'pgshield'::regnamespace and c.relname like 'breaker%' and c.relkind = 'r'
       and a.attnum > 0 and not a.attisdropped
       and (has_column_privilege('anon', c.oid, a.attnum, 'select,insert,update,references')
            or has_column_privilege('authenticated', c.oid, a.attnum, 'select,insert,update,references'))
  ),
  'anon and authenticated may read no column of any breaker table');
select ok(not has_table_privilege('authenticated', 'pgshield.breaker_status', 'select')
          and has_table_privilege('service_role', 'pgshield.breaker_status', 'select'),
  'the status view is for service_role');

-- ------------------------------------------------------ anon, authenticated ----
select pg_temp.act_as('anon');
select throws_ok($$ select acquire_breaker('pgshield_t_r') $$, '42501', null, 'anon cannot acquire');
select throws_ok($$ select release_breaker('pgshield_t_r', 4294967296, 'failure') $$, '42501', null, 'anon cannot release');
select throws_ok($$ select configure_breaker('pgshield_t_r') $$, '42501', null, 'anon cannot configure');
select throws_ok($$ select reset_breaker('pgshield_t_r', 'x') $$, '42501', null, 'anon cannot reset');
select throws_ok($$ select force_breaker('pgshield_t_r', 'forced_open', 'x') $$, '42501', null, 'anon cannot force');
select throws_ok($$ select drop_breaker('pgshield_t_r') $$, '42501', null, 'anon cannot drop');
select throws_ok($$ select * from pgshield.breaker_status $$, '42501', null, 'anon cannot read the status');
select pg_temp.act_as('authenticated', pg_temp.test_user('alice'));
select throws_ok($$ select acquire_breaker('pgshield_t_r') $$, '42501', null, 'authenticated cannot acquire');
select throws_ok($$ select release_breaker('pgshield_t_r', 4294967296, 'failure') $$, '42501', null,
  'authenticated cannot release');
select throws_ok($$ select configure_breaker('pgshield_t_r') $$, '42501', null, 'authenticated cannot configure');
select throws_ok($$ select reset_breaker('pgshield_t_r', 'x') $$, '42501', null, 'authenticated cannot reset');
select throws_ok($$ select force_breaker('pgshield_t_r', 'disabled', 'x') $$, '42501', null, 'authenticated cannot force');
select throws_ok($$ select drop_breaker('pgshield_t_r') $$, '42501', null, 'authenticated cannot drop');
select throws_ok($$ select * from pgshield.breaker_events_recent() $$, '42501', null, 'authenticated cannot read events');
select throws_ok($$ select pgshield.breaker_cleanup(10) $$, '42501', null, 'authenticated cannot clean up');
select throws_ok($$ select pgshield.set_breaker_settings(false) $$, '42501', null, 'authenticated cannot change settings');
select pg_temp.act_as_owner();
select is((select row(state, generation, consecutive_failures)::text from pgshield.breakers where name = 'pgshield_t_r'),
  '(closed,1,0)', 'nothing the API roles tried changed the breaker');

-- ----------------------------------------------------------- service_role ----
select pg_temp.act_as('service_role');
select is((acquire_breaker('pgshield_t_r')).allowed, true, 'service_role acquires');
select is((release_breaker('pgshield_t_r', 4294967296, 'failure')).counted, true, 'service_role releases');
select is(configure_breaker('pgshield_t_r', p_failure_threshold => 1)->>'failure_threshold', '1',
  'service_role configures');
select is(force_breaker('pgshield_t_r', 'forced_open', 'pgshield_t drill')->>'state', 'forced_open',
  'service_role forces open');
select is(reset_breaker('pgshield_t_r', 'pgshield_t drill over')->>'state', 'closed', 'service_role resets');
select is((select state from pgshield.breaker_status where name = 'pgshield_t_r'), 'closed',
  'service_role reads the status view');
select is((select count(*)::integer from pgshield.breaker_events_recent('pgshield_t_r')), 2,
  'service_role reads the events');
select is((select e.actor::text from pgshield.breaker_events_recent('pgshield_t_r') e limit 1), 'service_role',
  'the events name service_role as the actor');
select is((select b.state || '/' || b.consecutive_failures from pgshield.breakers b
             where b.name = 'pgshield_t_r'), 'closed/0', 'service_role reads the state columns');
select throws_ok($$ select b.reason from pgshield.breakers b $$, '42501', null,
  'service_role cannot read the other columns');
select is(drop_breaker('pgshield_t_r'), true, 'service_role drops a breaker');
select pg_temp.act_as_owner();

select * from finish();
rollback;

-- pgshield core: schema privileges, version, the clock and caller detection.
begin;
\ir _helpers.psql
select plan(20);

-- ----------------------------------------------------------- privileges ----
-- Which functions anon and authenticated may execute: 05_pack_exposure.sql.
select has_schema('pgshield', 'the private schema pgshield exists');
select ok(has_schema_privilege('anon', 'pgshield', 'usage'),
  'anon may look names up in pgshield (the invoker entry points call the few functions granted to it)');
select ok(has_schema_privilege('authenticated', 'pgshield', 'usage'), 'authenticated may use pgshield');
select ok(has_schema_privilege('service_role', 'pgshield', 'usage'), 'service_role may use pgshield');
select ok(
  not exists (
    select 1 from pg_class c
     where c.relnamespace = 'pgshield'::regnamespace and c.relkind in ('r', 'p')
       and not c.relrowsecurity
  ),
  'row-level security is on for every pgshield table'
);
select ok(
  not exists (
    select 1 from pg_proc p
     where p.pronamespace = 'pgshield'::regnamespace
       and not exists (select 1 from unnest(p.proconfig) s where s like 'search_path=%')
  ),
  'every pgshield function pins search_path'
);

-- -------------------------------------------------------------- version ----
select matches(pgshield.version(), '^\d+\.\d+\.\d+$', 'version() is a semantic version');

select pg_temp.act_as('authenticated', pg_temp.create_test_user('alice'));
select lives_ok('select pgshield.version()', 'authenticated may read the version');
select throws_ok('select pgshield.set_clock(now())', '42501', null, 'authenticated cannot move the clock');

select pg_temp.act_as('anon');
select throws_ok('select pgshield.version()', '42501', null, 'anon cannot reach pgshield at all');
select pg_temp.act_as_owner();

-- ---------------------------------------------------------------- clock ----
select is(pgshield.set_clock('2030-01-01 00:00:00+00'), '2030-01-01 00:00:00+00'::timestamptz,
  'set_clock freezes the clock');
select is(pgshield.advance_clock('90 seconds'), '2030-01-01 00:01:30+00'::timestamptz,
  'advance_clock moves a frozen clock');
select throws_ok('select pgshield.advance_clock(null)', '22023', null, 'a null shift is bad input');
select ok(pgshield.reset_clock() - clock_timestamp() < interval '1 second'
          and pgshield.now() - clock_timestamp() < interval '1 second',
  'reset_clock returns to the database clock');

-- -------------------------------------------------------------- callers ----
-- A definer function of the pack's kind, in public like an entry point.
create function public.pgshield_t_whoami() returns text
language sql security definer set search_path = pg_catalog, pg_temp
as $$ select pgshield.caller_role() || ':' || pgshield.caller_is_trusted() $$;
grant execute on function public.pgshield_t_whoami() to authenticated, service_role;

-- The test's own role: postgres on Supabase (not a superuser there, but the
-- owner of schema pgshield and bypassrls), or whichever role runs the file.
select is(public.pgshield_t_whoami(), session_user || ':true', 'the owner is a trusted caller');
select pg_temp.act_as('authenticated', pg_temp.test_user('alice'));
select is(public.pgshield_t_whoami(), 'authenticated:false',
  'inside a definer function, authenticated is seen and not trusted');
select pg_temp.act_as('service_role');
select is(public.pgshield_t_whoami(), 'service_role:true', 'inside a definer function, service_role is seen and trusted');
select throws_ok('select pgshield.caller_role()', '42501', null, 'API roles cannot call the caller helpers directly');
select pg_temp.act_as_owner();

-- Not an API role: set by hand, no claims. Creating a role does not make its
-- creator a member (PostgreSQL 15; on Supabase the test runs as postgres, which
-- is CREATEROLE but not a superuser), so the test grants it to itself first.
-- pgTAP lives in schema extensions, which on Supabase only postgres and the API
-- roles may use (and postgres cannot grant): the answers are taken as the role
-- and asserted on as the owner.
create role pgshield_t_owner nologin nosuperuser nobypassrls;
grant pgshield_t_owner to current_user;
grant usage on schema pgshield to pgshield_t_owner;
grant execute on function public.pgshield_t_whoami() to pgshield_t_owner;
create temp table pgshield_t_seen (step text primary key, whoami text not null);
grant insert on pg_temp.pgshield_t_seen to pgshield_t_owner;
set local role pgshield_t_owner;
insert into pg_temp.pgshield_t_seen values ('ordinary', public.pgshield_t_whoami());
select pg_temp.act_as_owner();
alter schema pgshield owner to pgshield_t_owner;
set local role pgshield_t_owner;
insert into pg_temp.pgshield_t_seen values ('schema owner', public.pgshield_t_whoami());
select pg_temp.act_as_owner();
select is((select s.whoami from pg_temp.pgshield_t_seen s where s.step = 'ordinary'),
  'pgshield_t_owner:false', 'an ordinary role is not trusted');
select is((select s.whoami from pg_temp.pgshield_t_seen s where s.step = 'schema owner'),
  'pgshield_t_owner:true',
  'the owner of schema pgshield (the migration role) is trusted without superuser');

select * from finish();
rollback;

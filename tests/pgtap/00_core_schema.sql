-- pgshield core: schema privileges, version, the clock and caller detection.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(21);

-- ----------------------------------------------------------- privileges ----
select has_schema('pgshield', 'the private schema pgshield exists');
select ok(not has_schema_privilege('anon', 'pgshield', 'usage'), 'anon has no usage on pgshield');
select ok(has_schema_privilege('authenticated', 'pgshield', 'usage'), 'authenticated may use pgshield');
select ok(has_schema_privilege('service_role', 'pgshield', 'usage'), 'service_role may use pgshield');
select ok(
  not exists (
    select 1 from pg_proc p
     where p.pronamespace = 'pgshield'::regnamespace
       and has_function_privilege('public', p.oid, 'execute')
  ),
  'no pgshield function is executable by PUBLIC'
);
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

set local role authenticated;
select lives_ok('select pgshield.version()', 'authenticated may read the version');
select throws_ok('select pgshield.set_clock(now())', '42501', null, 'authenticated cannot move the clock');
reset role;

set local role anon;
select throws_ok('select pgshield.version()', '42501', null, 'anon cannot reach pgshield at all');
reset role;

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
create function public.t_whoami() returns text
language sql security definer set search_path = pg_catalog, pg_temp
as $$ select pgshield.caller_role() || ':' || pgshield.caller_is_trusted() $$;
grant execute on function public.t_whoami() to authenticated, service_role;

select is(public.t_whoami(), 'postgres:true', 'the owner is a trusted caller');
set local role authenticated;
select is(public.t_whoami(), 'authenticated:false', 'inside a definer function, authenticated is seen and not trusted');
reset role;
set local role service_role;
select is(public.t_whoami(), 'service_role:true', 'inside a definer function, service_role is seen and trusted');
select throws_ok('select pgshield.caller_role()', '42501', null, 'API roles cannot call the caller helpers directly');
reset role;

create role pgshield_t_owner nologin nosuperuser nobypassrls;
grant usage on schema pgshield to pgshield_t_owner;
grant execute on function public.t_whoami() to pgshield_t_owner;
set local role pgshield_t_owner;
select is(public.t_whoami(), 'pgshield_t_owner:false', 'an ordinary role is not trusted');
reset role;
alter schema pgshield owner to pgshield_t_owner;
set local role pgshield_t_owner;
select is(public.t_whoami(), 'pgshield_t_owner:true',
  'the owner of schema pgshield (the migration role) is trusted without superuser');
reset role;

select * from finish();
rollback;

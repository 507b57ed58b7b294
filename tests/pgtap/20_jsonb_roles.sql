-- pgshield jsonb: who may merge what. merge_jsonb runs with the caller's
-- rights, so table grants and row-level security decide; anon may not call it.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(25);

-- An RLS-protected example table, created and dropped with this transaction:
-- each user may merge only their own row, and never a "forbidden" key.
create table public.jsonb_r_answers (
  id uuid primary key,
  owner_id uuid not null,
  doc jsonb not null default '{}'
);
alter table public.jsonb_r_answers enable row level security;
create policy jsonb_r_own on public.jsonb_r_answers for all to authenticated
  using (owner_id = auth.uid())
  with check (owner_id = auth.uid() and not doc ? 'forbidden');
insert into public.jsonb_r_answers (id, owner_id) values
  ('a0000000-0000-4000-8000-00000000000a', '5a0e0a52-0000-4000-8000-000000000011'),
  ('b0000000-0000-4000-8000-00000000000b', '5a0e0a52-0000-4000-8000-000000000022');
create table public.jsonb_r_readonly (id int primary key, doc jsonb not null default '{}');
insert into public.jsonb_r_readonly (id) values (1);
revoke update on public.jsonb_r_readonly from authenticated;
select pgshield.register_jsonb_target('public.jsonb_r_answers', 'doc');
select pgshield.register_jsonb_target('public.jsonb_r_readonly', 'doc');

-- ---------------------------------------------------------- authenticated ----
set local role authenticated;
select set_config('request.jwt.claims',
                  '{"sub":"5a0e0a52-0000-4000-8000-000000000011","role":"authenticated"}', true);
select is(merge_jsonb('jsonb_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"q1":"mine"}'),
          '{"q1":"mine"}'::jsonb, 'authenticated merges into its own row');
select is(merge_jsonb('jsonb_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"q2":"x"}', '{more}'),
          '{"q1":"mine","more":{"q2":"x"}}'::jsonb, 'authenticated merges at a path in its own row');
select throws_ok(
  $$select merge_jsonb('jsonb_r_answers', 'b0000000-0000-4000-8000-00000000000b', '{"q1":"theirs"}')$$,
  'PT404', null, 'another user''s row is hidden by RLS: PT404, as if it did not exist');
select throws_ok(
  $$select merge_jsonb('jsonb_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"forbidden":1}')$$,
  '42501', null, 'a merge that breaks the policy''s WITH CHECK is refused (42501)');
select throws_ok(
  $$select merge_jsonb('jsonb_r_readonly', '1', '{"x":1}')$$,
  '42501', null, 'a table without UPDATE for authenticated cannot be merged (42501)');
select throws_ok(
  $$select pgshield.jsonb_target_check('public.jsonb_r_readonly', 'doc', 'id')$$,
  '42501', null, 'authenticated cannot call the internal target check (42501)');
select set_config('request.jwt.claims', '{"role":"authenticated"}', true);
select throws_ok(
  $$select merge_jsonb('jsonb_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"q1":"anon?"}')$$,
  'PT404', null, 'authenticated without a user id sees no row (PT404)');
reset role;

select is((select doc from public.jsonb_r_answers where id = 'b0000000-0000-4000-8000-00000000000b'),
          '{}'::jsonb, 'the other user''s row was not changed');
select is((select doc from public.jsonb_r_answers where id = 'a0000000-0000-4000-8000-00000000000a'),
          '{"q1":"mine","more":{"q2":"x"}}'::jsonb, 'the refused merges wrote nothing');
select is((select doc from public.jsonb_r_readonly where id = 1), '{}'::jsonb,
          'the read-only table was not changed');

-- ------------------------------------------------------------------- anon ----
set local role anon;
select set_config('request.jwt.claims', '{"role":"anon"}', true);
select throws_ok(
  $$select merge_jsonb('jsonb_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"x":1}')$$,
  '42501', null, 'anon cannot call merge_jsonb (42501)');
select throws_ok(
  $$select merge_jsonb_if('jsonb_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"x":1}',
                          '00000000000000000000000000000000')$$,
  '42501', null, 'anon cannot call merge_jsonb_if (42501)');
reset role;

-- ----------------------------------------------------------- service_role ----
set local role service_role;
select set_config('request.jwt.claims', '{"role":"service_role"}', true);
select is(merge_jsonb('jsonb_r_answers', 'b0000000-0000-4000-8000-00000000000b', '{"by":"server"}'),
          '{"by":"server"}'::jsonb, 'service_role bypasses RLS and merges any row');
select is(merge_jsonb('jsonb_r_readonly', '1', '{"x":1}'), '{"x":1}'::jsonb,
          'service_role merges where authenticated may not');
reset role;

-- ------------------------------------------------------------------ grants ----
select ok(not has_function_privilege('anon', 'public.merge_jsonb(text,text,jsonb,text[])', 'execute'),
          'anon has no EXECUTE on merge_jsonb');
select ok(has_function_privilege('authenticated', 'public.merge_jsonb(text,text,jsonb,text[])', 'execute')
          and has_function_privilege('service_role', 'public.merge_jsonb(text,text,jsonb,text[])', 'execute'),
          'authenticated and service_role have EXECUTE on merge_jsonb');
select ok(not has_function_privilege('anon', 'public.merge_jsonb_if(text,text,jsonb,text,text[])', 'execute')
          and has_function_privilege('authenticated', 'public.merge_jsonb_if(text,text,jsonb,text,text[])', 'execute')
          and has_function_privilege('service_role', 'public.merge_jsonb_if(text,text,jsonb,text,text[])', 'execute'),
          'merge_jsonb_if: authenticated and service_role, not anon');
select ok(not has_function_privilege('authenticated', 'pgshield.register_jsonb_target(regclass,name,name)', 'execute')
          and not has_function_privilege('authenticated', 'pgshield.unregister_jsonb_target(regclass)', 'execute')
          and not has_function_privilege('authenticated', 'pgshield.list_jsonb_targets()', 'execute'),
          'authenticated cannot manage the registry');
select ok(has_function_privilege('service_role', 'pgshield.register_jsonb_target(regclass,name,name)', 'execute')
          and has_function_privilege('service_role', 'pgshield.unregister_jsonb_target(regclass)', 'execute')
          and has_function_privilege('service_role', 'pgshield.list_jsonb_targets()', 'execute'),
          'service_role manages the registry');
select is((select count(*)::int
             from pg_catalog.pg_proc p
             cross join lateral aclexplode(p.proacl) a
            where a.grantee = 0
              and (p.oid::regproc::text like 'pgshield.jsonb%'
                   or p.proname in ('merge_jsonb', 'merge_jsonb_if', 'register_jsonb_target',
                                    'unregister_jsonb_target', 'list_jsonb_targets'))),
          0, 'no jsonb function is executable by PUBLIC');
select is((select count(*)::int from pg_catalog.pg_proc p
            where (p.oid::regproc::text like 'pgshield.jsonb%'
                   or p.proname in ('merge_jsonb', 'merge_jsonb_if', 'register_jsonb_target',
                                    'unregister_jsonb_target', 'list_jsonb_targets'))
              and not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false)),
          0, 'every jsonb function pins its search_path');
select ok(not has_function_privilege('authenticated', 'pgshield.jsonb_target_check(regclass,name,name)', 'execute')
          and not has_function_privilege('service_role', 'pgshield.jsonb_target_check(regclass,name,name)', 'execute'),
          'the internal target check is granted to no API role');
select ok(has_table_privilege('authenticated', 'pgshield.jsonb_target', 'select')
          and has_table_privilege('service_role', 'pgshield.jsonb_target', 'select')
          and not has_table_privilege('anon', 'pgshield.jsonb_target', 'select'),
          'authenticated and service_role read the registry table (merge_jsonb runs as them), anon not');
select ok(not has_table_privilege('authenticated', 'pgshield.jsonb_target', 'insert, update, delete, truncate')
          and not has_table_privilege('service_role', 'pgshield.jsonb_target', 'insert, update, delete, truncate'),
          'no API role writes the registry table directly');
select ok((select c.relrowsecurity from pg_catalog.pg_class c
            where c.oid = 'pgshield.jsonb_target'::regclass),
          'the registry table has row-level security enabled');

select * from finish();
rollback;

-- pgshield jsonb: who may merge what. merge_jsonb runs with the caller's
-- rights, so table grants and row-level security decide; anon may not call it.
begin;
\ir _helpers.psql
select plan(20);

-- An RLS-protected example table, created and dropped with this transaction:
-- each user may merge only their own row, and never a "forbidden" key.
create table public.pgshield_t_r_answers (
  id uuid primary key,
  owner_id uuid not null,
  doc jsonb not null default '{}'
);
alter table public.pgshield_t_r_answers enable row level security;
create policy jsonb_r_own on public.pgshield_t_r_answers for all to authenticated
  using (owner_id = auth.uid())
  with check (owner_id = auth.uid() and not doc ? 'forbidden');
insert into public.pgshield_t_r_answers (id, owner_id) values
  ('a0000000-0000-4000-8000-00000000000a', pg_temp.create_test_user('alice')),
  ('b0000000-0000-4000-8000-00000000000b', pg_temp.create_test_user('bob'));
create table public.pgshield_t_r_readonly (id int primary key, doc jsonb not null default '{}');
insert into public.pgshield_t_r_readonly (id) values (1);
revoke update on public.pgshield_t_r_readonly from authenticated;
select pgshield.register_jsonb_target('public.pgshield_t_r_answers', 'doc');
select pgshield.register_jsonb_target('public.pgshield_t_r_readonly', 'doc');

-- ---------------------------------------------------------- authenticated ----
select pg_temp.act_as('authenticated', pg_temp.test_user('alice'));
select is(merge_jsonb('pgshield_t_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"q1":"mine"}'),
          '{"q1":"mine"}'::jsonb, 'authenticated merges into its own row');
select is(merge_jsonb('pgshield_t_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"q2":"x"}', '{more}'),
          '{"q1":"mine","more":{"q2":"x"}}'::jsonb, 'authenticated merges at a path in its own row');
select throws_ok(
  $$select merge_jsonb('pgshield_t_r_answers', 'b0000000-0000-4000-8000-00000000000b', '{"q1":"theirs"}')$$,
  'PT404', null, 'another user''s row is hidden by RLS: PT404, as if it did not exist');
select throws_ok(
  $$select merge_jsonb('pgshield_t_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"forbidden":1}')$$,
  '42501', null, 'a merge that breaks the policy''s WITH CHECK is refused (42501)');
select throws_ok(
  $$select merge_jsonb('pgshield_t_r_readonly', '1', '{"x":1}')$$,
  '42501', null, 'a table without UPDATE for authenticated cannot be merged (42501)');
select throws_ok(
  $$select pgshield.jsonb_target_check('public.pgshield_t_r_readonly', 'doc', 'id')$$,
  '42501', null, 'authenticated cannot call the internal target check (42501)');
select pg_temp.act_as('authenticated');
select throws_ok(
  $$select merge_jsonb('pgshield_t_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"q1":"anon?"}')$$,
  'PT404', null, 'authenticated without a user id sees no row (PT404)');
select pg_temp.act_as_owner();

select is((select doc from public.pgshield_t_r_answers where id = 'b0000000-0000-4000-8000-00000000000b'),
          '{}'::jsonb, 'the other user''s row was not changed');
select is((select doc from public.pgshield_t_r_answers where id = 'a0000000-0000-4000-8000-00000000000a'),
          '{"q1":"mine","more":{"q2":"x"}}'::jsonb, 'the refused merges wrote nothing');
select is((select doc from public.pgshield_t_r_readonly where id = 1), '{}'::jsonb,
          'the read-only table was not changed');

-- ------------------------------------------------------------------- anon ----
select pg_temp.act_as('anon');
select throws_ok(
  $$select merge_jsonb('pgshield_t_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"x":1}')$$,
  '42501', null, 'anon cannot call merge_jsonb (42501)');
select throws_ok(
  $$select merge_jsonb_if('pgshield_t_r_answers', 'a0000000-0000-4000-8000-00000000000a', '{"x":1}',
                          '00000000000000000000000000000000')$$,
  '42501', null, 'anon cannot call merge_jsonb_if (42501)');

-- ----------------------------------------------------------- service_role ----
select pg_temp.act_as('service_role');
select is(merge_jsonb('pgshield_t_r_answers', 'b0000000-0000-4000-8000-00000000000b', '{"by":"server"}'),
          '{"by":"server"}'::jsonb, 'service_role bypasses RLS and merges any row');
select is(merge_jsonb('pgshield_t_r_readonly', '1', '{"x":1}'), '{"x":1}'::jsonb,
          'service_role merges where authenticated may not');
select pg_temp.act_as_owner();

-- ------------------------------------------------------------------ grants ----
-- What anon and authenticated may execute, PUBLIC and search_path: 05_pack_exposure.sql.
select ok(has_function_privilege('service_role', 'public.merge_jsonb(text,text,jsonb,text[])', 'execute')
          and has_function_privilege('service_role', 'public.merge_jsonb_if(text,text,jsonb,text,text[])', 'execute'),
          'service_role has EXECUTE on merge_jsonb and merge_jsonb_if');
select ok(has_function_privilege('service_role', 'pgshield.register_jsonb_target(regclass,name,name)', 'execute')
          and has_function_privilege('service_role', 'pgshield.unregister_jsonb_target(regclass)', 'execute')
          and has_function_privilege('service_role', 'pgshield.list_jsonb_targets()', 'execute'),
          'service_role manages the registry');
select ok(not has_function_privilege('service_role', 'pgshield.jsonb_target_check(regclass,name,name)', 'execute'),
          'the internal target check is not granted to service_role');
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

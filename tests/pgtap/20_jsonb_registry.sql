-- pgshield jsonb: registering merge targets (register, unregister, list) and
-- who may do it.
begin;
\ir _helpers.psql
select plan(26);

-- Helper tables, created and dropped with this transaction.
create table public.pgshield_t_reg_docs (
  id bigint primary key,
  doc jsonb not null default '{}',
  other jsonb,
  note text,
  plain_json json,
  slug text unique,
  dup text
);
create view public.pgshield_t_reg_view as select id, doc from public.pgshield_t_reg_docs;
create table public.pgshield_t_reg_partial (id bigint not null, doc jsonb);
create unique index pgshield_t_reg_partial_id on public.pgshield_t_reg_partial (id) where id > 0;

-- --------------------------------------------------------------- register ----
select is(pgshield.register_jsonb_target('public.pgshield_t_reg_docs', 'doc'), true,
          'registering a new target returns true');
select is(pgshield.register_jsonb_target('pgshield_t_reg_docs', 'doc', 'id'), false,
          'registering the same target again returns false and changes nothing');
select is((select count(*)::int from pgshield.jsonb_target t
            where t.relation = 'public.pgshield_t_reg_docs'::regclass), 1,
          'the registry holds one row for the table');
select is((select concat_ws(' ', column_name, key_column, coalesce(problem, 'ok'))
             from pgshield.list_jsonb_targets() where table_name = 'public.pgshield_t_reg_docs'),
          'doc id ok',
          'list_jsonb_targets shows the target, its key and no problem');
select throws_ok(
  $$select pgshield.register_jsonb_target('public.pgshield_t_reg_docs', 'other')$$,
  '23505', null, 'registering another column of a registered table is a conflict (23505)');
select is(pgshield.register_jsonb_target('public.pgshield_t_reg_docs', 'doc', 'id'), false,
          'the original registration is still in place after the conflict');

-- ------------------------------------------------------------- validation ----
select throws_ok(
  $$select pgshield.register_jsonb_target('public.pgshield_t_reg_partial', 'nope')$$,
  '22023', null, 'a missing column is refused (22023)');
select throws_ok(
  $$select pgshield.register_jsonb_target('public.pgshield_t_reg_docs', 'plain_json')$$,
  '22023', null, 'a json (not jsonb) column is refused (22023)');
select throws_ok(
  $$select pgshield.register_jsonb_target('public.pgshield_t_reg_docs', 'note')$$,
  '22023', null, 'a text column is refused (22023)');
select throws_ok(
  $$select pgshield.register_jsonb_target('public.pgshield_t_reg_partial', 'doc', 'missing_key')$$,
  '22023', null, 'a missing key column is refused (22023)');
select throws_ok(
  $$select pgshield.register_jsonb_target('public.pgshield_t_reg_partial', 'doc', 'id')$$,
  '22023', null, 'a key with only a partial unique index is refused (22023)');
select throws_ok(
  $$select pgshield.register_jsonb_target('public.pgshield_t_reg_view', 'doc', 'id')$$,
  '22023', null, 'a view is refused (22023)');
select throws_ok(
  $$select pgshield.register_jsonb_target(null, 'doc', 'id')$$,
  '22023', null, 'a null table is refused (22023)');

-- ------------------------------------------------------------ list & drift ----
alter table public.pgshield_t_reg_docs rename to pgshield_t_reg_renamed;
select is((select count(*)::int from pgshield.list_jsonb_targets()
            where table_name = 'public.pgshield_t_reg_renamed' and problem is null), 1,
          'a renamed table stays registered (it is stored by oid)');
alter table public.pgshield_t_reg_renamed rename column doc to doc2;
select isnt((select problem from pgshield.list_jsonb_targets()
              where table_name = 'public.pgshield_t_reg_renamed'), null,
            'list_jsonb_targets reports a registered column that no longer exists');
alter table public.pgshield_t_reg_renamed rename column doc2 to doc;
alter table public.pgshield_t_reg_renamed rename to pgshield_t_reg_docs;

-- ------------------------------------------------------------- unregister ----
select is(pgshield.unregister_jsonb_target('public.pgshield_t_reg_docs'), true,
          'unregistering a registered table returns true');
select is(pgshield.unregister_jsonb_target('public.pgshield_t_reg_docs'), false,
          'unregistering it again returns false');
select throws_ok(
  $$select public.merge_jsonb('pgshield_t_reg_docs', '1', '{"a":1}')$$,
  '22023', null, 'an unregistered table cannot be merged (22023)');

-- ------------------------------------------------------------------ roles ----
select pg_temp.act_as('service_role');
select is(pgshield.register_jsonb_target('public.pgshield_t_reg_docs', 'doc'), true,
          'service_role can register a target');
select is((select count(*)::int from pgshield.list_jsonb_targets()
            where table_name = 'public.pgshield_t_reg_docs'), 1,
          'service_role can list the targets');
select pg_temp.act_as_owner();

select pg_temp.act_as('authenticated', pg_temp.create_test_user('alice'));
select throws_ok(
  $$select pgshield.register_jsonb_target('public.pgshield_t_reg_docs', 'other')$$,
  '42501', null, 'authenticated cannot register (42501)');
select throws_ok(
  $$select pgshield.unregister_jsonb_target('public.pgshield_t_reg_docs')$$,
  '42501', null, 'authenticated cannot unregister (42501)');
select is((select count(*)::int from pgshield.jsonb_target t
            where t.relation = 'public.pgshield_t_reg_docs'::regclass), 1,
          'authenticated reads the registry table (merge_jsonb reads it as the caller)');
select throws_ok(
  $$delete from pgshield.jsonb_target$$,
  '42501', null, 'authenticated cannot write the registry table (42501)');

select pg_temp.act_as('service_role');
select throws_ok(
  $$insert into pgshield.jsonb_target (relation, column_name, key_column, key_type,
                                       key_operator_schema, key_operator)
    values ('public.pgshield_t_reg_partial', 'doc', 'id', 'bigint', 'pg_catalog', '=')$$,
  '42501', null, 'service_role writes the registry only through register/unregister (42501)');

select pg_temp.act_as('anon');
select throws_ok(
  $$select * from pgshield.list_jsonb_targets()$$,
  '42501', null, 'anon cannot list the targets (42501)');
select pg_temp.act_as_owner();

select * from finish();
rollback;

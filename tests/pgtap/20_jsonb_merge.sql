-- pgshield jsonb: public.merge_jsonb, the atomic merge RPC (as the owner; roles
-- and row-level security are in 20_jsonb_roles.sql): root and path merges, key
-- types, name resolution, and SQL in names and values staying inert.
begin;
\ir _helpers.psql
select plan(35);

-- Helper tables, created and dropped with this transaction.
create table public.pgshield_t_m_docs (id bigint primary key, doc jsonb);
insert into public.pgshield_t_m_docs (id, doc) values
  (1, '{"title":"t","tags":["a"],"answers":{"q0":{"v":0}}}'),
  (2, null),
  (3, '{"s":"string"}');
create table public.pgshield_t_m_uuid (id uuid primary key, doc jsonb not null default '{}');
insert into public.pgshield_t_m_uuid (id) values ('0b6a4a4e-0000-4000-8000-000000000001');
create table public.pgshield_t_m_code (code varchar(20) primary key, doc jsonb not null default '{}');
insert into public.pgshield_t_m_code (code) values ('abc'), ($$' or 1=1 --$$);
create table public."pgshield_t_ Weird; drop" (
  "my id" text unique, "doc""; drop table x; --" jsonb not null default '{}'
);
insert into public."pgshield_t_ Weird; drop" ("my id") values ('w');
create type public.pgshield_t_m_color as enum ('red', 'green');
create table public.pgshield_t_m_enum (k public.pgshield_t_m_color primary key, doc jsonb not null default '{}');
insert into public.pgshield_t_m_enum (k) values ('red'), ('green');
create domain public.pgshield_t_m_slug as text check (value ~ '^[a-z]+$');
create table public.pgshield_t_m_domain (k public.pgshield_t_m_slug primary key, doc jsonb not null default '{}');
insert into public.pgshield_t_m_domain (k) values ('abc');
create schema pgshield_t_m_other;
create table pgshield_t_m_other.pgshield_t_m_elsewhere (id int primary key, doc jsonb not null default '{}');
insert into pgshield_t_m_other.pgshield_t_m_elsewhere (id) values (7);

select pgshield.register_jsonb_target('public.pgshield_t_m_docs', 'doc');
select pgshield.register_jsonb_target('public.pgshield_t_m_uuid', 'doc');
select pgshield.register_jsonb_target('public.pgshield_t_m_code', 'doc', 'code');
select pgshield.register_jsonb_target('public."pgshield_t_ Weird; drop"', 'doc"; drop table x; --', 'my id');
select pgshield.register_jsonb_target('pgshield_t_m_other.pgshield_t_m_elsewhere', 'doc');
select pgshield.register_jsonb_target('public.pgshield_t_m_enum', 'doc', 'k');
select pgshield.register_jsonb_target('public.pgshield_t_m_domain', 'doc', 'k');

-- ------------------------------------------------------------ root merges ----
select is(merge_jsonb('pgshield_t_m_docs', '1', '{"title":"T","tags":["b"],"n":1}'),
          '{"title":"T","tags":["b"],"n":1,"answers":{"q0":{"v":0}}}'::jsonb,
          'merge_jsonb returns the whole merged document');
select is((select doc from public.pgshield_t_m_docs where id = 1),
          '{"title":"T","tags":["b"],"n":1,"answers":{"q0":{"v":0}}}'::jsonb,
          'the merged document is stored in the row');
select is(merge_jsonb('pgshield_t_m_docs', '1', '{"n":null,"answers":{"q0":{"v":null,"w":1}}}'),
          '{"title":"T","tags":["b"],"answers":{"q0":{"w":1}}}'::jsonb,
          'nulls delete keys at any depth, nested objects merge');
select is(merge_jsonb('pgshield_t_m_docs', '2', '{"a":{"b":null,"c":1}}'), '{"a":{"c":1}}'::jsonb,
          'a SQL NULL document merges as {}');
select is(merge_jsonb('pgshield_t_m_docs', '3', '[1,2]'), '[1,2]'::jsonb,
          'a non-object patch replaces the document (RFC 7396)');
select is((select doc from public.pgshield_t_m_docs where id = 2), '{"a":{"c":1}}'::jsonb,
          'only the row with the key was changed');

-- ------------------------------------------------------------ path merges ----
select is(merge_jsonb('pgshield_t_m_docs', '1', '{"answer":"yes"}', '{answers,q1}'),
          '{"title":"T","tags":["b"],"answers":{"q0":{"w":1},"q1":{"answer":"yes"}}}'::jsonb,
          'a merge at a path returns the whole document');
select is((select doc #> '{answers,q1}' from public.pgshield_t_m_docs where id = 1),
          '{"answer":"yes"}'::jsonb, 'the patch landed at the path');
select is(merge_jsonb('pgshield_t_m_docs', '1', '{"score":2}', '{answers,q1}') #> '{answers,q1}',
          '{"answer":"yes","score":2}'::jsonb, 'a second merge at the path merges, not replaces');
select is(merge_jsonb('pgshield_t_m_docs', '1', '{"x":1}', '{new,deep,er}') #> '{new}',
          '{"deep":{"er":{"x":1}}}'::jsonb, 'missing intermediate objects are created');
select is(merge_jsonb('pgshield_t_m_docs', '2', '"leaf"', '{a,c}') -> 'a',
          '{"c":"leaf"}'::jsonb, 'a scalar patch at a path replaces the value there');
select is(merge_jsonb('pgshield_t_m_docs', '2', 'null', '{a,c}') -> 'a',
          '{"c":null}'::jsonb, 'a JSON null patch at a path stores JSON null there');
select is(merge_jsonb('pgshield_t_m_docs', '2', '{"c":null}', '{a}') -> 'a',
          '{}'::jsonb, 'a key is deleted by patching its parent with {"key": null}');

-- -------------------------------------------------------------- key types ----
select is(merge_jsonb('pgshield_t_m_uuid', '0b6a4a4e-0000-4000-8000-000000000001', '{"u":1}'),
          '{"u":1}'::jsonb, 'a uuid key works');
select is(merge_jsonb('pgshield_t_m_code', 'abc', '{"c":1}'), '{"c":1}'::jsonb,
          'a varchar key works');
select is(merge_jsonb('pgshield_t_m_code', $$' or 1=1 --$$, '{"q":1}'), '{"q":1}'::jsonb,
          'a key value that looks like SQL matches only itself');
select is((select doc from public.pgshield_t_m_code where code = 'abc'), '{"c":1}'::jsonb,
          'the other row was not touched by the SQL-looking key');
select is(merge_jsonb('pgshield_t_m_enum', 'green', '{"e":1}'), '{"e":1}'::jsonb,
          'an enum key works (compared with the enum''s own equality)');
select is(merge_jsonb('pgshield_t_m_domain', 'abc', '{"d":1}'), '{"d":1}'::jsonb,
          'a key over a domain works');
select throws_ok(
  $$select merge_jsonb('pgshield_t_m_code', 'no such code', '{"c":1}')$$,
  'PT404', null, 'a key with no row is PT404');

-- --------------------------------------------------------- name resolution ----
select is(merge_jsonb('public.pgshield_t_m_uuid', '0b6a4a4e-0000-4000-8000-000000000001', '{"v":2}') -> 'v',
          '2'::jsonb, 'schema.table names work');
select is(merge_jsonb('"public"."pgshield_t_m_uuid"', '0b6a4a4e-0000-4000-8000-000000000001', '{"v":3}') -> 'v',
          '3'::jsonb, 'quoted names work');
select is(merge_jsonb('PUBLIC.PGSHIELD_T_M_UUID', '0b6a4a4e-0000-4000-8000-000000000001', '{"v":4}') -> 'v',
          '4'::jsonb, 'unquoted names fold to lower case like SQL identifiers');
select is(merge_jsonb('"pgshield_t_ Weird; drop"', 'w', '{"ok":true}'), '{"ok":true}'::jsonb,
          'a table, column and key whose names contain SQL are quoted, not executed');
select is(merge_jsonb('pgshield_t_m_other.pgshield_t_m_elsewhere', '7', '{"o":1}'), '{"o":1}'::jsonb,
          'a registered table in another schema works when qualified');
select throws_ok(
  $$select merge_jsonb('pgshield_t_m_elsewhere', '7', '{"o":1}')$$,
  '22023', null, 'a bare name means public.<name> (22023 here)');

-- --------------------------------------------------------- SQL stays inert ----
select throws_ok(
  $$select merge_jsonb('pgshield_t_m_docs; drop table public.pgshield_t_m_docs; --', '1', '{}')$$,
  '22023', null, 'a table name with SQL after it is just an unregistered name (22023)');
select throws_ok(
  $$select merge_jsonb('pgshield_t_m_docs" where true; --', '1', '{}')$$,
  '22023', null, 'a table name with a quote in it is just an unregistered name (22023)');
select throws_ok(
  $$select merge_jsonb('pg_catalog.pg_authid', '1', '{}')$$,
  '22023', null, 'a real but unregistered table is refused (22023)');
select has_table('public', 'pgshield_t_m_docs', 'the table is still there');
select is(merge_jsonb('pgshield_t_m_docs', '3', $${"k');drop table public.pgshield_t_m_docs;--":"v'; --"}$$),
          $${"k');drop table public.pgshield_t_m_docs;--":"v'; --"}$$::jsonb,
          'SQL in patch keys and values is stored as text');
select is(merge_jsonb('pgshield_t_m_docs', '3', '{"v":1}', array[$$x'); drop table public.pgshield_t_m_docs; --$$])
            -> $$x'); drop table public.pgshield_t_m_docs; --$$,
          '{"v":1}'::jsonb, 'SQL in a path element is just a key');
select has_table('public', 'pgshield_t_m_docs', 'the table is still there after all of that');

-- ------------------------------------------------------------- the functions ----
select ok((select not p.prosecdef from pg_catalog.pg_proc p
            where p.oid = 'public.merge_jsonb(text,text,jsonb,text[])'::regprocedure),
          'merge_jsonb runs with the caller''s rights (security invoker)');
select ok((select p.proconfig @> array['search_path=pg_catalog, pg_temp'] from pg_catalog.pg_proc p
            where p.oid = 'public.merge_jsonb(text,text,jsonb,text[])'::regprocedure),
          'merge_jsonb pins its search_path');

select * from finish();
rollback;

-- pgshield jsonb: the fast path. register/unregister_jsonb_target regenerate
-- pgshield.jsonb_merge_fast (one static update per target); merge_jsonb uses
-- it for p_table spelled as the catalog spells it, and the dynamic path
-- (jsonb_merge_dynamic) otherwise. Both must give the same results and errors.
begin;
\ir _helpers.psql
select plan(38);

-- Helper tables, created and dropped with this transaction. Rows 1.. are
-- merged through the fast path, rows 101.. (same documents) through the
-- dynamic path.
create table public.pgshield_t_f_docs (id int primary key, doc jsonb);
insert into public.pgshield_t_f_docs (id, doc)
select n + k, d
  from (values (0), (100)) as o(k),
       (values (1, '{"a":1,"o":{"x":1},"s":"str","n":null}'::jsonb),
               (2, null),
               (3, '[1,2]'),
               (4, '"scalar"'),
               (5, '{"a":1}')) as v(n, d);
create schema pgshield_t_f_other;
create table pgshield_t_f_other.pgshield_t_f_elsewhere (id int primary key, doc jsonb not null default '{}');
insert into pgshield_t_f_other.pgshield_t_f_elsewhere (id) values (1);

-- The fast path's body, for checks on its branches.
create function pg_temp.fast_src() returns text language sql as
  $$ select p.prosrc from pg_catalog.pg_proc p
      where p.oid = 'pgshield.jsonb_merge_fast(text,jsonb,text[],text,text)'::regprocedure $$;
-- A merge through the fast path (row n) and the same through the dynamic path
-- (row 100 + n, the table spelled with quotes, which the fast path does not
-- take): the pair of results, for is() against each other.
create function pg_temp.both(n int, patch jsonb, path text[]) returns jsonb[] language sql as
  $$ select array[pgshield.jsonb_merge_fast(n::text, patch, path, null, 'pgshield_t_f_docs'),
                  public.merge_jsonb('"public"."pgshield_t_f_docs"', (100 + n)::text, patch, path)] $$;

-- ------------------------------------------------------------- branches ----
select ok(pg_temp.fast_src() not like '%pgshield_t_f_docs%',
          'an unregistered table has no branch in the fast path');
select is(pgshield.jsonb_merge_fast('1', '{"b":2}', '{}', null, 'pgshield_t_f_docs'), null,
          'the fast path merges nothing into an unregistered table');
select pgshield.register_jsonb_target('public.pgshield_t_f_docs', 'doc');
select pgshield.register_jsonb_target('pgshield_t_f_other.pgshield_t_f_elsewhere', 'doc');
select ok(pg_temp.fast_src() like '%update only public.pgshield_t_f_docs as t%',
          'registering adds the table''s static update to the fast path');
select is(pgshield.jsonb_merge_fast('5', '{"b":2}', '{}', null, 'pgshield_t_f_docs'), '{"a":1,"b":2}'::jsonb,
          'the fast path takes the bare name of a table in public');
select is(pgshield.jsonb_merge_fast('5', '{"c":3}', '{}', null, 'public.pgshield_t_f_docs'),
          '{"a":1,"b":2,"c":3}'::jsonb, 'the fast path takes schema.table');
select is(pgshield.jsonb_merge_fast('5', '{"d":4}', '{}', null, 'PGSHIELD_T_F_DOCS'), null,
          'the fast path leaves other spellings to the dynamic path');
select is(merge_jsonb('PGSHIELD_T_F_DOCS', '5', '{"d":4}'), '{"a":1,"b":2,"c":3,"d":4}'::jsonb,
          'merge_jsonb merges other spellings through the dynamic path');
select is(pgshield.jsonb_merge_fast('1', '{"o":1}', '{}', null, 'pgshield_t_f_elsewhere'), null,
          'the bare name means public only');
select is(pgshield.jsonb_merge_fast('1', '{"o":1}', '{}', null, 'pgshield_t_f_other.pgshield_t_f_elsewhere'),
          '{"o":1}'::jsonb, 'a table outside public is taken as schema.table');

-- -------------------------------------------- fast and dynamic agree ----
select is(b[1], b[2], 'a flat patch at the root: ' || b[1]::text)
  from pg_temp.both(1, '{"a":2,"t":[1,null]}', '{}') b;
select is(b[1], b[2], 'a patch with a null and a nested object: ' || b[1]::text)
  from pg_temp.both(1, '{"a":null,"o":{"x":null,"y":2}}', '{}') b;
select is(b[1], b[2], 'a flat patch into a SQL NULL document: ' || b[1]::text)
  from pg_temp.both(2, '{"a":1}', '{}') b;
select is(b[1], b[2], 'a flat patch into an array document replaces it: ' || b[1]::text)
  from pg_temp.both(3, '{"a":1}', '{}') b;
select is(b[1], b[2], 'a non-object patch replaces the document: ' || b[1]::text)
  from pg_temp.both(3, '[3]', '{}') b;
select is(b[1], b[2], 'an empty patch changes nothing: ' || b[1]::text)
  from pg_temp.both(1, '{}', '{}') b;
select is(b[1], b[2], 'one key deep, into an object: ' || b[1]::text)
  from pg_temp.both(1, '{"y":3}', '{o}') b;
select is(b[1], b[2], 'one key deep, over a string: ' || b[1]::text)
  from pg_temp.both(1, '{"y":3}', '{s}') b;
select is(b[1], b[2], 'one key deep, over a JSON null: ' || b[1]::text)
  from pg_temp.both(1, '{"y":3}', '{n}') b;
select is(b[1], b[2], 'one key deep, a missing key: ' || b[1]::text)
  from pg_temp.both(1, '{"y":3}', '{new}') b;
select is(b[1], b[2], 'one key deep, a nested patch: ' || b[1]::text)
  from pg_temp.both(1, '{"x":{"z":1},"y":null}', '{o}') b;
select is(b[1], b[2], 'one key deep, a scalar patch: ' || b[1]::text)
  from pg_temp.both(1, '7', '{o}') b;
select is(b[1], b[2], 'one key deep into a SQL NULL document: ' || b[1]::text)
  from pg_temp.both(2, '{"y":1}', '{k}') b;
select is(b[1], b[2], 'two keys deep: ' || b[1]::text)
  from pg_temp.both(1, '{"w":1}', '{n,deep}') b;
select throws_ok($$select pgshield.jsonb_merge_fast('4', '{"y":1}', '{k}', null, 'pgshield_t_f_docs')$$,
                 '22023', null, 'fast path: a path into a scalar document is 22023');
select throws_ok($$select merge_jsonb('"pgshield_t_f_docs"', '104', '{"y":1}', '{k}')$$,
                 '22023', null, 'dynamic path: the same is 22023');
select is((select array_agg(doc order by id) from public.pgshield_t_f_docs where id in (4, 104)),
          array['"scalar"'::jsonb, '"scalar"'::jsonb], 'and neither wrote anything');
select is(pgshield.jsonb_merge_fast('5', '{"h":1}', '{}', md5('nope'), 'pgshield_t_f_docs'), null,
          'fast path: a stale hash matches no row');
select throws_ok($$select merge_jsonb_if('pgshield_t_f_docs', '5', '{"h":1}', md5('nope'))$$,
                 'PT409', null, 'merge_jsonb_if then reports the conflict (PT409)');
select throws_ok($$select merge_jsonb('pgshield_t_f_docs', '999', '{"h":1}')$$,
                 'PT404', null, 'no row: merge_jsonb reports PT404 after the fast path found none');

-- ---------------------------------------------------------------- drift ----
alter table public.pgshield_t_f_docs rename to pgshield_t_f_renamed;
select is(pgshield.jsonb_merge_fast('5', '{"r":1}', '{}', null, 'pgshield_t_f_renamed'), null,
          'a renamed table has no fast path');
select is(merge_jsonb('pgshield_t_f_renamed', '5', '{"r":1}') -> 'r', '1'::jsonb,
          'a renamed table is still merged (through the dynamic path)');
select is(pgshield.register_jsonb_target('public.pgshield_t_f_renamed', 'doc'), false,
          'registering it again ...');
select is(pgshield.jsonb_merge_fast('5', '{"r":2}', '{}', null, 'pgshield_t_f_renamed') -> 'r', '2'::jsonb,
          '... gives it back its fast path');

drop table pgshield_t_f_other.pgshield_t_f_elsewhere;
create table pgshield_t_f_other.pgshield_t_f_elsewhere (id int primary key, doc jsonb not null default '{}');
insert into pgshield_t_f_other.pgshield_t_f_elsewhere (id) values (1);
select is(pgshield.jsonb_merge_fast('1', '{"o":2}', '{}', null, 'pgshield_t_f_other.pgshield_t_f_elsewhere'), null,
          'a table dropped and created again under the same name is not in the fast path');
select throws_ok($$select merge_jsonb('pgshield_t_f_other.pgshield_t_f_elsewhere', '1', '{"o":2}')$$,
                 '22023', null, '... nor registered (22023)');

select is(pgshield.unregister_jsonb_target('public.pgshield_t_f_renamed'), true, 'unregistering ...');
select ok(pg_temp.fast_src() not like '%pgshield_t_f_renamed%', '... removes its branch');
select throws_ok($$select merge_jsonb('pgshield_t_f_renamed', '5', '{"u":1}')$$,
                 '22023', null, '... and merges are refused (22023)');

select * from finish();
rollback;

-- pgshield jsonb: bad input to merge_jsonb is refused with a code that names
-- the problem, and nothing is written.
begin;
\ir _helpers.psql
select plan(19);

create table public.pgshield_t_b_docs (id bigint primary key, doc jsonb);
insert into public.pgshield_t_b_docs (id, doc) values
  (1, '{"s":"string","a":[1],"o":{"n":null}}'),
  (2, '[1,2]');
select pgshield.register_jsonb_target('public.pgshield_t_b_docs', 'doc');

-- ---------------------------------------------------------------- patches ----
select throws_ok(
  format($$select merge_jsonb('pgshield_t_b_docs', '1', %L)$$,
         repeat('{"k":', 33) || '1' || repeat('}', 33)),
  '22023', 'p_patch nests objects deeper than 32 levels',
  'a patch nesting 33 objects is refused (22023)');
select lives_ok(
  format($$select merge_jsonb('pgshield_t_b_docs', '1', %L, '{deep}')$$,
         repeat('{"k":', 32) || '1' || repeat('}', 32)),
  'a patch nesting 32 objects is accepted, at a path too');
select throws_ok($$select merge_jsonb('pgshield_t_b_docs', '1', null)$$,
                 '22023', 'p_patch must not be null', 'a SQL NULL patch is refused (22023)');

-- ------------------------------------------------------------------- paths ----
select throws_ok($$select merge_jsonb('pgshield_t_b_docs', '1', '{"x":1}', '{s,inner}')$$,
                 '22023', null, 'a path through a string is refused (22023)');
select throws_ok($$select merge_jsonb('pgshield_t_b_docs', '1', '{"x":1}', '{a,0}')$$,
                 '22023', null, 'a path through an array is refused (22023)');
select throws_ok($$select merge_jsonb('pgshield_t_b_docs', '1', '{"x":1}', '{o,n,deeper}')$$,
                 '22023', null, 'a path through a JSON null is refused (22023)');
select throws_ok($$select merge_jsonb('pgshield_t_b_docs', '2', '{"x":1}', '{a}')$$,
                 '22023', null, 'a path into a document that is not an object is refused (22023)');
select throws_ok($$select merge_jsonb('pgshield_t_b_docs', '1', '{"x":1}', null)$$,
                 '22023', 'p_path must not be null', 'a SQL NULL path is refused (22023)');
select throws_ok($$select merge_jsonb('pgshield_t_b_docs', '1', '{"x":1}', array['a', null])$$,
                 '22023', 'p_path element 2 is null', 'a path with a null element is refused (22023)');
select throws_ok(
  $$select merge_jsonb('pgshield_t_b_docs', '1', '{"x":1}', array(select 'k' || g from generate_series(1, 33) g))$$,
  '22023', null, 'a path of 33 keys is refused (22023)');
select throws_ok($$select merge_jsonb('pgshield_t_b_docs', '1', '{"x":1}', '{{a,b},{c,d}}')$$,
                 '22023', null, 'a two-dimensional path is refused (22023)');
select is((select doc from public.pgshield_t_b_docs where id = 1),
          ('{"s":"string","a":[1],"o":{"n":null},"deep":' || repeat('{"k":', 32) || '1' || repeat('}', 32) || '}')::jsonb,
          'no refused merge wrote anything');
select is((select doc from public.pgshield_t_b_docs where id = 2), '[1,2]'::jsonb,
          'the non-object document is unchanged');

-- ---------------------------------------------------------- tables and ids ----
select throws_ok($$select merge_jsonb(null, '1', '{}')$$,
                 '22023', null, 'a SQL NULL table is refused (22023)');
select throws_ok($$select merge_jsonb('', '1', '{}')$$,
                 '22023', null, 'an empty table name is refused (22023)');
select throws_ok($$select merge_jsonb('pgshield_t_no_such_table', '1', '{}')$$,
                 '22023', $$p_table 'pgshield_t_no_such_table' is not a registered jsonb target$$,
                 'an unknown table is refused with a message naming it (22023)');
select throws_ok($$select merge_jsonb('pgshield_t_b_docs', null, '{}')$$,
                 '22023', 'p_id must not be null', 'a SQL NULL id is refused (22023)');
select throws_ok($$select merge_jsonb('pgshield_t_b_docs', 'one', '{}')$$,
                 '22P02', null, 'an id that does not fit the key type is 22P02');
select throws_ok($$select merge_jsonb('pgshield_t_b_docs', '99', '{}')$$,
                 'PT404', null, 'an id with no row is PT404');

select * from finish();
rollback;

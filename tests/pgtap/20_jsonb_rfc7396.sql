-- pgshield jsonb: RFC 7396 JSON Merge Patch in pgshield.jsonb_merge_patch.
-- The 15 examples of RFC 7396 Appendix A and the section 3 example, table
-- driven (tests/test_jsonb_vectors.py checks this list against the shared
-- vector file), then the SQL NULL rules, the depth limit and who may call it.
begin;
\ir _helpers.psql
select plan(39);

-- ------------------------------------------------------------ RFC vectors ----
select is(
         pgshield.jsonb_merge_patch(v.target::jsonb, v.patch::jsonb),
         v.result::jsonb,
         format('RFC 7396 vector %s: %s merged with %s', v.n, v.target, v.patch))
  from (values
  -- rfc7396 vectors: begin (n, target, patch, result)
  (1, '{"a":"b"}', '{"a":"c"}', '{"a":"c"}'),
  (2, '{"a":"b"}', '{"b":"c"}', '{"a":"b","b":"c"}'),
  (3, '{"a":"b"}', '{"a":null}', '{}'),
  (4, '{"a":"b","b":"c"}', '{"a":null}', '{"b":"c"}'),
  (5, '{"a":["b"]}', '{"a":"c"}', '{"a":"c"}'),
  (6, '{"a":"c"}', '{"a":["b"]}', '{"a":["b"]}'),
  (7, '{"a":{"b":"c"}}', '{"a":{"b":"d","c":null}}', '{"a":{"b":"d"}}'),
  (8, '{"a":[{"b":"c"}]}', '{"a":[1]}', '{"a":[1]}'),
  (9, '["a","b"]', '["c","d"]', '["c","d"]'),
  (10, '{"a":"b"}', '["c"]', '["c"]'),
  (11, '{"a":"foo"}', 'null', 'null'),
  (12, '{"a":"foo"}', '"bar"', '"bar"'),
  (13, '{"e":null}', '{"a":1}', '{"e":null,"a":1}'),
  (14, '[1,2]', '{"a":"b","c":null}', '{"a":"b"}'),
  (15, '{}', '{"a":{"bb":{"ccc":null}}}', '{"a":{"bb":{}}}'),
  (16, '{"title":"Goodbye!","author":{"givenName":"John","familyName":"Doe"},"tags":["example","sample"],"content":"This will be unchanged"}', '{"title":"Hello!","phoneNumber":"+01-123-456-7890","author":{"familyName":null},"tags":["example"]}', '{"title":"Hello!","author":{"givenName":"John"},"tags":["example"],"content":"This will be unchanged","phoneNumber":"+01-123-456-7890"}')
  -- rfc7396 vectors: end
  ) as v(n, target, patch, result)
 order by v.n;

-- ------------------------------------------------------------- SQL NULLs ----
select is(pgshield.jsonb_merge_patch(null, '{"a":1,"b":null}'), '{"a":1}'::jsonb,
          'a SQL NULL target counts as {} (and the patch''s nulls are dropped)');
select is(pgshield.jsonb_merge_patch(null, '"x"'), '"x"'::jsonb,
          'a SQL NULL target is replaced by a non-object patch');
select is(pgshield.jsonb_merge_patch('{"a":1}', null), '{"a":1}'::jsonb,
          'a SQL NULL patch leaves the target unchanged');
select ok(pgshield.jsonb_merge_patch(null, null) is null,
          'a SQL NULL patch on a SQL NULL target stays SQL NULL');

-- ---------------------------------------------------------------- details ----
select is(pgshield.jsonb_merge_patch('{"a":[1,2]}', '{"a":[3]}'), '{"a":[3]}'::jsonb,
          'arrays are replaced, never concatenated');
select is(pgshield.jsonb_merge_patch('{}', '{"a":[{"b":null}],"c":[null]}'),
          '{"a":[{"b":null}],"c":[null]}'::jsonb,
          'nulls inside arrays are values: kept as they are');
select is(pgshield.jsonb_merge_patch(
            '{"a":{"x":1},"b":{"y":1},"c":1,"keep":true}',
            '{"a":{"x":null,"z":2},"b":{"y":2},"c":null,"d":{"e":null},"f":0}'),
          '{"a":{"z":2},"b":{"y":2},"d":{},"f":0,"keep":true}'::jsonb,
          'several nested objects, deletes and plain values in one patch');
select is(pgshield.jsonb_merge_patch(
            (select jsonb_object_agg('k' || g, jsonb_build_object('a', g)) from generate_series(1, 40) g),
            (select jsonb_object_agg('k' || g, jsonb_build_object('a', null, 'b', g))
               from generate_series(1, 30) g)),
          (select jsonb_object_agg('k' || g, case when g <= 30 then jsonb_build_object('b', g)
                                                  else jsonb_build_object('a', g) end)
             from generate_series(1, 40) g),
          'a patch with many (30) nested objects merges each of them');
select is(pgshield.jsonb_merge_patch('{"ключ":1,"😀":{"ü":1}}', '{"😀":{"ü":null,"é":2}}'),
          '{"ключ":1,"😀":{"é":2}}'::jsonb,
          'unicode keys merge like any other key');
select is(pgshield.jsonb_merge_patch('"x"', '{}'), '{}'::jsonb,
          'an empty object patch on a non-object target gives {}');
select is(pgshield.jsonb_merge_patch('{"a":{"b":1}}', '{"a":{}}'), '{"a":{"b":1}}'::jsonb,
          'an empty nested object changes nothing');
select is(pgshield.jsonb_merge_patch('{"a":1}', '{"":2,"a b":3}'), '{"a":1,"":2,"a b":3}'::jsonb,
          'empty and spaced keys are ordinary keys');

-- ------------------------------------------------------------ depth limit ----
select is(pgshield.jsonb_merge_patch('{}', (repeat('{"k":', 32) || '1' || repeat('}', 32))::jsonb),
          (repeat('{"k":', 32) || '1' || repeat('}', 32))::jsonb,
          'a patch nesting 32 objects is accepted');
select throws_ok(
  $$select pgshield.jsonb_merge_patch('{}', (repeat('{"k":', 33) || '1' || repeat('}', 33))::jsonb)$$,
  '22023', null, 'a patch nesting 33 objects is refused with 22023');
select lives_ok(
  $$select pgshield.jsonb_merge_patch('{}', ('{"a":' || repeat('[', 100) || repeat(']', 100) || '}')::jsonb)$$,
  'arrays do not count towards the depth limit (they are values)');

-- ------------------------------------------------------ function and roles ----
select is((select p.provolatile::text from pg_catalog.pg_proc p
            where p.oid = 'pgshield.jsonb_merge_patch(jsonb,jsonb)'::regprocedure),
          'i', 'jsonb_merge_patch is immutable');
select is((select p.proparallel::text from pg_catalog.pg_proc p
            where p.oid = 'pgshield.jsonb_merge_patch(jsonb,jsonb)'::regprocedure),
          's', 'jsonb_merge_patch is parallel safe');
select ok((select not p.proisstrict from pg_catalog.pg_proc p
            where p.oid = 'pgshield.jsonb_merge_patch(jsonb,jsonb)'::regprocedure),
          'jsonb_merge_patch is not strict (SQL NULL arguments have a meaning)');
-- (What anon and authenticated may execute: 05_pack_exposure.sql.)
select ok(has_function_privilege('service_role', 'pgshield.jsonb_merge_patch(jsonb,jsonb)', 'execute'),
          'service_role has EXECUTE on jsonb_merge_patch');
select ok(not has_function_privilege('anon', 'pgshield.jsonb_merge_patch(jsonb,jsonb)', 'execute'),
          'anon has no EXECUTE on jsonb_merge_patch (it may not merge anything)');

select pg_temp.act_as('authenticated', pg_temp.create_test_user('alice'));
select is(pgshield.jsonb_merge_patch('{"a":1}', '{"a":null,"b":2}'), '{"b":2}'::jsonb,
          'authenticated can call jsonb_merge_patch');

select pg_temp.act_as('service_role');
select is(pgshield.jsonb_merge_patch('{"a":1}', '{"a":{"b":1}}'), '{"a":{"b":1}}'::jsonb,
          'service_role can call jsonb_merge_patch');

select pg_temp.act_as('anon');
select throws_ok($$select pgshield.jsonb_merge_patch('{}', '{}')$$, '42501', null,
                 'anon is refused (42501)');
select pg_temp.act_as_owner();

select * from finish();
rollback;

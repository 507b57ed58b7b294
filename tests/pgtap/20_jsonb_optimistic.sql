-- pgshield jsonb: optimistic merges. merge_jsonb_if writes only when the
-- document still has the expected hash (pgshield.jsonb_hash, the md5 of the
-- jsonb text form); otherwise PT409 (HTTP 409) and nothing is written.
begin;
\ir _helpers.psql
select plan(20);

create table public.pgshield_t_o_docs (id bigint primary key, doc jsonb);
insert into public.pgshield_t_o_docs (id, doc) values (1, '{"v":1}'), (2, null);
select pgshield.register_jsonb_target('public.pgshield_t_o_docs', 'doc');

-- Everyone may read every row, but update only their own.
create table public.pgshield_t_o_shared (
  id int primary key, owner_id uuid not null, doc jsonb not null default '{}'
);
alter table public.pgshield_t_o_shared enable row level security;
create policy jsonb_o_read on public.pgshield_t_o_shared for select to authenticated using (true);
create policy jsonb_o_write on public.pgshield_t_o_shared for update to authenticated
  using (owner_id = auth.uid()) with check (owner_id = auth.uid());
insert into public.pgshield_t_o_shared (id, owner_id) values
  (1, pg_temp.create_test_user('owner')),
  (2, pg_temp.create_test_user('other'));
select pgshield.register_jsonb_target('public.pgshield_t_o_shared', 'doc');

-- -------------------------------------------------------------------- hash ----
select is(pgshield.jsonb_hash('{"b":2,"a":1}'), md5('{"a": 1, "b": 2}'),
          'jsonb_hash is the md5 of the jsonb text form');
select is(pgshield.jsonb_hash('{"a":1,  "b":2}'), pgshield.jsonb_hash('{"b":2,"a":1}'),
          'equal documents hash alike whatever their spelling');
select is(pgshield.jsonb_hash(null), pgshield.jsonb_hash('{}'),
          'a SQL NULL document hashes like {}');
select is((select p.provolatile::text from pg_catalog.pg_proc p
            where p.oid = 'pgshield.jsonb_hash(jsonb)'::regprocedure), 'i',
          'jsonb_hash is immutable');

-- ----------------------------------------------------------------- merging ----
select is(merge_jsonb_if('pgshield_t_o_docs', '1', '{"w":2}', md5('{"v": 1}')),
          '{"v":1,"w":2}'::jsonb, 'with the current hash the merge happens');
select throws_ok(
  $$select merge_jsonb_if('pgshield_t_o_docs', '1', '{"x":3}', md5('{"v": 1}'))$$,
  'PT409', null, 'with a stale hash the merge is refused (PT409)');
select is((select doc from public.pgshield_t_o_docs where id = 1), '{"v":1,"w":2}'::jsonb,
          'the refused merge wrote nothing');
select is(merge_jsonb_if('pgshield_t_o_docs', '1', '{"x":3}',
                         upper(pgshield.jsonb_hash('{"v":1,"w":2}'))),
          '{"v":1,"w":2,"x":3}'::jsonb, 'upper-case hex is accepted');
select is(merge_jsonb_if('pgshield_t_o_docs', '1', '{"y":4}',
                         (select pgshield.jsonb_hash(doc) from public.pgshield_t_o_docs where id = 1),
                         '{deep,er}') #> '{deep,er}',
          '{"y":4}'::jsonb, 'the hash covers the whole document, also for a merge at a path');
select is(merge_jsonb_if('pgshield_t_o_docs', '2', '{"n":1}', pgshield.jsonb_hash(null)),
          '{"n":1}'::jsonb, 'a SQL NULL document is matched by the hash of {}');

-- ------------------------------------------------------------- bad input ----
select throws_ok($$select merge_jsonb_if('pgshield_t_o_docs', '1', '{}', 'abc')$$,
                 '22023', 'p_expected_hash must be 32 hex digits', 'a malformed hash is refused (22023)');
select throws_ok($$select merge_jsonb_if('pgshield_t_o_docs', '1', '{}', null)$$,
                 '22023', 'p_expected_hash must be 32 hex digits', 'a SQL NULL hash is refused (22023)');
select throws_ok($$select merge_jsonb_if('pgshield_t_o_docs', '99', '{}', md5(''))$$,
                 'PT404', null, 'an id with no row is PT404, not PT409');
select throws_ok($$select merge_jsonb_if('pgshield_t_no_such_table', '1', '{}', md5(''))$$,
                 '22023', null, 'an unregistered table is refused (22023)');

-- ------------------------------------------------------------ with RLS ----
select pg_temp.act_as('authenticated', pg_temp.test_user('owner'));
select is(merge_jsonb_if('pgshield_t_o_shared', '1', '{"a":1}', pgshield.jsonb_hash('{}')),
          '{"a":1}'::jsonb, 'authenticated merges its own row with the right hash');
select throws_ok(
  $$select merge_jsonb_if('pgshield_t_o_shared', '1', '{"a":2}', pgshield.jsonb_hash('{}'))$$,
  'PT409', null, 'authenticated gets PT409 for a stale hash');
select throws_ok(
  $$select merge_jsonb_if('pgshield_t_o_shared', '2', '{"a":1}', pgshield.jsonb_hash('{}'))$$,
  'PT404', null, 'a row it may read but not update is PT404, never a retry-forever PT409');
select throws_ok(
  $$select merge_jsonb_if('pgshield_t_o_shared', '2', '{"a":1}', md5('stale'))$$,
  'PT404', null, '... with a stale hash too: no PT409 whose retry could only be PT404');
select pg_temp.act_as_owner();
select is((select doc from public.pgshield_t_o_shared where id = 2), '{}'::jsonb,
          'the other user''s row was not changed');
select is((select doc from public.pgshield_t_o_shared where id = 1), '{"a":1}'::jsonb,
          'the own row holds only the successful merge');

select * from finish();
rollback;

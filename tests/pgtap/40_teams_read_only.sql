-- teams: a call in a read-only transaction (PostgREST GET / HEAD, supabase-js
-- rpc(..., { get: true })) is refused up front with 25006, and nothing happens.
begin;
\ir _helpers.psql
select plan(8);

select pg_temp.create_test_user('ann');
select pg_temp.create_test_user('bob');
select pg_temp.create_test_user('eve');
create temp table pgshield_t_kept (name text primary key, value jsonb not null);
grant select, insert on pg_temp.pgshield_t_kept to public;
create function pg_temp.keep(p_name text, p_value jsonb) returns jsonb
language sql as $$ insert into pg_temp.pgshield_t_kept values (p_name, p_value); select p_value; $$;
create function pg_temp.acme() returns uuid
language sql stable as $$ select (k.value ->> 'id')::uuid from pg_temp.pgshield_t_kept k where k.name = 'acme' $$;
grant execute on function pg_temp.keep(text, jsonb), pg_temp.acme() to public;
-- What a call could have changed: the audit trail, the team, its members.
create function pg_temp.state() returns jsonb
language sql stable as $$
  select jsonb_build_object(
    'audit', (select count(*) from pgshield.team_audit),
    'team', (select to_jsonb(t) from pgshield.teams t where t.id = pg_temp.acme()),
    'members', (select count(*) from pgshield.team_members m where m.team_id = pg_temp.acme())) $$;

select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select pg_temp.keep('acme', public.create_team_with_owner('Acme', 'pgshield-t-acme'));
select public.add_team_member(pg_temp.acme(), pg_temp.test_user('bob'), 'member');
select pg_temp.act_as_owner();
select pg_temp.keep('before', pg_temp.state());

-- From here on the transaction is read-only, as PostgREST makes it for GET.
set transaction read only;

select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select throws_ok(format('select public.update_team(%L, p_name => %L)', pg_temp.acme(), 'Acme 2'),
  '25006', 'call team operations with POST', 'a change in a read-only transaction is refused');
select throws_ok(format('select public.get_team(%L)', pg_temp.acme()),
  '25006', 'call team operations with POST', '... and so is a read');
select throws_ok($$ select public.create_team_with_owner('Other', 'pgshield-t-other') $$,
  '25006', 'call team operations with POST', '... and a creation');
select pg_temp.act_as('authenticated', pg_temp.test_user('bob'));
select throws_ok(format('select public.add_team_member(%L, %L, %L)', pg_temp.acme(), pg_temp.test_user('eve'), 'admin'),
  '25006', 'call team operations with POST', '... and a call that would be refused');
select pg_temp.act_as('authenticated', pg_temp.test_user('eve'));
select throws_ok(format('select public.delete_team(%L)', pg_temp.acme()),
  '25006', 'call team operations with POST', '... and a stranger''s');

select pg_temp.act_as_owner();
select is(pg_temp.state(), (select k.value from pg_temp.pgshield_t_kept k where k.name = 'before'),
  'nothing changed: no audit row, the team and its members as they were');
select is(nullif(current_setting('response.status', true), ''), null, 'no response status was set');
select is(current_setting('transaction_read_only'), 'on', 'the transaction stayed read-only');

select * from finish();
rollback;

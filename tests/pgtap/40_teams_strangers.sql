-- teams: a stranger learns nothing (which teams, invitations or users exist)
-- and cannot write into a team's audit trail.
begin;
\ir _helpers.psql
select plan(15);

select pg_temp.create_test_user('ann');
select pg_temp.create_test_user('bob');
select pg_temp.create_test_user('eve');
create temp table pgshield_t_kept (name text primary key, value jsonb not null);
grant select, insert on pg_temp.pgshield_t_kept to public;
create function pg_temp.keep(p_name text, p_value jsonb) returns jsonb
language sql as $$ insert into pg_temp.pgshield_t_kept values (p_name, p_value); select p_value; $$;
create function pg_temp.kept(p_name text) returns jsonb
language sql stable as $$ select k.value from pg_temp.pgshield_t_kept k where k.name = p_name $$;
create function pg_temp.acme() returns uuid
language sql stable as $$ select (k.value ->> 'id')::uuid from pg_temp.pgshield_t_kept k where k.name = 'acme' $$;
-- An answer with its HTTP status, as PostgREST would send it.
create function pg_temp.answer(p_body jsonb) returns jsonb
language sql volatile as $$ select p_body || jsonb_build_object('status', current_setting('response.status', true)) $$;
grant execute on function pg_temp.keep(text, jsonb), pg_temp.kept(text), pg_temp.acme(), pg_temp.answer(jsonb)
  to public;

select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select pg_temp.keep('acme', public.create_team_with_owner('Acme', 'pgshield-t-acme'));
select public.add_team_member(pg_temp.acme(), pg_temp.test_user('bob'), 'member');
select pg_temp.keep('inv', public.create_team_invitation(pg_temp.acme(), 'viewer'));

-- ------------------------------------------------------------------ slugs ----
select pg_temp.act_as('authenticated', pg_temp.test_user('eve'));
select pg_temp.keep('slug_taken', pg_temp.answer(public.get_team(p_slug => 'pgshield-t-acme')));
select pg_temp.keep('slug_free', pg_temp.answer(public.get_team(p_slug => 'pgshield-t-nope')));
select is(pg_temp.kept('slug_free') ->> 'code', 'PT404', 'a stranger asks for an unknown slug: not found');
select is(replace(pg_temp.kept('slug_taken')::text, 'pgshield-t-acme', 'pgshield-t-nope'),
          pg_temp.kept('slug_free')::text,
  '... and gets exactly the same answer for the slug of a team they are not in');
select ok(position(pg_temp.acme()::text in pg_temp.kept('slug_taken')::text) = 0,
  '... which does not carry the team''s id');

-- ------------------------------------------------------------ invitations ----
select pg_temp.keep('inv_taken', pg_temp.answer(public.revoke_team_invitation((pg_temp.kept('inv') ->> 'id')::uuid)));
select pg_temp.keep('inv_free', pg_temp.answer(public.revoke_team_invitation('00000000-0000-4000-8000-00000000f00d')));
select is(pg_temp.kept('inv_free') ->> 'code', 'PT404', 'a stranger revokes an unknown invitation: not found');
select is(replace(pg_temp.kept('inv_taken')::text, pg_temp.kept('inv') ->> 'id', '00000000-0000-4000-8000-00000000f00d'),
          pg_temp.kept('inv_free')::text,
  '... and gets exactly the same answer for another team''s invitation');
select ok(position(pg_temp.acme()::text in pg_temp.kept('inv_taken')::text) = 0,
  '... which does not carry the team''s id');

-- ------------------------------------------------------------------ users ----
select pg_temp.keep('user_real', pg_temp.answer(public.add_team_member(pg_temp.acme(), pg_temp.test_user('ann'))));
select pg_temp.keep('user_none', pg_temp.answer(public.add_team_member(pg_temp.acme(), '00000000-0000-4000-8000-00000000dead')));
select is(pg_temp.kept('user_real') ->> 'code', 'PT404', 'a stranger adds a member to a team: not found');
select is(pg_temp.kept('user_real'), pg_temp.kept('user_none'),
  '... the same answer whether the user id is an auth user or not');
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select throws_ok(format('select public.add_team_member(%L, %L)', pg_temp.acme(), '00000000-0000-4000-8000-00000000dead'),
  '22023', null, 'the team''s admin is told the user does not exist');

-- ------------------------------------------------------------------ audit ----
select pg_temp.act_as('authenticated', pg_temp.test_user('eve'));
select is(pgshield.teams_call('delete_team', jsonb_build_object('team_id', pg_temp.acme(), 'junk', repeat('x', 100000)))
            ->> 'code', 'PT404', 'a stranger calls teams_call itself with huge arguments: not found');
select pg_temp.act_as('authenticated', pg_temp.test_user('bob'));
select is(public.delete_team(pg_temp.acme()) ->> 'code', '42501', 'a member who is no owner tries to delete the team');

select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select is((select array_agg(e ->> 'actor_id') from jsonb_array_elements(public.get_team_audit(pg_temp.acme(), 1000, true)) e),
  array[pg_temp.test_user('bob')::text],
  'the team''s admin reads its members'' refusals, never a stranger''s probes');
select pg_temp.act_as('service_role');
select is((select count(*)::integer from jsonb_array_elements(public.get_team_audit(null, 1000, true)) e
            where e ->> 'actor_id' = pg_temp.test_user('eve')::text and e ->> 'team_id' is null), 7,
  'service_role reads every refusal of the stranger, none of them in the team''s audit');
select is((select count(*)::integer from jsonb_array_elements(public.get_team_audit(null, 1000, true)) e
            where e ->> 'actor_id' = pg_temp.test_user('eve')::text
              and length((e -> 'details')::text) <= 2100 and e ->> 'message' not like '%xxxxxxxxxx%'), 7,
  'a refusal keeps a bounded part of the arguments');
select is((select e -> 'details' from jsonb_array_elements(public.get_team_audit(null, 1000, true)) e
            where e ->> 'actor_id' = pg_temp.test_user('eve')::text and e ->> 'action' = 'delete_team'),
  jsonb_build_object('team_id', pg_temp.acme()), '... of those the operation takes (the junk is dropped)');

select * from finish();
rollback;

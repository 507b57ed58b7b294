-- teams: a team never has zero owners.
begin;
\ir _helpers.psql
select plan(20);

select pg_temp.create_test_user('ann');
select pg_temp.create_test_user('bob');
select pg_temp.create_test_user('cid');
create temp table pgshield_t_teams (name text primary key, id uuid not null);
grant select, insert on pg_temp.pgshield_t_teams to public;
create function pg_temp.keep(p_name text, p_team jsonb) returns jsonb
language sql as $$
  insert into pg_temp.pgshield_t_teams (name, id) values (p_name, (p_team ->> 'id')::uuid);
  select p_team;
$$;
create function pg_temp.tid(p_name text) returns uuid
language sql stable as $$ select t.id from pg_temp.pgshield_t_teams t where t.name = p_name $$;
create function pg_temp.owners(p_name text) returns integer
language sql stable as $$ select count(*)::integer from pgshield.team_members m
                           where m.team_id = pg_temp.tid(p_name) and m.role = 'owner' $$;
grant execute on function pg_temp.keep(text, jsonb), pg_temp.tid(text) to public;

select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select pg_temp.keep('acme', public.create_team_with_owner('Acme', 'pgshield-t-acme'));
select public.add_team_member(pg_temp.tid('acme'), pg_temp.test_user('bob'), 'admin');

-- --------------------------------------------------------- the last owner ----
select is(public.set_team_member_role(pg_temp.tid('acme'), pg_temp.test_user('ann'), 'admin') ->> 'code', 'PT409',
  'the last owner cannot demote themselves');
select is(public.leave_team(pg_temp.tid('acme')) ->> 'code', 'PT409', 'the last owner cannot leave');
select is(public.remove_team_member(pg_temp.tid('acme'), pg_temp.test_user('ann')) ->> 'code', 'PT409',
  'the last owner cannot remove themselves');
select is(current_setting('response.status', true), '409', '... HTTP 409');
select pg_temp.act_as('service_role');
select is(public.set_team_member_role(pg_temp.tid('acme'), pg_temp.test_user('ann'), 'member') ->> 'code', 'PT409',
  'not even service_role demotes the last owner');
select pg_temp.act_as_owner();
select is(pg_temp.owners('acme'), 1, 'the team still has its owner');
select throws_ok(format('delete from pgshield.team_members where team_id = %L', pg_temp.tid('acme')), 'PT409', null,
  'deleting every membership directly is refused too (the trigger)');
select throws_ok(format('delete from auth.users where id = %L', pg_temp.test_user('ann')), 'PT409', null,
  'deleting the last owner''s auth user is refused: transfer ownership or delete the team first');
select lives_ok(format('delete from auth.users where id = %L', pg_temp.test_user('bob')),
  'deleting a user who is not a last owner removes their memberships');

-- ---------------------------------------------------------------- transfer ----
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select public.add_team_member(pg_temp.tid('acme'), pg_temp.test_user('cid'), 'member');
select is(public.transfer_team_ownership(pg_temp.tid('acme'), pg_temp.test_user('cid')) ->> 'code', '42501',
  'transfer to a member added unasked is refused ...');
select set_config('pgshield_t.token', public.create_team_invitation(pg_temp.tid('acme'), 'member') ->> 'token', false);
select pg_temp.act_as('authenticated', pg_temp.test_user('cid'));
select is(public.accept_team_invitation(current_setting('pgshield_t.token')) ->> 'role', 'member',
  '... until they accept an invitation (already a member: their consent) ...');
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select is(public.transfer_team_ownership(pg_temp.tid('acme'), pg_temp.test_user('cid')) -> 0 ->> 'user_id',
  pg_temp.test_user('cid')::text, 'transfer: the new owner is the only owner ...');
select is(public.get_team(pg_temp.tid('acme')) ->> 'role', 'admin', '... and the old owner is admin');
select is(public.transfer_team_ownership(pg_temp.tid('acme'), pg_temp.test_user('ann')) ->> 'code', '42501',
  'only an owner transfers ownership');
select is(public.leave_team(pg_temp.tid('acme')) -> 'removed', 'true'::jsonb, 'the former owner may leave now');

-- ------------------------------------------------- two owners, then deletion ----
select pg_temp.act_as('authenticated', pg_temp.test_user('cid'));
select is(public.add_team_member(pg_temp.tid('acme'), pg_temp.test_user('ann'), 'owner') ->> 'code', '42501',
  'a user adds nobody as owner directly ...');
select set_config('pgshield_t.token', public.create_team_invitation(pg_temp.tid('acme'), 'owner') ->> 'token', false);
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select is(public.accept_team_invitation(current_setting('pgshield_t.token')) ->> 'role', 'owner',
  '... an owner joins by invitation');
select pg_temp.act_as('authenticated', pg_temp.test_user('cid'));
select is(public.set_team_member_role(pg_temp.tid('acme'), pg_temp.test_user('ann'), 'admin') ->> 'role', 'admin',
  'with two owners, one may be demoted');
select pg_temp.act_as_owner();
select throws_ok(
  $$ with t as (insert into pgshield.teams (name, slug) values ('Orphan', 'pgshield-t-orphan') returning id)
     select 1 from t; set constraints pgshield.teams_have_an_owner immediate $$,
  'PT409', null, 'a team inserted without an owner cannot commit (deferred trigger)');
select pg_temp.act_as('authenticated', pg_temp.test_user('cid'));
select public.delete_team(pg_temp.tid('acme'));
select pg_temp.act_as_owner();
select lives_ok(format('delete from auth.users where id = %L', pg_temp.test_user('cid')),
  'once the team is deleted, its last owner''s account can be deleted');

select * from finish();
rollback;

-- teams: who may do what, acting as anon, authenticated and service_role.
begin;
\ir _helpers.psql
select plan(40);

select pg_temp.create_test_user('ann');   -- owner
select pg_temp.create_test_user('bob');   -- admin
select pg_temp.create_test_user('cid');   -- member
select pg_temp.create_test_user('dee');   -- viewer
select pg_temp.create_test_user('eve');   -- not a member
select pg_temp.create_test_user('fay');

create temp table pgshield_t_teams (name text primary key, id uuid not null);
grant select, insert on pg_temp.pgshield_t_teams to public;
create function pg_temp.keep(p_name text, p_team jsonb) returns jsonb
language sql as $$
  insert into pg_temp.pgshield_t_teams (name, id) values (p_name, (p_team ->> 'id')::uuid);
  select p_team;
$$;
create function pg_temp.tid(p_name text) returns uuid
language sql stable as $$ select t.id from pg_temp.pgshield_t_teams t where t.name = p_name $$;
grant execute on function pg_temp.keep(text, jsonb), pg_temp.tid(text) to public;

-- ------------------------------------------------------------------- anon ----
select pg_temp.act_as('anon');
select throws_ok($$ select public.create_team_with_owner('X', 'pgshield-t-anon') $$, '42501', null,
  'anon cannot create teams');
select throws_ok($$ select public.list_my_teams() $$, '42501', null, 'anon cannot list teams');
select throws_ok($$ select pgshield.teams_with_permission('read') $$, '42501', null,
  'anon cannot call the RLS helpers (policies say `to authenticated`)');

-- ------------------------------------------------------------- creation ----
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select is(pg_temp.keep('acme', public.create_team_with_owner('Acme', 'PGShield-T-Acme')) ->> 'slug',
  'pgshield-t-acme', 'a user creates a team; the slug is normalised');
select is(public.create_team_with_owner('Other', 'pgshield-t-other', pg_temp.test_user('bob')) ->> 'code',
  '42501', 'a user cannot make someone else the owner (refusal 42501, answered)');
select is(current_setting('response.status', true), '403', '... with HTTP status 403 for PostgREST');
select is(public.create_team_with_owner('Mine', 'pgshield-t-mine', pg_temp.test_user('ann')) ->> 'slug',
  'pgshield-t-mine', 'naming oneself as owner is fine');
select is(public.create_team_with_owner('Again', 'PGSHIELD-T-ACME') ->> 'code', '23505',
  'a taken slug is 23505, whatever its case');
select matches(public.create_team_with_owner('Again', 'pgshield-t-acme') ->> 'message', 'pgshield-t-acme',
  '... and the message names the slug');
select is(current_setting('response.status', true), '409', '... with HTTP status 409');

select pg_temp.act_as('authenticated');
select is(public.create_team_with_owner('Nobody', 'pgshield-t-nobody') ->> 'code', '42501',
  'an authenticated JWT without a user id is refused');

select pg_temp.act_as('service_role');
select is(pg_temp.keep('svc', public.create_team_with_owner('Svc', 'pgshield-t-svc', pg_temp.test_user('fay'))) ->> 'created_by',
  pg_temp.test_user('fay')::text, 'service_role creates a team for any existing user');
select throws_ok($$ select public.create_team_with_owner('Svc', 'pgshield-t-svc2') $$, '22023', null,
  'service_role must name the owner');

-- ------------------------------------------------------------- members ----
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select is(public.add_team_member(pg_temp.tid('acme'), pg_temp.test_user('bob'), 'admin') ->> 'role', 'admin',
  'the owner adds an admin');
select is(public.add_team_member(pg_temp.tid('acme'), pg_temp.test_user('cid')) ->> 'role', 'member',
  'the owner adds a member (the default role)');
select is(public.add_team_member(pg_temp.tid('acme'), pg_temp.test_user('cid')) ->> 'code', '23505',
  'adding a member twice is a conflict');

select pg_temp.act_as('authenticated', pg_temp.test_user('bob'));
select is(public.add_team_member(pg_temp.tid('acme'), pg_temp.test_user('dee'), 'viewer') ->> 'role', 'viewer',
  'an admin adds a viewer');
select is(public.add_team_member(pg_temp.tid('acme'), pg_temp.test_user('eve'), 'owner') ->> 'code', '42501',
  'an admin cannot grant owner (above their own role)');
select is(public.set_team_member_role(pg_temp.tid('acme'), pg_temp.test_user('ann'), 'member') ->> 'code', '42501',
  'an admin cannot demote an owner');
select is(public.remove_team_member(pg_temp.tid('acme'), pg_temp.test_user('ann')) ->> 'code', '42501',
  'an admin cannot remove an owner');
select is(public.delete_team(pg_temp.tid('acme')) ->> 'code', '42501', 'an admin cannot delete the team');
select is(public.update_team(pg_temp.tid('acme'), p_name => 'Acme Inc') ->> 'name', 'Acme Inc',
  'an admin updates the team (write)');

select pg_temp.act_as('authenticated', pg_temp.test_user('cid'));
select is(public.update_team(pg_temp.tid('acme'), p_name => 'Acme by cid') ->> 'name', 'Acme by cid',
  'a member has write');
select is(public.add_team_member(pg_temp.tid('acme'), pg_temp.test_user('eve')) ->> 'code', '42501',
  'a member cannot add members');
select is(jsonb_array_length(public.list_team_members(pg_temp.tid('acme'))), 4, 'a member lists the members');

select pg_temp.act_as('authenticated', pg_temp.test_user('dee'));
select is(public.update_team(pg_temp.tid('acme'), p_name => 'Acme by dee') ->> 'code', '42501',
  'a viewer has no write');
select is(public.get_team(p_slug => 'pgshield-t-acme') ->> 'role', 'viewer', 'a viewer reads the team');

select pg_temp.act_as('authenticated', pg_temp.test_user('eve'));
select is(public.get_team(pg_temp.tid('acme')) ->> 'code', 'PT404', 'a non-member gets not found ...');
select is(public.get_team(gen_random_uuid()) ->> 'code', 'PT404', '... exactly as for a team that does not exist');
select is(public.list_my_teams(pg_temp.test_user('ann')) ->> 'code', '42501', 'nobody lists another user''s teams');

-- ---------------------------------------------------------- overrides ----
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select public.set_team_member_role(pg_temp.tid('acme'), pg_temp.test_user('cid'), 'member', array['admin']);
select pg_temp.act_as('authenticated', pg_temp.test_user('cid'));
select ok(pgshield.has_team_permission(pg_temp.tid('acme'), 'admin'), 'an override adds a permission');
select ok(not pgshield.has_team_permission(pg_temp.tid('acme'), 'delete'), '... and only that one');
select is(public.set_team_member_role(pg_temp.tid('acme'), pg_temp.test_user('dee'), 'viewer', array['delete']) ->> 'code',
  '42501', 'nobody grants a permission they do not have');
select is(public.set_team_member_role(pg_temp.tid('acme'), pg_temp.test_user('dee'), 'viewer', array['write']) -> 'permissions',
  '["read", "write"]'::jsonb, 'overrides within the grantor''s own are granted');
select is(public.add_team_member(pg_temp.tid('acme'), pg_temp.test_user('eve'), 'admin') ->> 'code', '42501',
  'nobody grants a role above their own (a member with admin permission cannot make admins)');
select public.set_team_member_role(pg_temp.tid('acme'), pg_temp.test_user('dee'), 'viewer', '{}');

-- ------------------------------------------------------------ RLS helpers ----
select pg_temp.act_as('authenticated', pg_temp.test_user('dee'));
select is(array(select pgshield.teams_with_permission('read')), array[pg_temp.tid('acme')],
  'teams_with_permission lists the teams where the caller has the permission');
select is(array(select pgshield.teams_with_permission('write')), '{}'::uuid[], '... and none where not');
select pg_temp.act_as('service_role');
select ok(not pgshield.has_team_permission(pg_temp.tid('acme'), 'read'),
  'has_team_permission answers for auth.uid(): false without one');

-- ----------------------------------------------------------------- delete ----
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select is(public.delete_team(pg_temp.tid('acme')) ->> 'deleted', 'true', 'the owner deletes the team');
select pg_temp.act_as_owner();
select is((select count(*)::integer from pgshield.team_members where team_id = pg_temp.tid('acme')), 0,
  'with its members');

select * from finish();
rollback;

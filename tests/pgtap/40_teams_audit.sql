-- teams: every change and every refused call is in the audit trail; cleanup and status.
begin;
\ir _helpers.psql
select plan(18);

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
-- Audit rows of this file's team, as the owner sees them.
create function pg_temp.rows(p_outcome text) returns text[]
language sql stable as $$
  select array(select a.action || coalesce(':' || a.sqlstate, '') from pgshield.team_audit a
                where a.team_id = pg_temp.acme() and a.outcome = p_outcome order by a.id) $$;

select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select pg_temp.keep('acme', public.create_team_with_owner('Acme', 'pgshield-t-acme'));
select public.add_team_member(pg_temp.acme(), pg_temp.test_user('bob'), 'member');
select public.update_team(pg_temp.acme(), p_name => 'Acme Inc');

select pg_temp.act_as('authenticated', pg_temp.test_user('bob'));
select is(public.add_team_member(pg_temp.acme(), pg_temp.test_user('eve'), 'admin') ->> 'code', '42501',
  'a member tries to add an admin: refused');
select is(public.get_team_audit(pg_temp.acme()) ->> 'code', '42501', 'a member cannot read the audit');
select pg_temp.act_as('authenticated', pg_temp.test_user('eve'));
select is(public.delete_team(pg_temp.acme()) ->> 'code', 'PT404', 'a stranger tries to delete the team: not found');
select is(public.create_team_with_owner('Taken', 'pgshield-t-acme') ->> 'code', '23505', 'a stranger takes the slug');

select pg_temp.act_as_owner();
select is(pg_temp.rows('ok'), array['create_team', 'add_member', 'update_team'],
  'every change wrote one audit row, in order');
select is(pg_temp.rows('denied'), array['add_member:42501', 'list_audit:42501'],
  'every refused call of a member wrote a denied row of the team (the caller''s transaction keeps it)');
select ok(not exists (select 1 from pgshield.team_members m
                       where m.team_id = pg_temp.acme() and m.user_id = pg_temp.test_user('eve')),
  'the refused work itself was undone');
select is((select a.actor_id from pgshield.team_audit a
            where a.team_id = pg_temp.acme() and a.action = 'list_audit' and a.outcome = 'denied'),
  pg_temp.test_user('bob'), 'a denied row names the actor');
select is((select count(*)::integer from pgshield.team_audit a
            where a.team_id is null and a.action = 'delete_team' and a.outcome = 'denied'
              and a.actor_id = pg_temp.test_user('eve') and a.details ->> 'team_id' = pg_temp.acme()::text), 1,
  'a stranger''s refused call is recorded, but not in the team''s audit');
select is((select count(*)::integer from pgshield.team_audit a
            where a.team_id is null and a.action = 'create_team' and a.outcome = 'denied'
              and a.actor_id = pg_temp.test_user('eve') and a.details ->> 'slug' = 'pgshield-t-acme'), 1,
  'a refused creation is recorded without a team');

-- ---------------------------------------------------------------- readers ----
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select is(jsonb_array_length(public.get_team_audit(pg_temp.acme(), p_denied_only => true)), 2,
  'the team''s admins read its members'' denied attempts');
select is(public.get_team_audit(pg_temp.acme(), 1) -> 0 ->> 'action', 'list_audit',
  'newest first, limited');
select throws_ok($$ select public.get_team_audit() $$, '22023', null, 'users read one team''s audit at a time');
select pg_temp.act_as('service_role');
select ok(public.get_team_audit(null, 1000, true) @> jsonb_build_array(jsonb_build_object(
            'action', 'create_team', 'outcome', 'denied', 'actor_id', pg_temp.test_user('eve'))),
  'service_role reads every denied attempt, team-less ones too');

-- -------------------------------------------------------- cleanup, status ----
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select public.create_team_invitation(pg_temp.acme(), p_expires_in => interval '1 hour');
select pg_temp.act_as_owner();
select pgshield.set_teams_audit_retention(interval '30 days');
select pgshield.set_clock(pgshield.now() + interval '31 days');
select ok(pgshield.teams_cleanup(100000) >= 8, 'cleanup deletes expired invitations and old audit rows');
select is(pg_temp.rows('ok') || pg_temp.rows('denied'), '{}'::text[], '... this team''s audit rows among them');
select is((select count(*)::integer from pgshield.team_invitations i where i.team_id = pg_temp.acme()), 0,
  '... and its expired invitation');
select pgshield.reset_clock();
select pg_temp.act_as('service_role');
select is((select teams_without_owner from pgshield.teams_status), 0::bigint,
  'the status view counts no team without an owner');

select * from finish();
rollback;

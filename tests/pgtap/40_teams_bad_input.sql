-- teams: bad input raises 22023 and writes nothing (not even an audit row).
begin;
\ir _helpers.psql
select plan(25);

select pg_temp.create_test_user('ann');
select pg_temp.create_test_user('bob');
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
create temp table pgshield_t_team as
  select (public.create_team_with_owner('Acme', 'pgshield-t-acme') ->> 'id')::uuid as id;
grant select on pg_temp.pgshield_t_team to public;
create function pg_temp.acme() returns uuid language sql stable as $$ select id from pg_temp.pgshield_t_team $$;
grant execute on function pg_temp.acme() to public;

-- ------------------------------------------------------------------ slugs ----
select is(public.create_team_with_owner('A', ' PGShield_T  Spaced ') ->> 'slug', 'pgshield-t-spaced',
  'slug rule: trimmed, lowercased, runs of spaces and underscores become one hyphen');
select throws_ok($$ select public.create_team_with_owner('A', null) $$, '22023', null, 'a null slug');
select throws_ok($$ select public.create_team_with_owner('A', '   ') $$, '22023', null, 'a blank slug');
select throws_ok($$ select public.create_team_with_owner('A', '-pgshield-t') $$, '22023', null,
  'a slug starting with a hyphen');
select throws_ok($$ select public.create_team_with_owner('A', 'pgshield--t') $$, '22023', null,
  'a slug with a double hyphen');
select throws_ok($$ select public.create_team_with_owner('A', 'pgshield-t-ünï') $$, '22023', null,
  'a slug with letters outside a-z');
select throws_ok(format('select public.create_team_with_owner(%L, %L)', 'A', 'pgshield-t-' || repeat('x', 60)),
  '22023', null, 'a slug longer than 63 characters');

-- ------------------------------------------------------------ other args ----
select throws_ok($$ select public.create_team_with_owner('', 'pgshield-t-noname') $$, '22023', null, 'an empty name');
select throws_ok(format('select public.create_team_with_owner(%L, %L)', repeat('n', 201), 'pgshield-t-long'),
  '22023', null, 'a name longer than 200 characters');
select throws_ok(format('select public.create_team_with_owner(%L, %L)', E'a\nb', 'pgshield-t-ctl'),
  '22023', null, 'a name with a control character');
select throws_ok($$ select public.create_team_with_owner('A', 'pgshield-t-mail', null, 'not-an-email') $$,
  '22023', null, 'a billing email that is not an address');
select throws_ok($$ select public.add_team_member(pg_temp.acme(), pg_temp.test_user('bob'), 'superuser') $$,
  '22023', null, 'an unknown role');
select throws_ok($$ select public.add_team_member(pg_temp.acme(), pg_temp.test_user('bob'), 'member', array['fly']) $$,
  '22023', null, 'an unknown permission');
select throws_ok($$ select public.add_team_member(pg_temp.acme(), gen_random_uuid()) $$,
  '22023', null, 'a user who does not exist');
select throws_ok($$ select public.create_team_invitation(pg_temp.acme(), p_expires_in => interval '91 days') $$,
  '22023', null, 'an invitation valid for more than 90 days');
select throws_ok($$ select public.create_team_invitation(pg_temp.acme(), p_email => 'nobody') $$,
  '22023', null, 'an invitation bound to something that is not an email');
select throws_ok($$ select public.accept_team_invitation('not-a-token') $$, '22023', null, 'a malformed token');
select throws_ok($$ select public.get_team() $$, '22023', null, 'get_team without id or slug');
select throws_ok($$ select public.get_team_audit(pg_temp.acme(), 0) $$, '22023', null, 'an audit limit of 0');
select throws_ok($$ select pgshield.teams_with_permission('fly') $$, '22023', null, 'an unknown permission in a helper');

select pg_temp.act_as('service_role');
select throws_ok($$ select pgshield.set_teams_audit_retention(interval '10000 years') $$, '22023', null,
  'an audit retention over 1000 years (it made every cleanup fail with 22008)');
select throws_ok($$ select pgshield.set_teams_audit_retention(interval '-300000 years 108000030 days') $$,
  '22023', null, 'an audit retention that compares as 30 days but overflows the clock');
select throws_ok($$ select pgshield.set_teams_audit_retention(interval '1 month -29 days') $$, '22023', null,
  'an audit retention of mixed signs (it cut off in the future some months: rows deleted at once)');

select pg_temp.act_as_owner();
select is((select count(*)::integer from pgshield.teams where slug like 'pgshield-t-%'), 2,
  'nothing but the two good teams was written');
select is((select count(*)::integer from pgshield.team_audit
            where actor_id = pg_temp.test_user('ann') and outcome = 'denied'), 0,
  'bad input writes no audit row');

select * from finish();
rollback;

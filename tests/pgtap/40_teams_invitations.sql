-- teams: invitations are single use, expiring, bound to an email, stored hashed.
begin;
\ir _helpers.psql
select plan(25);

select pg_temp.create_test_user('ann');
select pg_temp.create_test_user('bob');
select pg_temp.create_test_user('cid');
select pg_temp.create_test_user('dee');
create temp table pgshield_t_kept (name text primary key, value jsonb not null);
grant select, insert on pg_temp.pgshield_t_kept to public;
create function pg_temp.keep(p_name text, p_value jsonb) returns jsonb
language sql as $$ insert into pg_temp.pgshield_t_kept values (p_name, p_value); select p_value; $$;
create function pg_temp.kept(p_name text) returns jsonb
language sql stable as $$ select k.value from pg_temp.pgshield_t_kept k where k.name = p_name $$;
grant execute on function pg_temp.keep(text, jsonb), pg_temp.kept(text) to public;

select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select pg_temp.keep('acme', public.create_team_with_owner('Acme', 'pgshield-t-acme'));
select is(pg_temp.keep('open', public.create_team_invitation((pg_temp.kept('acme') ->> 'id')::uuid, 'viewer')) ->> 'status',
  'pending', 'an admin creates an invitation');
select ok(pg_temp.kept('open') ->> 'token' ~ '^[0-9a-f]{64}$', 'its token is 64 hex characters, shown once');
select pg_temp.keep('bound', public.create_team_invitation((pg_temp.kept('acme') ->> 'id')::uuid, 'member',
                                                           'PGShield_T_Cid@Example.com'));
select pg_temp.keep('short', public.create_team_invitation((pg_temp.kept('acme') ->> 'id')::uuid, 'member',
                                                           p_expires_in => interval '1 hour'));
select is(jsonb_array_length(public.list_team_invitations((pg_temp.kept('acme') ->> 'id')::uuid)), 3,
  'the admin lists the invitations');
select ok(not public.list_team_invitations((pg_temp.kept('acme') ->> 'id')::uuid)::text like '%token%',
  'listed invitations carry no token');

select pg_temp.act_as_owner();
select is((select count(*)::integer from pgshield.team_invitations i
            where i.team_id = (pg_temp.kept('acme') ->> 'id')::uuid
              and i.token_hash = sha256(convert_to(pg_temp.kept('open') ->> 'token', 'UTF8'))), 1,
  'only the sha256 of the token is stored');
select ok(not exists (select 1 from pgshield.team_invitations i
                       where i.team_id = (pg_temp.kept('acme') ->> 'id')::uuid
                         and position(convert_to(pg_temp.kept('open') ->> 'token', 'UTF8') in i.token_hash) > 0),
  '... never the token itself');

-- ----------------------------------------------------------------- accept ----
select pg_temp.act_as('authenticated', pg_temp.test_user('bob'));
select is(public.accept_team_invitation(pg_temp.kept('open') ->> 'token') ->> 'role', 'viewer',
  'a user accepts an invitation and joins with its role');
select is(public.accept_team_invitation(pg_temp.kept('open') ->> 'token') ->> 'code', 'PT409',
  'an invitation is single use');
select pg_temp.act_as('authenticated', pg_temp.test_user('dee'));
select is(public.accept_team_invitation(pg_temp.kept('open') ->> 'token') ->> 'code', 'PT409',
  '... for everyone');
select is(public.accept_team_invitation(pg_temp.kept('bound') ->> 'token') ->> 'code', '42501',
  'an invitation bound to an email refuses another user');
select is(public.accept_team_invitation(repeat('ab', 32)) ->> 'code', 'PT404', 'an unknown token is not found');
select pg_temp.act_as('authenticated', pg_temp.test_user('cid'));
select is(public.accept_team_invitation(pg_temp.kept('bound') ->> 'token') ->> 'role', 'member',
  'the user with that email (any case) accepts it');
select pg_temp.act_as('service_role');
select is(public.accept_team_invitation(pg_temp.kept('short') ->> 'token') ->> 'code', '42501',
  'service_role cannot accept an invitation (it is nobody)');

-- ----------------------------------------------------------------- expiry ----
select pg_temp.act_as_owner();
select pgshield.set_clock(pgshield.now() + interval '2 hours');
select pg_temp.act_as('authenticated', pg_temp.test_user('dee'));
select is(public.accept_team_invitation(pg_temp.kept('short') ->> 'token') ->> 'code', 'PT409',
  'an expired invitation is refused');
select pg_temp.act_as_owner();
select pgshield.reset_clock();

-- ----------------------------------------------------------------- revoke ----
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select pg_temp.keep('revoked', public.create_team_invitation((pg_temp.kept('acme') ->> 'id')::uuid));
select is(public.revoke_team_invitation((pg_temp.kept('revoked') ->> 'id')::uuid) ->> 'status', 'revoked',
  'an admin revokes an invitation');
select is(public.revoke_team_invitation((pg_temp.kept('open') ->> 'id')::uuid) ->> 'code', 'PT409',
  'a used invitation cannot be revoked');
select pg_temp.act_as('authenticated', pg_temp.test_user('dee'));
select is(public.accept_team_invitation(pg_temp.kept('revoked') ->> 'token') ->> 'code', 'PT409',
  'a revoked invitation is refused');

-- -------------------------------------------------- inviter lost the role ----
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select public.set_team_member_role((pg_temp.kept('acme') ->> 'id')::uuid, pg_temp.test_user('cid'), 'admin');
select pg_temp.act_as('authenticated', pg_temp.test_user('cid'));
select pg_temp.keep('by_cid', public.create_team_invitation((pg_temp.kept('acme') ->> 'id')::uuid, 'admin'));
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select public.set_team_member_role((pg_temp.kept('acme') ->> 'id')::uuid, pg_temp.test_user('cid'), 'member');
select pg_temp.act_as('authenticated', pg_temp.test_user('dee'));
select is(public.accept_team_invitation(pg_temp.kept('by_cid') ->> 'token') ->> 'code', 'PT409',
  'an invitation whose sender can no longer grant its role is refused');
select pg_temp.act_as('authenticated', pg_temp.test_user('bob'));
select is(public.create_team_invitation((pg_temp.kept('acme') ->> 'id')::uuid) ->> 'code', '42501',
  'a viewer cannot invite');


-- ------------------------------------ sender's permissions, checked again ----
select pg_temp.act_as_owner();
select pg_temp.create_test_user('gus');
select pg_temp.create_test_user('hal');
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select public.set_team_member_role((pg_temp.kept('acme') ->> 'id')::uuid, pg_temp.test_user('cid'), 'admin');
select pg_temp.act_as('authenticated', pg_temp.test_user('cid'));
select pg_temp.keep('extra', public.create_team_invitation((pg_temp.kept('acme') ->> 'id')::uuid, 'viewer',
                                                           p_permissions => '{admin}'));
select pg_temp.keep('plain', public.create_team_invitation((pg_temp.kept('acme') ->> 'id')::uuid, 'viewer'));
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select public.set_team_member_role((pg_temp.kept('acme') ->> 'id')::uuid, pg_temp.test_user('cid'), 'viewer');
select pg_temp.act_as('authenticated', pg_temp.test_user('gus'));
select is(public.accept_team_invitation(pg_temp.kept('extra') ->> 'token') ->> 'code', 'PT409',
  'a viewer invitation with the admin override is refused once its sender is a viewer without it');
select pg_temp.act_as_owner();
select is((select array_agg(a.action || ':' || a.sqlstate) from pgshield.team_audit a
            where a.actor_id = pg_temp.test_user('gus') and a.outcome = 'denied'),
  array['accept_invitation:PT409'], '... audited as a refusal');
select ok(not exists (select 1 from pgshield.team_members m where m.user_id = pg_temp.test_user('gus')),
  '... and gus did not join');
select pg_temp.act_as('authenticated', pg_temp.test_user('hal'));
select is(public.accept_team_invitation(pg_temp.kept('plain') ->> 'token') ->> 'role', 'viewer',
  'the same sender''s plain viewer invitation is still within what it holds');

-- ------------------------------------------------ only confirmed emails ----
select pg_temp.act_as_owner();
select pg_temp.create_test_user('fay');
update auth.users set email_confirmed_at = null where id = pg_temp.test_user('fay');
select pg_temp.act_as('authenticated', pg_temp.test_user('ann'));
select pg_temp.keep('for_fay', public.create_team_invitation((pg_temp.kept('acme') ->> 'id')::uuid, 'member',
                                                             'pgshield_t_fay@example.com'));
select pg_temp.act_as('authenticated', pg_temp.test_user('fay'));
select is(public.accept_team_invitation(pg_temp.kept('for_fay') ->> 'token') ->> 'code', '42501',
  'an invitation bound to an email refuses the user with that email while it is unconfirmed');
select pg_temp.act_as_owner();
update auth.users set email_confirmed_at = now() where id = pg_temp.test_user('fay');
select pg_temp.act_as('authenticated', pg_temp.test_user('fay'));
select is(public.accept_team_invitation(pg_temp.kept('for_fay') ->> 'token') ->> 'role', 'member',
  '... and accepts it once the email is confirmed');

select * from finish();
rollback;

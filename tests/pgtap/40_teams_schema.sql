-- teams: tables, privileges, row-level security, functions and seeds.
begin;
\ir _helpers.psql
select plan(14);

select has_table('pgshield', 'teams', 'pgshield.teams exists');
select has_table('pgshield', 'team_members', 'pgshield.team_members exists');
select has_table('pgshield', 'team_invitations', 'pgshield.team_invitations exists');
select has_table('pgshield', 'team_audit', 'pgshield.team_audit exists');
select has_table('pgshield', 'team_role_permissions', 'pgshield.team_role_permissions exists');

select ok(
  (select bool_and(c.relrowsecurity) from pg_class c
    where c.relnamespace = 'pgshield'::regnamespace and c.relkind = 'r'
      and (c.relname like 'team%' or c.relname = 'teams_settings')),
  'row-level security is on for every teams table');
select ok(
  not exists (
    select 1 from pg_class c cross join unnest(array['anon', 'authenticated', 'service_role']) r(role)
     where c.relnamespace = 'pgshield'::regnamespace and c.relkind in ('r', 'v')
       and (c.relname like 'team%' or c.relname = 'teams_settings') and c.relname <> 'teams_status'
       and has_table_privilege(r.role, c.oid, 'select,insert,update,delete')),
  'API roles have no privilege on any teams table');
select ok(has_table_privilege('service_role', 'pgshield.teams_status', 'select')
          and not has_table_privilege('authenticated', 'pgshield.teams_status', 'select'),
  'the status view is for service_role only');

select ok(
  (select bool_and(not p.prosecdef) from pg_proc p
    where p.oid in (select f from pg_temp.pack_functions() f)
      and p.pronamespace = 'public'::regnamespace
      and (p.proname like '%team%')),
  'every public team entry point runs as the invoker');
select ok(
  (select bool_and(not has_function_privilege('anon', p.oid, 'execute')) from pg_proc p
    where p.oid in (select f from pg_temp.pack_functions() f) and p.proname like '%team%'),
  'anon may execute no teams function');

select ok(
  exists (select 1 from pg_index i join pg_class c on c.oid = i.indexrelid
           where i.indrelid = 'pgshield.team_members'::regclass
             and c.relname = 'team_members_user_id_idx'
             and i.indkey[0] = (select a.attnum from pg_attribute a
                                 where a.attrelid = 'pgshield.team_members'::regclass and a.attname = 'user_id')),
  'memberships are indexed by user_id first (for RLS helpers)');
select col_type_is('pgshield', 'team_invitations', 'token_hash', 'bytea',
  'invitations keep a hash of the token, not the token');
select is(
  (select confdeltype::text from pg_constraint
    where conrelid = 'pgshield.team_members'::regclass and confrelid = 'auth.users'::regclass),
  'c', 'deleting an auth user cascades to its memberships (the owner trigger guards the last owner)');

select set_eq(
  $$ select role || ':' || permission from pgshield.team_role_permissions
      where role = 'owner' $$,
  array['owner:read', 'owner:write', 'owner:delete', 'owner:admin'],
  'owners have every permission (set_team_role_permissions cannot change them)');

select * from finish();
rollback;

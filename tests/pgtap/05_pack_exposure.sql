-- pgshield: the one allowlist of the pack's functions that anon and
-- authenticated may execute, checked against the catalog. Any other pack
-- function they can execute fails here; so does a listed one they cannot.
-- The pack's functions are all of schema pgshield and the entry points
-- _helpers.psql names in public (a project's own functions live there too).
-- anon and authenticated have usage on schema pgshield: the invoker entry
-- points in public call the security definer logic there (rate_limit_check,
-- rate_limit_usage_of), so EXECUTE is what decides. docs/security.md explains
-- every entry of both lists.
begin;
\ir _helpers.psql
select plan(5);

select is(
  array(select e.signature from pg_temp.pgshield_t_pack_public e
         where to_regprocedure(e.signature) is null order by 1),
  '{}'::text[],
  'every entry point the helpers name in public exists');

-- ------------------------------------------------------------- allowlists ----
select set_eq(
  $$ select format('%s.%s(%s)', p.pronamespace::regnamespace, p.proname, oidvectortypes(p.proargtypes))
       from pg_catalog.pg_proc p
      where p.oid in (select f from pg_temp.pack_functions() f)
        and has_function_privilege('anon', p.oid, 'execute') $$,
  array[
    'public.check_rate_limit(text, integer, text, text)',
    'public.peek_check_rate_limit(text, integer, text, text)',
    -- what those two invoker entry points call
    'pgshield.rate_limit_check(text, integer, text, text, boolean)',
    -- the Data API guard: PostgREST calls it before every request, as the request's role;
    -- it runs as the invoker and calls the one after it
    'pgshield.request_guard()',
    'pgshield.request_guard_decide()'
  ],
  'anon may execute exactly the pack functions on its allowlist');

select set_eq(
  $$ select format('%s.%s(%s)', p.pronamespace::regnamespace, p.proname, oidvectortypes(p.proargtypes))
       from pg_catalog.pg_proc p
      where p.oid in (select f from pg_temp.pack_functions() f)
        and has_function_privilege('authenticated', p.oid, 'execute') $$,
  array[
    -- entry points
    'public.check_rate_limit(text, integer, text, text)',
    'public.get_rate_limit_usage(text, text)',
    'public.merge_jsonb(text, text, jsonb, text[])',
    'public.merge_jsonb_if(text, text, jsonb, text, text[])',
    'public.peek_check_rate_limit(text, integer, text, text)',
    'pgshield.jsonb_hash(jsonb)',
    'pgshield.jsonb_merge_patch(jsonb, jsonb)',
    'pgshield.version()',
    -- what the invoker rate limit entry points call
    'pgshield.rate_limit_check(text, integer, text, text, boolean)',
    'pgshield.rate_limit_usage_of(text, text)',
    'pgshield.request_guard()',
    'pgshield.request_guard_decide()',
    -- merge_jsonb runs with the caller's rights, so what it calls is granted too
    'pgshield.jsonb_merge_check_args(text, jsonb, text[])',
    'pgshield.jsonb_merge_dynamic(text, text, jsonb, text[], text)',
    'pgshield.jsonb_merge_fast(text, jsonb, text[], text, text)',
    'pgshield.jsonb_merge_patch_at(jsonb, text[], jsonb)',
    'pgshield.jsonb_merge_patch_level(jsonb, jsonb, integer)',
    'pgshield.jsonb_merge_statement(pgshield.jsonb_target, boolean)',
    'pgshield.jsonb_relation_of(text)',
    -- teams: the invoker entry points, the one definer function behind them (it
    -- checks the caller: auth.uid() and its membership), and the RLS helpers
    'public.accept_team_invitation(text)',
    'public.add_team_member(uuid, uuid, text, text[])',
    'public.create_team_invitation(uuid, text, text, interval, text[])',
    'public.create_team_with_owner(text, text, uuid, text)',
    'public.delete_team(uuid)',
    'public.get_team(uuid, text)',
    'public.get_team_audit(uuid, integer, boolean)',
    'public.leave_team(uuid)',
    'public.list_my_teams(uuid)',
    'public.list_team_invitations(uuid)',
    'public.list_team_members(uuid)',
    'public.remove_team_member(uuid, uuid)',
    'public.revoke_team_invitation(uuid)',
    'public.set_team_member_role(uuid, uuid, text, text[])',
    'public.transfer_team_ownership(uuid, uuid)',
    'public.update_team(uuid, text, text, text)',
    'pgshield.teams_call(text, jsonb)',
    'pgshield.has_team_permission(uuid, text)',
    'pgshield.teams_with_permission(text)'
  ],
  'authenticated may execute exactly the pack functions on its allowlist');

select is_empty(
  $$ select p.oid::regprocedure from pg_catalog.pg_proc p
      where p.oid in (select f from pg_temp.pack_functions() f)
        and has_function_privilege('public', p.oid, 'execute') $$,
  'no pack function is executable by PUBLIC (every grant names its roles)');

-- ------------------------------------------------------------ search_path ----
select is_empty(
  $$ select p.oid::regprocedure from pg_catalog.pg_proc p
      where p.oid in (select f from pg_temp.pack_functions() f)
        and not coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false) $$,
  'every pack function pins search_path to pg_catalog, pg_temp');

select * from finish();
rollback;

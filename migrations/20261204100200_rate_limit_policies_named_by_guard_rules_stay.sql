-- A rate limit policy a Data API guard rule names can no longer be dropped.
-- guard_rules.policy referenced the policy with ON DELETE CASCADE, so
-- drop_rate_limit_policy (say, to define the policy again) silently deleted
-- every rule that used it, and the guarded paths went unlimited; defining the
-- policy again brought no rule back. The reference is now ON DELETE RESTRICT
-- and drop_rate_limit_policy answers 2BP01, changing nothing, with a hint to
-- drop the rules first.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- The same reference, replaced in one transaction (nothing goes unguarded in
-- between); guard_rules holds the project's few rules, so validating it at
-- once holds its lock for no time worth splitting the migration for.
-- squawk-ignore ban-drop-constraint
alter table pgshield.guard_rules drop constraint guard_rules_policy_fkey;
alter table pgshield.guard_rules
  add constraint guard_rules_policy_fkey foreign key (policy)
  references pgshield.rate_limit_policies (name) on delete restrict not valid;
-- squawk-ignore constraint-missing-not-valid
alter table pgshield.guard_rules validate constraint guard_rules_policy_fkey;

-- Deletes a policy, its windows, endpoints, counters and state. Returns true
-- when it existed. A policy something else names (a Data API guard rule) is
-- refused, changing nothing: drop what names it first.
-- Callers: service_role. Errors: 22023 null name; 2BP01 still named.
create or replace function public.drop_rate_limit_policy(p_name text) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_policy pgshield.rate_limit_policies;
  v_table text;
begin
  if p_name is null then
    raise exception using errcode = '22023', message = 'p_name must not be null';
  end if;
  begin
    delete from pgshield.rate_limit_policies p where p.name = p_name returning * into v_policy;
  exception when foreign_key_violation then
    get stacked diagnostics v_table = table_name;
    raise exception using errcode = '2BP01',
      message = format('policy %L is still named by rows of pgshield.%s', p_name, v_table),
      hint = case when v_table = 'guard_rules'
                  then 'drop the guard rules that name it first: pgshield.guard_rule_list(), pgshield.drop_guard_rule(id)'
                  else 'delete the rows that name it first' end;
  end;
  if not found then
    return false;
  end if;
  delete from pgshield.rate_limit_policy_state s where s.policy = p_name;
  execute format('drop sequence if exists %s, %s', v_policy.allowed_counter, v_policy.denied_counter);
  return true;
end
$$;

revoke all on function public.drop_rate_limit_policy(text) from public, anon, authenticated, service_role;
grant execute on function public.drop_rate_limit_policy(text) to service_role;

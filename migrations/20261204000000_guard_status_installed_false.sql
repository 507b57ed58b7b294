-- guard: request_guard_status() says installed false, never null, when no
-- pre-request function is set (after uninstall_request_guard, or before
-- install): a client testing `installed === false` was told nothing.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- Whether the guard is installed, what it chains, its options and rules count.
-- Callers: service_role, the owner. Errors: 42501 others.
create or replace function pgshield.request_guard_status() returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_hook text := pgshield.guard_configured_hook();
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may read the guard status';
  end if;
  return (select jsonb_build_object(
            'installed', coalesce(v_hook = 'pgshield.request_guard', false),
            'pre_request', v_hook,
            'chained_function', o.chained_function,
            'allowed_headers', o.allowed_headers,
            'rules', (select count(*) from pgshield.guard_rules))
            from pgshield.guard_options o where o.id);
end
$$;

revoke all on function pgshield.request_guard_status() from public, anon, authenticated, service_role;
grant execute on function pgshield.request_guard_status() to service_role;

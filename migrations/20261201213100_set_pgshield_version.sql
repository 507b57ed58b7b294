-- pgshield 0.2.0: the version the pack reports.

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- The version of the installed pack.
-- Callers: authenticated, service_role. Errors: none.
create or replace function pgshield.version() returns text
language sql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$ select '0.2.0'::text $$;

revoke all on function pgshield.version() from public;
grant execute on function pgshield.version() to authenticated, service_role;

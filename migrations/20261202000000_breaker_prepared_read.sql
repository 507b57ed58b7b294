-- breaker: service_role may read the state columns of pgshield.breakers, so
-- that the Python client can answer the healthy path with one prepared plain
-- read (the functions' cost is mostly PL/pgSQL's per-call set-up). The read
-- calls acquire_breaker / release_breaker in the same statement for anything
-- but the healthy path. Settings, counters, leases and events stay private.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

revoke all on table pgshield.breakers from public, anon, authenticated, service_role;
grant select (name, state, generation, consecutive_failures, failure_rate, slow_call_rate)
  on table pgshield.breakers to service_role;

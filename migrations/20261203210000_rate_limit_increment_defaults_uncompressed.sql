-- rate limit: increment_rate_limit reads its default arguments uncompressed.
-- A call that leaves p_cost or p_algorithm out is given them from
-- pg_proc.proargdefaults each time the calling statement is planned (every
-- call for a client without prepared statements: pgbench's simple protocol,
-- poolers in transaction mode). The GRANT and REVOKE after the function was
-- created rewrote its catalog row and left that value compressed (pglz),
-- which each such call paid to decompress: about 10k of 536k server
-- instructions per call. The function is created again from its own
-- definition, after its grants: the row is written whole, the value stays
-- uncompressed, the grants stay as they are. Nothing else changes.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

do $$
begin
  execute pg_catalog.pg_get_functiondef(
    'public.increment_rate_limit(text, integer, integer, integer, text)'::pg_catalog.regprocedure);
end
$$;

-- jsonb: merge_jsonb_if on a row the caller may read but not update answers
-- PT404 whatever the hash it sent. With a stale hash it answered PT409 (the
-- current hash in the detail), and the retry with that hash then PT404: the
-- hash is now read FOR UPDATE, which row-level security judges by the UPDATE
-- policies too.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- The merge without the fast path, and the errors: resolves p_table, reads the
-- registry (as the caller), runs jsonb_merge_statement as dynamic SQL, and
-- when no row matched tells apart PT404 (no such row, or hidden) from PT409
-- (p_expected_hash, if given, no longer matches). Runs with the caller's rights.
-- Callers: merge_jsonb, merge_jsonb_if (when jsonb_merge_fast returned null).
-- Errors: 22023 when p_table is not a registered target; PT404;
-- PT409; and those of the update (22P02, 42501, 40001, 22023 from the merge).
create or replace function pgshield.jsonb_merge_dynamic(
  p_table text, p_id text, p_patch jsonb, p_path text[], p_expected_hash text
) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  v_t pgshield.jsonb_target;
  v_doc jsonb;
  v_rows bigint;
  v_current text;
begin
  select * into v_t from pgshield.jsonb_target t
   where t.relation = pgshield.jsonb_relation_of(p_table);
  if not found then
    raise exception using
      errcode = '22023',
      message = format('p_table %s is not a registered jsonb target',
                       coalesce(quote_literal(left(p_table, 200)), 'null')),
      hint = 'Register it with pgshield.register_jsonb_target(table, column, key_column); a name without a schema means public.';
  end if;

  execute pgshield.jsonb_merge_statement(v_t, false)
    into v_doc
    using p_id, p_patch, p_path, p_expected_hash;
  if v_doc is not null then  -- a merge never stores SQL NULL
    return v_doc;
  end if;

  if p_expected_hash is not null then
    -- FOR UPDATE: the row as the caller may update it (row-level security
    -- applies the UPDATE policies too), so a row it may only read is PT404
    -- whatever its hash, never a PT409 whose retry could only end in PT404.
    execute format('select pgshield.jsonb_hash(t.%I) from %s%s as t where t.%I operator(%I.%s) $1::%s for update',
                   v_t.column_name,
                   case when (select c.relkind from pg_class c where c.oid = v_t.relation) = 'r' then 'only ' else '' end,
                   v_t.relation, v_t.key_column,
                   v_t.key_operator_schema, v_t.key_operator, format_type(v_t.key_type, -1))
      into v_current
      using p_id;
    get diagnostics v_rows = row_count;
    if v_rows > 0 and v_current <> p_expected_hash then
      raise exception using
        errcode = 'PT409',
        message = format('the document of %s %I = %s changed since hash %s',
                         v_t.relation, v_t.key_column, quote_literal(left(p_id, 200)),
                         p_expected_hash),
        detail = 'current hash: ' || v_current,
        hint = 'Read the document again, rebuild the patch, and retry with the new hash.';
    end if;
  end if;
  raise exception using
    errcode = 'PT404',
    message = format('no row of %s has %I = %s', v_t.relation, v_t.key_column,
                     quote_literal(left(p_id, 200))),
    hint = 'The row does not exist, or row-level security hides it from you.';
end
$$;

revoke all on function pgshield.jsonb_merge_dynamic(text, text, jsonb, text[], text)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.jsonb_merge_dynamic(text, text, jsonb, text[], text)
  to authenticated, service_role;

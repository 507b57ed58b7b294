-- jsonb: a p_path whose subscripts do not start at 1 (PostgREST reads the
-- JSON string "[0:0]={q1}" as such an array) is refused with its own 22023
-- message instead of 'argument 1: key must not be null'.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- Raises the exact error for bad arguments of merge_jsonb / merge_jsonb_if
-- (they call it only when their one-line check fails, so it costs nothing on
-- the hot path). Callers: merge_jsonb, merge_jsonb_if.
-- Errors: 22023 naming the parameter.
create or replace function pgshield.jsonb_merge_check_args(
  p_id text, p_patch jsonb, p_path text[]
) returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_id is null then
    raise exception using errcode = '22023', message = 'p_id must not be null';
  end if;
  if p_patch is null then
    raise exception using
      errcode = '22023',
      message = 'p_patch must not be null',
      hint = 'Send a JSON value; the JSON null removes nothing at the root, it replaces the document.';
  end if;
  if p_path is null then
    raise exception using
      errcode = '22023',
      message = 'p_path must not be null',
      hint = 'Use ''{}'' (an empty array) for the document root.';
  end if;
  if array_ndims(p_path) > 1 or coalesce(array_length(p_path, 1), 0) > 32 then
    raise exception using
      errcode = '22023',
      message = 'p_path must be a flat array of at most 32 keys';
  end if;
  if array_lower(p_path, 1) <> 1 then
    raise exception using
      errcode = '22023',
      message = format('p_path must be numbered from 1, not from %s', array_lower(p_path, 1)),
      hint = 'Send the keys as a JSON array (["a", "b"]) or a plain {a,b} literal.';
  end if;
  if array_position(p_path, null) is not null then
    raise exception using
      errcode = '22023',
      message = format('p_path element %s is null', array_position(p_path, null));
  end if;
end
$$;

revoke all on function pgshield.jsonb_merge_check_args(text, jsonb, text[])
  from public, anon, authenticated, service_role;
grant execute on function pgshield.jsonb_merge_check_args(text, jsonb, text[])
  to authenticated, service_role;

-- Merges p_patch (RFC 7396) into the registered jsonb column of the row of
-- p_table whose key equals p_id, at p_path (missing objects are created), in
-- one update, and returns the whole merged document. Runs with the caller's
-- rights: table grants (SELECT and UPDATE) and row-level security decide.
-- The update is the target's static statement in jsonb_merge_fast; when that
-- has none for the table, or matched no row, jsonb_merge_dynamic reads the
-- registry and does the merge or raises the error.
-- Callers: authenticated, service_role.
-- Errors: 22023 bad input (unregistered p_table, null arguments, a non-object
-- on p_path, a patch nested deeper than 32); 22P02 when p_id does not fit the
-- key type; PT404 when no row has that key or row-level security hides it;
-- 42501 when the caller may not update the table; 40001 at REPEATABLE READ
-- when the row changed after the snapshot (retry the transaction).
create or replace function public.merge_jsonb(
  p_table text, p_id text, p_patch jsonb, p_path text[] default '{}'
) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  v_doc jsonb;
begin
  if p_id is null or p_patch is null or p_path is null or array_ndims(p_path) > 1
     or cardinality(p_path) > 32 or array_lower(p_path, 1) <> 1 or array_position(p_path, null) is not null then
    perform pgshield.jsonb_merge_check_args(p_id, p_patch, p_path);  -- raises the exact error
  end if;
  v_doc := pgshield.jsonb_merge_fast(p_id, p_patch, p_path, null, p_table);
  if v_doc is null then  -- a merge never stores SQL NULL: no fast path, or no row
    v_doc := pgshield.jsonb_merge_dynamic(p_table, p_id, p_patch, p_path, null);
  end if;
  return v_doc;
end
$$;

revoke all on function public.merge_jsonb(text, text, jsonb, text[])
  from public, anon, authenticated, service_role;
grant execute on function public.merge_jsonb(text, text, jsonb, text[])
  to authenticated, service_role;

-- Like merge_jsonb, but only when the row's whole document still has the hash
-- p_expected_hash (pgshield.jsonb_hash: md5 of the jsonb text form), checked
-- in the same update; otherwise nothing is written.
-- Callers: authenticated, service_role.
-- Errors: those of merge_jsonb; 22023 when p_expected_hash is not 32 hex
-- digits; PT409 when the document changed (the detail holds its current hash).
create or replace function public.merge_jsonb_if(
  p_table text, p_id text, p_patch jsonb, p_expected_hash text, p_path text[] default '{}'
) returns jsonb
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
  v_doc jsonb;
begin
  if p_id is null or p_patch is null or p_path is null or array_ndims(p_path) > 1
     or cardinality(p_path) > 32 or array_lower(p_path, 1) <> 1 or array_position(p_path, null) is not null then
    perform pgshield.jsonb_merge_check_args(p_id, p_patch, p_path);  -- raises the exact error
  end if;
  if p_expected_hash is null or p_expected_hash !~ '^[0-9a-fA-F]{32}$' then
    raise exception using
      errcode = '22023',
      message = 'p_expected_hash must be 32 hex digits',
      hint = 'Use pgshield.jsonb_hash(document), the md5 of the document''s jsonb text.';
  end if;
  v_doc := pgshield.jsonb_merge_fast(p_id, p_patch, p_path, lower(p_expected_hash), p_table);
  if v_doc is null then  -- no fast path, no row, or another hash: the errors tell which
    v_doc := pgshield.jsonb_merge_dynamic(p_table, p_id, p_patch, p_path, lower(p_expected_hash));
  end if;
  return v_doc;
end
$$;

revoke all on function public.merge_jsonb_if(text, text, jsonb, text, text[])
  from public, anon, authenticated, service_role;
grant execute on function public.merge_jsonb_if(text, text, jsonb, text, text[])
  to authenticated, service_role;

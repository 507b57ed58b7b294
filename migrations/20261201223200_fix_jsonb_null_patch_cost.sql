-- pgshield 0.2.0: merge patches with many nulls or objects cost linear time
-- (issue 9, item 3).
--
-- jsonb_merge_patch_level removed a patch's null members with one
-- `target - array_of_keys` and kept its plain members with
-- `patch - array_of_null_and_object_keys`. Postgres's `jsonb - text[]`
-- compares every key of the document with every key of the array, so a patch
-- of 65,000 `"k": null` members (1 MB) cost about 7 s per merge_jsonb call
-- (the same keys with values: about 0.1 s); 65,000 `"k": {}` members into a
-- large stored document took close to a minute (one `target -> key` per
-- member as well, each decompressing the document). Now a level with more than
-- 16 null or object members is one jsonb_object_agg over a full join of the
-- target's and the patch's members: linear in both. Levels with at most 16 run
-- as before. RFC 7396 results and the depth limit (22023) are unchanged; no
-- limit on the number of members is added.
-- Also: anon no longer holds EXECUTE on jsonb_merge_patch(_level) (anon has
-- usage on schema pgshield since 20261201223000, and merges nothing), and the
-- generated fast path without any registered target is a plain SQL null
-- (plpgsql_check: a plpgsql body that ignores all its parameters); it is
-- rebuilt at the end.

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- ------------------------------------------------------------ merge patch ----

-- One level of RFC 7396 (the recursion of jsonb_merge_patch). Only the keys the
-- patch names are touched, and the cost is linear in the sizes of target and
-- patch. A patch without nested objects or nulls (the common case) is a single
-- `||`. A patch with a few null or object members (at most 16) rebuilds the
-- target at most twice (one `-` for all removed keys, one `||` for all set
-- keys). With more, the level is one aggregate over a join of the target's and
-- the patch's members: Postgres's `jsonb - text[]` compares every key of the
-- document with every key of the array, so removing k keys from n costs n * k
-- (65,000 null members took seconds), while the join costs n + k.
-- p_level is the nesting level of p_patch (1 = the patch itself).
-- Callers: jsonb_merge_patch, jsonb_merge_patch_at (granted like
-- jsonb_merge_patch; pure).
-- Errors: 22023 when p_patch nests objects deeper than 32 levels.
create or replace function pgshield.jsonb_merge_patch_level(
  p_target jsonb, p_patch jsonb, p_level integer
) returns jsonb
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  v_special_count integer;
  v_special jsonb;
  v_item jsonb;
  v_key text;
  v_skip text[];
  v_del text[];
  v_keys text[];
  v_vals jsonb[];
  v_set jsonb;
begin
  if jsonb_typeof(p_patch) is distinct from 'object' then
    return p_patch;
  end if;
  if p_level > 32 then
    raise exception using
      errcode = '22023',
      message = 'p_patch nests objects deeper than 32 levels',
      hint = 'Flatten the patch, or merge the deep part with p_path pointing at it.';
  end if;

  -- The members that need more than a plain `||`: nulls and objects. The
  -- strict mode keeps arrays from being unwrapped into their elements.
  v_special_count := jsonb_array_length(jsonb_path_query_array(
    p_patch, 'strict $.* ? (@.type() == "object" || @.type() == "null")'));

  -- None: one `||`. The result is an object only when the target was one (an
  -- array or a scalar concatenated with an object gives an array), and
  -- testing the result rather than the target spares decompressing a large
  -- target twice; otherwise the merge into {} is the patch itself.
  if v_special_count = 0 then
    v_set := p_target || p_patch;
    return case when jsonb_typeof(v_set) = 'object' then v_set else p_patch end;
  end if;

  if jsonb_typeof(p_target) is distinct from 'object' then
    p_target := '{}'::jsonb;
  end if;

  -- Many null or object members: one pass over both documents. A member of the
  -- target the patch does not name stays; a null member of the patch drops
  -- its key; an object member merges into the target's value (or into {});
  -- any other member replaces it. The target is read once (no `->` per key: a
  -- compressed target would be decompressed every time).
  if v_special_count > 16 then
    return (
      select coalesce(jsonb_object_agg(
               coalesce(p.key, t.key),
               case when p.key is null then t.value
                    when jsonb_typeof(p.value) = 'object'
                    then pgshield.jsonb_merge_patch_level(t.value, p.value, p_level + 1)
                    else p.value end),
             '{}'::jsonb)
        from jsonb_each(p_target) as t
        full join jsonb_each(p_patch) as p on p.key = t.key
       where p.key is null or jsonb_typeof(p.value) <> 'null');
  end if;

  -- A few: one by one.
  v_special := jsonb_path_query_array(
    p_patch,
    'strict $.keyvalue() ? (@.value.type() == "object" || @.value.type() == "null")');

  for i in 0 .. jsonb_array_length(v_special) - 1 loop
    v_item := v_special -> i;
    v_key := v_item ->> 'key';
    v_skip := array_append(v_skip, v_key);
    if jsonb_typeof(v_item -> 'value') = 'null' then
      v_del := array_append(v_del, v_key);
    else
      v_keys := array_append(v_keys, v_key);
      v_vals := array_append(v_vals,
        pgshield.jsonb_merge_patch_level(p_target -> v_key, v_item -> 'value', p_level + 1));
    end if;
  end loop;

  -- The plain members, then the merged objects, then the removals.
  v_set := p_patch - v_skip;
  if v_keys is not null then
    for i in 1 .. cardinality(v_keys) loop
      v_set := v_set || jsonb_build_object(v_keys[i], v_vals[i]);
    end loop;
  end if;

  if v_del is not null then
    p_target := p_target - v_del;
  end if;
  return p_target || v_set;
end
$$;

revoke all on function pgshield.jsonb_merge_patch_level(jsonb, jsonb, integer)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.jsonb_merge_patch_level(jsonb, jsonb, integer)
  to authenticated, service_role;

-- RFC 7396 JSON Merge Patch: objects merge recursively, a JSON null in the
-- patch removes the key, any non-object patch (arrays included) replaces the
-- target, a non-object target under an object patch counts as {}.
-- SQL NULL target counts as {}; SQL NULL patch returns p_target unchanged
-- (so jsonb_merge_patch(null, null) is null).
-- Callers: authenticated, service_role, the owner (not anon: it merges nothing
-- anon may write).
-- Errors: 22023 when p_patch nests objects deeper than 32 levels.
create or replace function pgshield.jsonb_merge_patch(p_target jsonb, p_patch jsonb)
returns jsonb
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  v_doc jsonb;
begin
  if p_patch is null then
    return p_target;
  end if;
  -- The common case without a second call: an object patch with no object or
  -- null member is one `||` (see jsonb_merge_patch_level).
  if jsonb_typeof(p_patch) = 'object'
     and not jsonb_path_exists(p_patch, 'strict $.* ? (@.type() == "object" || @.type() == "null")') then
    v_doc := p_target || p_patch;
    return case when jsonb_typeof(v_doc) = 'object' then v_doc else p_patch end;
  end if;
  return pgshield.jsonb_merge_patch_level(p_target, p_patch, 1);
end
$$;

revoke all on function pgshield.jsonb_merge_patch(jsonb, jsonb)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.jsonb_merge_patch(jsonb, jsonb)
  to authenticated, service_role;

-- (Re)generates the fast path from the registry:
--   pgshield.jsonb_merge_fast(p_id text, p_patch jsonb, p_path text[],
--                             p_expected_hash text, p_table text) returns jsonb
-- security invoker, executable by authenticated and service_role. Its body has,
-- for each registered target whose catalog still fits, one branch
--   if p_table in ('<schema>.<table>'[, '<table>' when in public])
--      and to_regclass('<schema>.<table>') = <registered oid> then
--     <jsonb_merge_statement> into v_doc;
-- and it returns the new document, or null when no branch applies or no row
-- matched (callers then use jsonb_merge_dynamic). So the fast path takes
-- p_table spelled as the catalog spells it, with no parsing; other spellings
-- ('Assessments', '"public"."assessments"') resolve in jsonb_merge_dynamic. A
-- table dropped and created again, renamed, or restored from a dump (new
-- oids) takes the dynamic path until the next rebuild.
-- Why one generated function and not one per target: reaching a per-target
-- function needs a dynamic call (parsed and planned on every call), which
-- costs about as much as the planning the static SQL saves.
-- Called by register/unregister_jsonb_target, and once below.
-- Callers: the owner. Errors: none.
create or replace function pgshield.jsonb_merge_fast_rebuild()
returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_target pgshield.jsonb_target;
  v_spellings text;
  v_branches text := '';
begin
  for v_target in
    select t.*
      from pgshield.jsonb_target t
     cross join lateral pgshield.jsonb_target_check(t.relation, t.column_name, t.key_column) c
     where c.problem is null
     order by t.relation::oid
  loop
    -- The relation's text is schema.table, quoted where needed (the search
    -- path here is pinned); a table in public may also be named alone.
    select quote_literal(v_target.relation::text)
           || case when n.nspname = 'public'
                   then ', ' || quote_literal(quote_ident(c.relname)) else '' end
      into v_spellings
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.oid = v_target.relation;
    v_branches := v_branches || format(
      E'  %s p_table in (%s) and to_regclass(%L) = %s::oid then\n    %s\n      into v_doc;\n',
      case when v_branches = '' then 'if' else 'elsif' end,
      v_spellings, v_target.relation::text, v_target.relation::oid,
      pgshield.jsonb_merge_statement(v_target, true));
  end loop;
  if v_branches <> '' then
    v_branches := v_branches || E'  end if;\n';
  end if;

  if v_branches = '' then
    -- No target: a plain SQL null (a plpgsql body would ignore all its parameters).
    execute format(
      'create or replace function pgshield.jsonb_merge_fast('
      'p_id text, p_patch jsonb, p_path text[], p_expected_hash text, p_table text)'
      ' returns jsonb language sql volatile security invoker'
      ' set search_path = pg_catalog, pg_temp as %L',
      E'\n-- Generated by pgshield.jsonb_merge_fast_rebuild(): no registered target.\n'
      || E'select null::jsonb\n');
  else
    execute format(
      'create or replace function pgshield.jsonb_merge_fast('
      'p_id text, p_patch jsonb, p_path text[], p_expected_hash text, p_table text)'
      ' returns jsonb language plpgsql volatile security invoker'
      ' set search_path = pg_catalog, pg_temp as %L',
      E'\n-- Generated by pgshield.jsonb_merge_fast_rebuild() from pgshield.jsonb_target.\n'
      || E'declare\n  v_doc jsonb;\nbegin\n' || v_branches || E'  return v_doc;\nend\n');
  end if;
  revoke all on function pgshield.jsonb_merge_fast(text, jsonb, text[], text, text)
    from public, anon, authenticated, service_role;
  grant execute on function pgshield.jsonb_merge_fast(text, jsonb, text[], text, text)
    to authenticated, service_role;
  comment on function pgshield.jsonb_merge_fast(text, jsonb, text[], text, text) is
    'merge_jsonb''s fast path: one static update per registered target'
    ' (generated by pgshield.jsonb_merge_fast_rebuild()).';
end
$$;

revoke all on function pgshield.jsonb_merge_fast_rebuild()
  from public, anon, authenticated, service_role;

-- Regenerate the fast path with the new generator (no target: language sql).
select pgshield.jsonb_merge_fast_rebuild();

-- jsonb: a merge writes the row p_id names, and what a caller sends costs
-- what it should.
-- * The update cast p_id to the key's regtype as printed: bpchar prints as
--   "character", which a cast reads as character(1), so for a char(n) key
--   p_id 'XMAS24' matched the row 'X' (another user's row for service_role;
--   PT404 under RLS), and a bit(n) key matched nothing. The type is now
--   format_type(key_type, -1) (bpchar, "bit").
-- * A plain table is updated ONLY: its inheritance children are other tables
--   whose grants and policies Postgres does not check through the parent.
-- * jsonb_relation_of refuses a p_table longer than any table name before
--   parsing it (a run of doubled quotes cost quadratic time: 400 KB took
--   8.7 s), parses it once, and looks it up in the catalog (to_regclass
--   answered 42501 for a schema the caller may not use, telling existing
--   schemas from missing ones).
-- * jsonb_merge_patch_level keeps no copy of a level's whole sub-patch across
--   its recursion (a deep patch peaked at about 140 times its size).
-- The fast path is generated again from the registry at the end.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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

  -- A few: one by one. Only their keys are collected, and each value is taken
  -- once, for its own merge: a copy of every level's sub-patch held across
  -- the recursion multiplied a deep patch's memory by about 4 per level (an
  -- 8 MB string under 32 objects peaked at 1.2 GB).
  v_special := jsonb_path_query_array(
    p_patch,
    'strict $.keyvalue() ? (@.value.type() == "object" || @.value.type() == "null").key');

  for i in 0 .. jsonb_array_length(v_special) - 1 loop
    v_key := v_special ->> i;
    v_skip := array_append(v_skip, v_key);
    v_item := p_patch -> v_key;
    if jsonb_typeof(v_item) = 'null' then
      v_del := array_append(v_del, v_key);
    else
      v_keys := array_append(v_keys, v_key);
      v_vals := array_append(v_vals, pgshield.jsonb_merge_patch_level(p_target -> v_key, v_item, p_level + 1));
    end if;
    v_item := null;
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

-- The update for a target. Its parameters: $1 p_id (cast to the key's type,
-- compared with the key index's equality), $2 p_patch, $3 p_path, $4 the
-- expected jsonb_hash of the whole document (null: no check). The new value is
-- jsonb_merge_patch_at(doc, p_path, p_patch). With p_inline (for the static
-- SQL of the fast path) the common cases need no function call, so no per-call
-- setup: an object patch with no object or null member, at the root or one key
-- deep, into an object (or SQL NULL) document, is `doc || patch` at the root
-- and `doc || {key: leaf || patch}` one key deep (`patch` itself when the leaf
-- is not an object). Without it (dynamic SQL, parsed and planned per call)
-- the shorter text is cheaper. It returns the new document, and no row when
-- the key matches none (or row-level security hides it).
-- Identifiers only through %I, regclass output and format_type(key_type, -1)
-- (the type without a modifier: a regtype prints bpchar as "character",
-- which a cast reads as character(1), so p_id 'XMAS24' matched the row 'X');
-- the operator name is operator characters only (a check on the registry). A
-- plain table is updated ONLY: its inheritance children are other tables,
-- with their own grants and policies, that Postgres would not check.
-- Callers: jsonb_merge_fast_rebuild, jsonb_merge_dynamic. Errors: none.
create or replace function pgshield.jsonb_merge_statement(
  p_target pgshield.jsonb_target, p_inline boolean
) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
  return format(
    'update %8$s%1$s as t set %2$I = %7$s'
    ' where t.%3$I operator(%4$I.%5$s) $1::%6$s'
    ' and ($4 is null or pgshield.jsonb_hash(t.%2$I) = $4)'
    ' returning t.%2$I',
    p_target.relation, p_target.column_name, p_target.key_column,
    p_target.key_operator_schema, p_target.key_operator, format_type(p_target.key_type, -1),
    case when p_inline then format(
      'case'
      ' when cardinality($3) <= 1 and jsonb_typeof($2) = ''object'''
      ' and not jsonb_path_exists($2, ''strict $.* ? (@.type() == "object" || @.type() == "null")'')'
      ' and (t.%1$I is null or jsonb_typeof(t.%1$I) = ''object'')'
      ' then coalesce(t.%1$I, ''{}'') || case when cardinality($3) = 0 then $2'
      ' else jsonb_build_object($3[1], case when jsonb_typeof(t.%1$I -> $3[1]) = ''object'''
      ' then (t.%1$I -> $3[1]) || $2 else $2 end) end'
      ' else pgshield.jsonb_merge_patch_at(t.%1$I, $3, $2) end',
      p_target.column_name)
    else format('pgshield.jsonb_merge_patch_at(t.%I, $3, $2)', p_target.column_name)
    end,
    case when (select c.relkind from pg_class c where c.oid = p_target.relation) = 'r' then 'only ' else '' end);
end
$$;

revoke all on function pgshield.jsonb_merge_statement(pgshield.jsonb_target, boolean)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.jsonb_merge_statement(pgshield.jsonb_target, boolean)
  to authenticated, service_role;

-- Resolves p_table ('table' = public.table, or 'schema.table'; identifier
-- rules: unquoted names fold to lower case, "Quoted" ones keep theirs) to a
-- table, or null. p_table is only ever compared with catalog names, never
-- turned into SQL: it is parsed only when it has the shape of a (qualified)
-- identifier of at most the longest length a table name can have (so
-- parse_ident never raises, and never parses megabytes), then looked up in
-- pg_class by schema and name (no search_path involved).
-- Callers: jsonb_merge_dynamic. Errors: none.
create or replace function pgshield.jsonb_relation_of(p_table text)
returns regclass
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_parts text[];
begin
  -- No table name is longer: two quoted identifiers of 63 characters, each
  -- quote doubled, and the dot (parsing a longer run of doubled quotes costs
  -- time quadratic in its length).
  if length(p_table) > 2 * (2 * 63 + 2) + 1 then
    return null;
  end if;
  if p_table !~ ('^(?:[A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_$\u0080-\U0010FFFF]*|"(?:[^"]|"")+")'
                 '(?:\.(?:[A-Za-z_\u0080-\U0010FFFF][A-Za-z0-9_$\u0080-\U0010FFFF]*|"(?:[^"]|"")+"))?$') then
    return null;
  end if;
  v_parts := parse_ident(p_table);
  -- Through the catalog, which everyone may read: to_regclass answers 42501
  -- for a schema the caller may not use, which told existing schemas apart
  -- from missing ones. 'table' alone: element 0 does not exist, so public.
  return (select c.oid::regclass
            from pg_class c join pg_namespace n on n.oid = c.relnamespace
           where n.nspname = coalesce(v_parts[cardinality(v_parts) - 1], 'public')
             and c.relname = v_parts[cardinality(v_parts)]);
end
$$;

revoke all on function pgshield.jsonb_relation_of(text)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.jsonb_relation_of(text) to authenticated, service_role;

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
    execute format('select pgshield.jsonb_hash(t.%I) from %s%s as t where t.%I operator(%I.%s) $1::%s',
                   v_t.column_name,
                   case when (select c.relkind from pg_class c where c.oid = v_t.relation) = 'r' then 'only ' else '' end,
                   v_t.relation, v_t.key_column,
                   v_t.key_operator_schema, v_t.key_operator, format_type(v_t.key_type, -1))
      into v_current
      using p_id;
    get diagnostics v_rows = row_count;
    -- Seen with the expected hash but not updated: row-level security lets the
    -- caller read the row but not update it (PT404 below).
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

select pgshield.jsonb_merge_fast_rebuild();

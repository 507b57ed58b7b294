-- =============================================================================
-- pgshield jsonb: RFC 7396 JSON Merge Patch and atomic merges into registered
-- JSONB columns.
--
-- The lost-update bug: two requests read a document, each merges its own key in
-- application code and writes the whole document back; one change is lost. Here
-- the merge happens inside one `update`, so concurrent merges of different keys
-- all survive (READ COMMITTED re-evaluates the merge on the newest row version).
--
-- Limits: a patch may nest objects at most 32 levels deep (objects inside arrays
-- are values and do not count); p_path has at most 32 elements.
--
-- Speed: registering a target regenerates pgshield.jsonb_merge_fast, which
-- holds one static update per registered target (Postgres plans static SQL
-- once per session, dynamic SQL on every call); merge_jsonb calls it, and runs
-- the same statement as dynamic SQL only for a table it has no branch for.
-- Applied after core, inside the migration's transaction.
-- =============================================================================

-- Fail fast instead of queueing behind a long lock (scoped to the transaction).
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

-- Merges p_patch into the value at p_path inside p_target: the value there
-- becomes jsonb_merge_patch(value, p_patch) (so a JSON null p_patch stores
-- JSON null; to delete a key, patch its parent with {"key": null}). Missing
-- objects along the path are created; SQL NULL p_target counts as {}.
-- Callers: the merge statement (jsonb_merge_statement), inside its update.
-- Errors: 22023 when the document or a value on the path (before the last
-- element) exists and is not an object; 22023 for a too deep p_patch.
create or replace function pgshield.jsonb_merge_patch_at(
  p_target jsonb, p_path text[], p_patch jsonb
) returns jsonb
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
declare
  v_depth integer := coalesce(array_length(p_path, 1), 0);
  v_nodes jsonb[];
  v_node jsonb := coalesce(p_target, '{}'::jsonb);
  v_doc jsonb;
begin
  if v_depth = 0 then
    return pgshield.jsonb_merge_patch(p_target, p_patch);
  end if;

  -- Walk down: every node that holds a path element must be an object.
  for i in 1 .. v_depth loop
    if v_node is null then
      v_node := '{}'::jsonb;
    elsif jsonb_typeof(v_node) <> 'object' then
      raise exception using
        errcode = '22023',
        message = case when i = 1
          then format('p_path needs an object document, but the document is a %s',
                      jsonb_typeof(v_node))
          else format('p_path element %s (%s) leads to a %s, not an object',
                      i - 1, quote_literal(left(p_path[i - 1], 200)), jsonb_typeof(v_node))
          end,
        hint = 'merge_jsonb creates missing objects on the path but never replaces a value that is not an object.';
    end if;
    v_nodes[i] := v_node;
    v_node := v_node -> p_path[i];
  end loop;

  -- Merge at the leaf (p_patch is never SQL NULL here: the RPCs refuse it),
  -- then rebuild only the objects on the path.
  v_doc := pgshield.jsonb_merge_patch_level(v_node, p_patch, 1);
  for i in reverse v_depth .. 1 loop
    v_doc := v_nodes[i] || jsonb_build_object(p_path[i], v_doc);
  end loop;
  return v_doc;
end
$$;

revoke all on function pgshield.jsonb_merge_patch_at(jsonb, text[], jsonb)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.jsonb_merge_patch_at(jsonb, text[], jsonb)
  to authenticated, service_role;

-- The version of a document for optimistic merges: the md5 of its jsonb text
-- form (hex, 32 characters). jsonb prints one canonical text per value, so
-- equal documents have equal hashes. SQL NULL hashes like {} (both merge alike).
-- PL/pgSQL rather than SQL: with its pinned search_path a SQL function is never
-- inlined, and a call from inside an update would be planned on every call.
-- Callers: authenticated, service_role. Errors: none.
create or replace function pgshield.jsonb_hash(p_doc jsonb) returns text
language plpgsql immutable parallel safe
set search_path = pg_catalog, pg_temp
as $$
begin
  return md5(coalesce(p_doc, '{}'::jsonb)::text);
end
$$;

revoke all on function pgshield.jsonb_hash(jsonb)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.jsonb_hash(jsonb) to authenticated, service_role;

-- --------------------------------------------------------------- registry ----
-- One row per table that merge_jsonb may write: which jsonb column, and which
-- unique column identifies a row. The table is stored by oid (renames keep
-- working); columns and operators by name, so a dump and restore keeps it valid.
--
-- Readable by authenticated and service_role: merge_jsonb runs with the
-- caller's rights and reads it directly (its content is table and column
-- names, which PostgREST already publishes in its OpenAPI schema). Written only
-- by register/unregister_jsonb_target (security definer: service_role, owner).

create table if not exists pgshield.jsonb_target (
  relation regclass primary key,
  column_name name not null,
  key_column name not null,
  -- From the key's unique index at registration, so that a merge needs no
  -- catalog search: the type p_id is cast to and the equality operator. The
  -- operator's name is written into the update as operator(schema.op), so it
  -- may hold operator characters only.
  key_type regtype not null,
  key_operator_schema name not null,
  key_operator name not null check (key_operator ~ '^[-+*/<>=~!@#%^&|`?]+$'),
  registered_at timestamptz not null default pgshield.now()
);
comment on table pgshield.jsonb_target is
  'Tables whose jsonb column merge_jsonb may write (one column per table).';
alter table pgshield.jsonb_target enable row level security;
revoke all on table pgshield.jsonb_target from public, anon, authenticated, service_role;
grant select on table pgshield.jsonb_target to authenticated, service_role;
create policy jsonb_target_read on pgshield.jsonb_target
  for select to authenticated, service_role using (true);

-- Checks a target against the catalog as it is now and returns what an update
-- needs: the key's cast type and equality operator come from the key's unique
-- btree index (so the update uses that index and its equality, whatever the
-- key type: uuid, bigint, text, citext, an enum), and problem is null when the
-- target is usable, else why not.
-- Callers: pack functions (runs as its caller; the catalog is readable).
-- Errors: none (problems are returned).
create or replace function pgshield.jsonb_target_check(
  p_relation regclass, p_column name, p_key_column name,
  out key_type regtype, out key_operator_schema name, out key_operator name,
  out problem text
) returns record
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_kind "char";
  v_persistence "char";
  v_col_type regtype;
  v_col_generated "char";
  v_key_num smallint;
  v_key_type regtype;
begin
  select c.relkind, c.relpersistence into v_kind, v_persistence
    from pg_class c where c.oid = p_relation;
  if not found then
    problem := format('table %s no longer exists', p_relation);
    return;
  end if;
  if v_kind not in ('r', 'p') or v_persistence = 't' then
    problem := format('%s is not a permanent table', p_relation);
    return;
  end if;

  select a.atttypid, a.attgenerated into v_col_type, v_col_generated
    from pg_attribute a
   where a.attrelid = p_relation and a.attname = p_column
     and a.attnum > 0 and not a.attisdropped;
  if not found then
    problem := format('column %I does not exist in %s', p_column, p_relation);
    return;
  end if;
  if v_col_type <> 'jsonb'::regtype then
    problem := format('column %I of %s is %s, not jsonb', p_column, p_relation, v_col_type);
    return;
  end if;
  if v_col_generated <> '' then
    problem := format('column %I of %s is generated', p_column, p_relation);
    return;
  end if;

  select a.attnum, a.atttypid into v_key_num, v_key_type
    from pg_attribute a
   where a.attrelid = p_relation and a.attname = p_key_column
     and a.attnum > 0 and not a.attisdropped;
  if not found then
    problem := format('key column %I does not exist in %s', p_key_column, p_relation);
    return;
  end if;
  if p_key_column = p_column then
    problem := format('key column %I is the jsonb column itself', p_key_column);
    return;
  end if;

  -- A unique, non-partial btree index on the key column alone; its operator
  -- class gives the equality operator (btree strategy 3) and its input type
  -- (the column's own type for polymorphic classes such as enum_ops).
  select case when t.typtype = 'p' then v_key_type else oc.opcintype::regtype end,
         n.nspname, o.oprname
    into key_type, key_operator_schema, key_operator
    from pg_index i
    join pg_opclass oc on oc.oid = i.indclass[0]
    join pg_type t on t.oid = oc.opcintype
    join pg_amop ao on ao.amopfamily = oc.opcfamily and ao.amopstrategy = 3
                   and ao.amoplefttype = oc.opcintype and ao.amoprighttype = oc.opcintype
                   and ao.amopmethod = oc.opcmethod
    join pg_operator o on o.oid = ao.amopopr
    join pg_namespace n on n.oid = o.oprnamespace
    join pg_am am on am.oid = oc.opcmethod and am.amname = 'btree'
   where i.indrelid = p_relation and i.indisunique and i.indnkeyatts = 1
     and i.indkey[0] = v_key_num and i.indpred is null
   order by i.indisprimary desc, i.indexrelid
   limit 1;
  if not found then
    problem := format('key column %I of %s has no unique index of its own', p_key_column, p_relation);
  end if;
end
$$;

revoke all on function pgshield.jsonb_target_check(regclass, name, name)
  from public, anon, authenticated, service_role;

-- ------------------------------------------------------ merge statement ----
-- merge_jsonb and merge_jsonb_if write with one update per call, built here
-- and used in two ways: compiled into pgshield.jsonb_merge_fast, which holds
-- one static update per registered target (Postgres plans static SQL once per
-- session), and run as dynamic SQL by jsonb_merge_dynamic (planned on every
-- call) when the fast path has no statement for the table. One builder, so
-- both behave alike (20_jsonb_fast_path.sql runs the same merges through each).

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

-- (Re)generates the fast path from the registry:
--   pgshield.jsonb_merge_fast(p_id text, p_patch jsonb, p_path text[],
--                             p_expected_hash text, p_table text) returns jsonb
-- security invoker, executable by authenticated and service_role. Its body has,
-- for each registered target whose catalog still fits, one branch
--   if p_table in ('<schema>.<table>'[, '<table>' when in public])
--      and has_schema_privilege(<its schema's oid>, 'USAGE')
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
  v_schema oid;
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
    -- path here is pinned); a table in public may also be named alone. A
    -- caller without USAGE on its schema takes the dynamic path, which
    -- answers 22023 as for any name it may not use (to_regclass would raise
    -- 42501 and so tell that the schema exists).
    select quote_literal(v_target.relation::text)
           || case when n.nspname = 'public'
                   then ', ' || quote_literal(quote_ident(c.relname)) else '' end,
           c.relnamespace
      into v_spellings, v_schema
      from pg_class c join pg_namespace n on n.oid = c.relnamespace
     where c.oid = v_target.relation;
    v_branches := v_branches || format(
      E'  %s p_table in (%s) and has_schema_privilege(%s::oid, \'USAGE\')\n'
      || E'     and to_regclass(%L) = %s::oid then\n    %s\n      into v_doc;\n',
      case when v_branches = '' then 'if' else 'elsif' end,
      v_spellings, v_schema::oid, v_target.relation::text, v_target.relation::oid,
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

-- The fast path as the registry holds it now (on a new install: no branches;
-- applied again: the registered targets keep theirs).
select pgshield.jsonb_merge_fast_rebuild();

-- -------------------------------------------------------- registration ----

-- Registers p_column of p_table as a merge target keyed by p_key_column (a
-- column with a primary key or unique index of its own) and adds it to the
-- fast path (jsonb_merge_fast_rebuild). Registering the same target again
-- refreshes the key's cast type and equality operator and the fast path (do
-- it after changing the key's type or index, renaming the table, or restoring
-- a dump); returns true when it was new. Registrations run one at a time (a
-- lock on the registry that merges do not wait for).
-- Callers: service_role and the owner (migrations).
-- Errors: 22023 bad table/column/key; 23505 when p_table is already registered
-- with another column or key; 42501 for any other caller.
create or replace function pgshield.register_jsonb_target(
  p_table regclass, p_column name, p_key_column name default 'id'
) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_check record;
  v_old pgshield.jsonb_target;
  v_new boolean := false;
begin
  if not pgshield.caller_is_trusted() then
    raise exception using
      errcode = '42501',
      message = 'only service_role or the owner may register jsonb targets';
  end if;
  if p_table is null or p_column is null or p_key_column is null then
    raise exception using
      errcode = '22023',
      message = 'p_table, p_column and p_key_column must not be null';
  end if;

  select * into v_check
    from pgshield.jsonb_target_check(p_table, p_column, p_key_column);
  if v_check.problem is not null then
    raise exception using
      errcode = '22023',
      message = 'cannot register: ' || v_check.problem,
      hint = 'p_column must be a jsonb column; p_key_column must have a primary key or unique index of its own.';
  end if;

  -- One registration at a time, so that each rebuild sees all the others.
  lock table pgshield.jsonb_target in share row exclusive mode;
  select * into v_old from pgshield.jsonb_target t where t.relation = p_table;
  if found then
    if v_old.column_name <> p_column or v_old.key_column <> p_key_column then
      raise exception using
        errcode = '23505',
        message = format('%s is already registered with column %I keyed by %I',
                         p_table, v_old.column_name, v_old.key_column),
        hint = 'Call pgshield.unregister_jsonb_target first; a table has one merge target.';
    end if;
    -- Same target: refresh what was derived from the key's index.
    update pgshield.jsonb_target as t
       set key_type = v_check.key_type,
           key_operator_schema = v_check.key_operator_schema,
           key_operator = v_check.key_operator
     where t.relation = p_table;
  else
    insert into pgshield.jsonb_target as t
      (relation, column_name, key_column, key_type, key_operator_schema, key_operator,
       registered_at)
    values (p_table, p_column, p_key_column, v_check.key_type, v_check.key_operator_schema,
            v_check.key_operator, pgshield.now());
    v_new := true;
  end if;
  perform pgshield.jsonb_merge_fast_rebuild();
  return v_new;
end
$$;

revoke all on function pgshield.register_jsonb_target(regclass, name, name)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.register_jsonb_target(regclass, name, name)
  to service_role;

-- Removes p_table from the merge targets (and from the fast path); returns
-- whether it was registered.
-- Callers: service_role and the owner. Errors: 22023 null p_table; 42501.
create or replace function pgshield.unregister_jsonb_target(p_table regclass)
returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using
      errcode = '42501',
      message = 'only service_role or the owner may unregister jsonb targets';
  end if;
  if p_table is null then
    raise exception using errcode = '22023', message = 'p_table must not be null';
  end if;
  lock table pgshield.jsonb_target in share row exclusive mode;
  delete from pgshield.jsonb_target t where t.relation = p_table;
  if not found then
    return false;
  end if;
  perform pgshield.jsonb_merge_fast_rebuild();
  return true;
end
$$;

revoke all on function pgshield.unregister_jsonb_target(regclass)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.unregister_jsonb_target(regclass) to service_role;

-- The registered targets, with problem set when the catalog no longer fits
-- (a dropped or retyped column, a dropped table or unique index).
-- Callers: service_role and the owner. Errors: 42501 for any other caller.
create or replace function pgshield.list_jsonb_targets()
returns table (
  table_name text, column_name name, key_column name,
  registered_at timestamptz, problem text
)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using
      errcode = '42501',
      message = 'only service_role or the owner may list jsonb targets';
  end if;
  return query
    select t.relation::text, t.column_name, t.key_column, t.registered_at,
           coalesce(c.problem,
                    case when (c.key_type, c.key_operator_schema, c.key_operator)
                              is distinct from (t.key_type, t.key_operator_schema, t.key_operator)
                         then 'the key''s type or unique index changed: register it again'
                    end)
      from pgshield.jsonb_target t
     cross join lateral pgshield.jsonb_target_check(t.relation, t.column_name, t.key_column) c
     order by t.relation::text;
end
$$;

revoke all on function pgshield.list_jsonb_targets()
  from public, anon, authenticated, service_role;
grant execute on function pgshield.list_jsonb_targets() to service_role;

-- ------------------------------------------------------------ RPC helpers ----

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
  -- A registered table in a schema the caller may not use is not one to
  -- them: 22023 like any other name, never 42501 from the update (which
  -- would tell that the schema and its registered table exist).
  select * into v_t from pgshield.jsonb_target t
   where t.relation = pgshield.jsonb_relation_of(p_table)
     and has_schema_privilege((select c.relnamespace from pg_class c where c.oid = t.relation), 'USAGE');
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

-- ------------------------------------------------------------------- RPCs ----

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

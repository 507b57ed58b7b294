-- breaker: drop_breaker takes the breaker's row before anything else, and
-- creations at the max_breakers cap see a breaker created while they waited.
-- * drop_breaker read the generation for the tombstone without the row lock:
--   a state change holding the row raised the generation after that read, so
--   a breaker created again under the name started at a generation the
--   dropped one had already handed permits out in (a permit from before the
--   drop counted on the new breaker); and it deleted the counter buckets
--   before the row while release_breaker locks the row, then its bucket:
--   40P01 under traffic.
-- * breaker_get: callers that waited on the settings row behind the creation
--   of the same name, with one slot left under max_breakers, got PT409 for a
--   breaker that existed.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- The breaker p_name, created with the defaults when missing and the
-- installation auto-creates (up to max_breakers), else PT404.
-- Callers: pack functions. Errors: PT404 unknown breaker; PT409 too many breakers.
create or replace function pgshield.breaker_get(p_name text, p_create boolean) returns pgshield.breakers
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_b pgshield.breakers;
  v_settings pgshield.breaker_settings;
begin
  select * into v_b from pgshield.breakers b where b.name = p_name;
  if found then
    return v_b;
  end if;
  select * into v_settings from pgshield.breaker_settings s where s.id;
  if not p_create or not coalesce(v_settings.auto_create, true) then
    raise exception using errcode = 'PT404', message = format('unknown breaker %L', p_name),
      hint = 'create it with configure_breaker(), or turn auto_create on with pgshield.set_breaker_settings()';
  end if;
  -- Creations take turns on the settings row, so concurrent ones cannot pass the cap together.
  perform 1 from pgshield.breaker_settings s where s.id for update;
  -- A caller that waited here behind the creation of the same name uses that
  -- breaker (the cap counts it already).
  select * into v_b from pgshield.breakers b where b.name = p_name;
  if found then
    return v_b;
  end if;
  if (select count(*) from pgshield.breakers) >= coalesce(v_settings.max_breakers, 1000) then
    raise exception using errcode = 'PT409',
      message = format('breaker %L not created: there are already %s breakers', p_name, v_settings.max_breakers),
      hint = 'breaker names must not come from user input; raise max_breakers with pgshield.set_breaker_settings()';
  end if;
  insert into pgshield.breakers (name, changed_at, generation)
  values (p_name, pgshield.now(),
          coalesce((select t.generation + 1 from pgshield.breaker_tombstones t where t.name = p_name), 1))
  on conflict (name) do nothing;
  select * into v_b from pgshield.breakers b where b.name = p_name;
  return v_b;
end
$$;

revoke all on function pgshield.breaker_get(text, boolean) from public, anon, authenticated, service_role;

-- Forgets a breaker: its row, leases, counters and events (its last
-- generation is kept as a tombstone). Returns whether it existed. Permits
-- handed out before are then refused (PT404), and stay stale if a breaker of
-- the same name is created again.
-- Callers: service_role. Errors: 22023 bad name; 42501 other roles.
create or replace function public.drop_breaker(p_name text) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_generation bigint;
begin
  perform pgshield.breaker_check_caller();
  perform pgshield.breaker_check_name(p_name);
  -- The row first, as every state change takes it before its buckets and
  -- events: the tombstone holds the generation of the last change committed
  -- before the drop (a change that held the row while it was read unlocked
  -- raised it afterwards, and a breaker created again reused that
  -- generation), and a drop never deadlocks with release_breaker.
  select b.generation into v_generation from pgshield.breakers b where b.name = p_name for update;
  delete from pgshield.breaker_buckets k where k.name = p_name;
  delete from pgshield.breaker_events e where e.name = p_name;
  if v_generation is null then
    return false;
  end if;
  insert into pgshield.breaker_tombstones as t (name, generation)
  values (p_name, v_generation)
  on conflict (name) do update set generation = greatest(t.generation, excluded.generation), dropped_at = now();
  delete from pgshield.breakers b where b.name = p_name;
  return true;
end
$$;

revoke all on function public.drop_breaker(text) from public, anon, authenticated, service_role;
grant execute on function public.drop_breaker(text) to service_role;

-- breaker: a dropped breaker's last generation is kept (tombstone), so one
-- created again under the same name never moves back in generation, and
-- auto-creations take turns on the settings row so max_breakers holds.
--
-- This change was first written into 20261201224000_create_breaker.sql after
-- that file had landed; the file is restored and the change lives here.
-- Idempotent: a database that applied the edited file already has the table,
-- and these functions are replaced by the same definitions.
-- (configure_breaker's use of the tombstones is in 20261201231000.)

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- ------------------------------------------------------------- tombstones ----
-- The last generation of every dropped breaker. A breaker created again under
-- the same name starts after it, so a permit handed out before the drop can
-- never pass for a current one (generations never move back). Names come
-- from service_role only; a tombstone is a few bytes and is kept.

create table if not exists pgshield.breaker_tombstones (
  name text primary key,
  generation bigint not null
    constraint breaker_tombstones_generation_check check (generation between 1 and 2147483647),
  dropped_at timestamptz not null default now()
);
comment on table pgshield.breaker_tombstones is
  'The last generation of each dropped breaker: a new breaker of that name starts after it.';
alter table pgshield.breaker_tombstones enable row level security;
revoke all on table pgshield.breaker_tombstones from public, anon, authenticated, service_role;

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
begin
  perform pgshield.breaker_check_caller();
  perform pgshield.breaker_check_name(p_name);
  delete from pgshield.breaker_buckets k where k.name = p_name;
  delete from pgshield.breaker_events e where e.name = p_name;
  insert into pgshield.breaker_tombstones as t (name, generation)
  select b.name, b.generation from pgshield.breakers b where b.name = p_name
  on conflict (name) do update set generation = greatest(t.generation, excluded.generation), dropped_at = now();
  delete from pgshield.breakers b where b.name = p_name;
  return found;
end
$$;

revoke all on function public.drop_breaker(text) from public, anon, authenticated, service_role;
grant execute on function public.drop_breaker(text) to service_role;

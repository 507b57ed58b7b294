-- =============================================================================
-- pgshield breaker: circuit breakers whose state is one row shared by every
-- instance of an application.
--
-- Entry points (schema public; security definer, each checks its caller; anon
-- and authenticated may call none of them, and per-breaker grants to them are
-- not supported: 42501):
--   acquire_breaker     may a call go through? a permit to hand back      service_role
--   release_breaker     the outcome of a permitted call                   service_role
--   configure_breaker   create or replace a breaker's settings            service_role
--   reset_breaker       back to closed, counters and backoff cleared      service_role
--   force_breaker       forced_open or disabled until reset               service_role
--   drop_breaker        forget a breaker, its counters and events         service_role
-- Internals (schema pgshield): the settings row, the breakers table (one row
-- per breaker: configuration and state), trial leases, per-second counter
-- buckets, the events table, the status view, breaker_events_recent(),
-- breaker_cleanup() and breaker_settings() / set_breaker_settings().
--
-- States: closed (calls go through; outcomes counted), open (calls refused
-- until open_until), half_open (a few trial calls, each holding a lease on one
-- trial slot), forced_open (refused until reset), disabled (every call goes
-- through, nothing counted, until reset). generation is bumped on every state
-- change; a permit carries the generation it was issued in, and an outcome
-- from an older generation never changes state.
--
-- Every state change inserts one row into pgshield.breaker_events and sends
-- pg_notify('pgshield_breaker', <the event as JSON>) in the transaction that
-- made it. Time is always pgshield.now(), read after the row lock.
-- =============================================================================

-- The settings mirror the API's integer parameters and are bounded by checks.
-- squawk-ignore-file prefer-bigint-over-int

-- Applied in one transaction: never wait long for a lock on the user's database.
set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- --------------------------------------------------------------- settings ----
-- Per installation: whether acquire_breaker creates an unknown breaker with the
-- defaults (auto_create) or refuses it (PT404), how many breakers auto-creation
-- may make, and how long events are kept.

create table if not exists pgshield.breaker_settings (
  id boolean primary key default true
    constraint breaker_settings_id_check check (id),
  auto_create boolean not null default true,
  max_breakers integer not null default 1000
    constraint breaker_settings_max_check check (max_breakers between 1 and 1000000),
  event_retention_days integer not null default 30
    constraint breaker_settings_retention_check check (event_retention_days between 1 and 3650),
  updated_at timestamptz not null default now()
);
comment on table pgshield.breaker_settings is
  'Breaker settings of this installation. Edit with pgshield.set_breaker_settings().';
alter table pgshield.breaker_settings enable row level security;
revoke all on table pgshield.breaker_settings from public, anon, authenticated, service_role;
insert into pgshield.breaker_settings (id) values (true) on conflict (id) do nothing;

-- --------------------------------------------------------------- breakers ----
-- One row per breaker: its configuration, then its state. Nothing is indexed
-- but the name, and the closed-state hot path never writes the row: outcomes
-- are counted in breaker_buckets (successes only with a rate rule), and only
-- a failure (or a slow call, or a success after failures) locks the row.
--   failure_threshold  trip on this many consecutive failures (null: off)
--   failure_rate       trip when failures / calls >= this over window_seconds,
--                      with at least min_calls calls (null: off)
--   slow_call_ms / slow_call_rate  a call taking >= slow_call_ms is slow; trip
--                      when slow / calls >= slow_call_rate (with min_calls)
--   open_ms, backoff_factor, max_open_ms  the n-th consecutive open lasts
--                      least(open_ms * backoff_factor ^ (n - 1), max_open_ms)
--   half_open_permits, lease_ms  trial slots and how long a lease lasts
--   success_threshold  trial successes needed to close

create table if not exists pgshield.breakers (
  name text primary key
    constraint breakers_name_check check (name ~ '^[a-z0-9][a-z0-9_.:-]{0,62}$'),
  failure_threshold integer default 5
    constraint breakers_failure_threshold_check check (failure_threshold between 1 and 100000),
  failure_rate numeric
    constraint breakers_failure_rate_check check (failure_rate > 0 and failure_rate <= 1),
  min_calls integer not null default 10
    constraint breakers_min_calls_check check (min_calls between 1 and 1000000),
  window_seconds integer not null default 60
    constraint breakers_window_check check (window_seconds between 1 and 86400),
  slow_call_ms integer
    constraint breakers_slow_call_ms_check check (slow_call_ms between 1 and 86400000),
  slow_call_rate numeric
    constraint breakers_slow_call_rate_check check (slow_call_rate > 0 and slow_call_rate <= 1),
  open_ms integer not null default 30000
    constraint breakers_open_ms_check check (open_ms between 1 and 86400000),
  backoff_factor numeric not null default 1
    constraint breakers_backoff_check check (backoff_factor between 1 and 10),
  max_open_ms integer not null default 30000
    constraint breakers_max_open_ms_check check (max_open_ms between 1 and 604800000),
  half_open_permits integer not null default 1
    constraint breakers_permits_check check (half_open_permits between 1 and 1000),
  lease_ms integer not null default 30000
    constraint breakers_lease_ms_check check (lease_ms between 1 and 86400000),
  success_threshold integer not null default 2
    constraint breakers_success_threshold_check check (success_threshold between 1 and 1000),
  state text not null default 'closed'
    constraint breakers_state_check
    check (state in ('closed', 'open', 'half_open', 'forced_open', 'disabled')),
  generation bigint not null default 1
    constraint breakers_generation_check check (generation between 1 and 2147483647),
  changed_at timestamptz not null,
  reason text not null default 'created',
  open_until timestamptz,
  opens integer not null default 0,
  consecutive_failures integer not null default 0,
  trial_successes integer not null default 0,
  leases_issued bigint not null default 0
    constraint breakers_leases_check check (leases_issued between 0 and 4294967295),
  created_at timestamptz not null default now(),
  constraint breakers_open_check check (max_open_ms >= open_ms),
  constraint breakers_slow_check check ((slow_call_ms is null) = (slow_call_rate is null))
) with (fillfactor = 70);
comment on table pgshield.breakers is
  'Circuit breakers: one row per breaker, its configuration and state. Edit with public.configure_breaker().';
alter table pgshield.breakers enable row level security;
revoke all on table pgshield.breakers from public, anon, authenticated, service_role;
-- What the Python client's prepared read of the healthy path needs (see
-- python/pgshield/breaker/ops.py): service_role (which bypasses row-level
-- security) may read the state of a breaker, not its settings or history.
grant select (name, state, generation, consecutive_failures, failure_rate, slow_call_rate)
  on table pgshield.breakers to service_role;

-- Trial leases of a half-open breaker: one row per permit handed out in the
-- current generation, until it is released or expires_at passes.
create table if not exists pgshield.breaker_leases (
  name text not null references pgshield.breakers (name) on delete cascade,
  lease_no bigint not null,
  generation bigint not null,
  expires_at timestamptz not null,
  primary key (name, lease_no)
);
comment on table pgshield.breaker_leases is
  'Half-open trial leases: a permit holds a slot until it reports or expires_at passes.';
alter table pgshield.breaker_leases enable row level security;
revoke all on table pgshield.breaker_leases from public, anon, authenticated, service_role;

-- Outcomes per breaker, generation and step of its window (second: the
-- step's start; a step is 1 s up to a 1-minute window, ceil(window_seconds
-- / 60) s beyond, so a window holds at most 61 rows per backend), one row
-- per backend (shard = its process id) so that concurrent callers never
-- write the same row.
-- Successes are counted only for breakers with a rate rule. Unlogged: they are
-- statistics for the failure-rate rules, emptied after a crash.
create unlogged table if not exists pgshield.breaker_buckets (
  name text not null,
  generation bigint not null,
  second timestamptz not null,
  shard integer not null,
  calls integer not null default 0,
  failures integer not null default 0,
  slow integer not null default 0,
  primary key (name, generation, second, shard)
) with (fillfactor = 70);
comment on table pgshield.breaker_buckets is
  'Calls, failures and slow calls per breaker, generation, step of its window (1 s, or ceil(window / 60) s) and backend (successes only with a rate rule).';
alter table pgshield.breaker_buckets enable row level security;
revoke all on table pgshield.breaker_buckets from public, anon, authenticated, service_role;

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

-- ------------------------------------------------------------------ events ----
-- One row per state change, written by the transaction that made it.

create table if not exists pgshield.breaker_events (
  id bigint generated always as identity primary key,
  name text not null,
  at timestamptz not null,
  from_state text not null,
  to_state text not null,
  generation bigint not null,
  reason text not null,
  actor name not null
);
comment on table pgshield.breaker_events is
  'Every breaker state change, once each; also sent with pg_notify on channel pgshield_breaker.';
alter table pgshield.breaker_events enable row level security;
revoke all on table pgshield.breaker_events from public, anon, authenticated, service_role;
create index if not exists breaker_events_name_id on pgshield.breaker_events (name, id);

-- ---------------------------------------------------------- result types ----
-- In public, with the entry points that return them.

do $$
begin
  if to_regtype('public.breaker_decision') is null then
    create type public.breaker_decision as (
      allowed boolean,
      state text,
      generation bigint,
      permit bigint,
      retry_after_ms integer,
      name text
    );
  end if;
  if to_regtype('public.breaker_release_result') is null then
    create type public.breaker_release_result as (
      state text,
      generation bigint,
      changed boolean,
      counted boolean,
      name text
    );
  end if;
end
$$;

select pgshield.assert_pack_type('public.breaker_decision',
  'allowed boolean, state text, generation bigint, permit bigint, retry_after_ms integer, name text');
select pgshield.assert_pack_type('public.breaker_release_result',
  'state text, generation bigint, changed boolean, counted boolean, name text');

comment on type public.breaker_decision is
  'acquire_breaker: allowed, the state that answered, its generation, the permit to hand back (null when refused), retry_after_ms (0 when allowed, -1 until reset).';
comment on type public.breaker_release_result is
  'release_breaker: the state after the call, its generation, whether this call changed it, whether the outcome was counted.';

-- ---------------------------------------------------------------- helpers ----

-- Rejects a bad breaker name with 22023.
-- Callers: pack functions. Errors: 22023.
create or replace function pgshield.breaker_check_name(p_name text) returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_name is null or p_name !~ '^[a-z0-9][a-z0-9_.:-]{0,62}$' then
    raise exception using errcode = '22023',
      message = 'p_name must be 1 to 63 characters of a-z, 0-9, _ . : - (starting with a letter or digit)',
      hint = format('got %L', left(p_name, 80));
  end if;
end
$$;

revoke all on function pgshield.breaker_check_name(text) from public, anon, authenticated, service_role;

-- Rejects a manual reason that is null, empty or longer than 500 characters.
-- Callers: pack functions. Errors: 22023.
create or replace function pgshield.breaker_check_reason(p_reason text) returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_reason is null or length(btrim(p_reason)) not between 1 and 500 then
    raise exception using errcode = '22023', message = 'p_reason must be 1 to 500 characters',
      hint = 'say why, for the events log: e.g. ''provider incident #123''';
  end if;
end
$$;

revoke all on function pgshield.breaker_check_reason(text) from public, anon, authenticated, service_role;

-- Refuses callers other than service_role and the owner.
-- Callers: pack functions. Errors: 42501.
create or replace function pgshield.breaker_check_caller() returns void
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
  if not pgshield.caller_is_trusted() then
    raise exception using errcode = '42501', message = 'only service_role may use circuit breakers',
      hint = 'call breakers from server code; per-breaker grants to anon or authenticated are not supported';
  end if;
end
$$;

revoke all on function pgshield.breaker_check_caller() from public, anon, authenticated, service_role;

-- Milliseconds from p_now until p_until, rounded up (at least 1, at most
-- 2147483647): after exactly that wait the answer changes.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.breaker_ms_until(p_until timestamptz, p_now timestamptz) returns integer
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select least(greatest(ceil(extract(epoch from (p_until - p_now)) * 1000), 1), 2147483647)::integer
$$;

revoke all on function pgshield.breaker_ms_until(timestamptz, timestamptz)
  from public, anon, authenticated, service_role;

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
  if p_create and coalesce(v_settings.auto_create, true) then
    -- Creations take turns on the settings row, so concurrent ones cannot pass
    -- the cap together, and decide by the settings as they are once this call
    -- holds it (a change committed while it waited applies). The row is
    -- written, not only locked: under REPEATABLE READ a creation whose
    -- snapshot misses another fails with 40001 instead of counting from it.
    update pgshield.breaker_settings s set updated_at = s.updated_at where s.id
    returning s.* into v_settings;
  end if;
  if not p_create or not coalesce(v_settings.auto_create, true) then
    raise exception using errcode = 'PT404', message = format('unknown breaker %L', p_name),
      hint = 'create it with configure_breaker(), or turn auto_create on with pgshield.set_breaker_settings()';
  end if;
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

-- Moves the locked breaker p_b to p_to: a new generation, counters and leases
-- of the old state cleared, one event row and one notification. For open, the
-- open period follows the backoff rule. Returns the row as written.
-- Callers: pack functions, with the row locked. Errors: none.
create or replace function pgshield.breaker_transition(
  p_b pgshield.breakers, p_to text, p_reason text, p_now timestamptz
) returns pgshield.breakers
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_b pgshield.breakers;
  v_opens integer := case when p_to = 'open' then p_b.opens + 1
                          when p_to in ('closed', 'disabled') then 0 else p_b.opens end;
  v_open_ms numeric := 0;
begin
  if p_to = 'open' then
    v_open_ms := least(p_b.open_ms * power(p_b.backoff_factor, least(v_opens - 1, 64)), p_b.max_open_ms::numeric);
  end if;
  update pgshield.breakers b
     set state = p_to,
         generation = b.generation + 1,
         changed_at = p_now,
         reason = left(p_reason, 500),
         open_until = case when p_to = 'open' then p_now + round(v_open_ms)::bigint * interval '1 millisecond' end,
         opens = v_opens,
         consecutive_failures = 0,
         trial_successes = 0,
         leases_issued = 0
   where b.name = p_b.name
  returning * into v_b;
  delete from pgshield.breaker_leases l where l.name = p_b.name;
  insert into pgshield.breaker_events (name, at, from_state, to_state, generation, reason, actor)
  values (v_b.name, p_now, p_b.state, p_to, v_b.generation, v_b.reason, pgshield.caller_role());
  perform pg_notify('pgshield_breaker', jsonb_build_object(
    'name', v_b.name, 'from', p_b.state, 'to', p_to, 'generation', v_b.generation,
    'reason', v_b.reason, 'at', p_now, 'open_until', v_b.open_until)::text);
  return v_b;
end
$$;

revoke all on function pgshield.breaker_transition(pgshield.breakers, text, text, timestamptz)
  from public, anon, authenticated, service_role;

-- Counts one outcome in this backend's own bucket row of the current step of
-- a p_window_seconds window (1 s up to a 1-minute window, ceil(window / 60)
-- s beyond, so the trip check sums at most 61 rows per backend however long
-- the window;
-- shard = the backend's process id): two concurrent callers never write the
-- same row, so counting never waits on a lock. An update first, since the row
-- of this step usually exists; the insert only for its first outcome.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.breaker_count(
  p_name text, p_generation bigint, p_now timestamptz, p_failure boolean, p_slow boolean,
  p_window_seconds integer
) returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_second timestamptz := date_bin(((p_window_seconds + 59) / 60) * interval '1 second', p_now,
                                   timestamptz '1970-01-01 00:00:00+00');
  v_failures integer := case when p_failure then 1 else 0 end;
  v_slow integer := case when p_slow then 1 else 0 end;
begin
  update pgshield.breaker_buckets k
     set calls = k.calls + 1, failures = k.failures + v_failures, slow = k.slow + v_slow
   where k.name = p_name and k.generation = p_generation and k.second = v_second
     and k.shard = pg_backend_pid();
  if not found then
    insert into pgshield.breaker_buckets as k (name, generation, second, shard, calls, failures, slow)
    values (p_name, p_generation, v_second, pg_backend_pid(), 1, v_failures, v_slow)
    on conflict (name, generation, second, shard) do update
       set calls = k.calls + 1, failures = k.failures + excluded.failures, slow = k.slow + excluded.slow;
  end if;
end
$$;

revoke all on function pgshield.breaker_count(text, bigint, timestamptz, boolean, boolean, integer)
  from public, anon, authenticated, service_role;

-- Why the locked, closed breaker p_b should trip now (null: it should not):
-- consecutive failures, then the failure rate, then the slow-call rate over
-- its window in the current generation.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.breaker_trip_reason(p_b pgshield.breakers, p_now timestamptz)
returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_calls bigint;
  v_failures bigint;
  v_slow bigint;
begin
  if p_b.failure_threshold is not null and p_b.consecutive_failures >= p_b.failure_threshold then
    return format('%s consecutive failures', p_b.consecutive_failures);
  end if;
  if p_b.failure_rate is null and p_b.slow_call_rate is null then
    return null;
  end if;
  select coalesce(sum(k.calls), 0), coalesce(sum(k.failures), 0), coalesce(sum(k.slow), 0)
    into v_calls, v_failures, v_slow
    from pgshield.breaker_buckets k
   where k.name = p_b.name and k.generation = p_b.generation
     and k.second > p_now - p_b.window_seconds * interval '1 second';
  if v_calls < p_b.min_calls then
    return null;
  end if;
  if p_b.failure_rate is not null and v_failures >= p_b.failure_rate * v_calls then
    return format('failure rate %s%% (%s of %s calls in %s s)',
                  round(100.0 * v_failures / v_calls, 1), v_failures, v_calls, p_b.window_seconds);
  end if;
  if p_b.slow_call_rate is not null and v_slow >= p_b.slow_call_rate * v_calls then
    return format('slow call rate %s%% (%s of %s calls took >= %s ms in %s s)',
                  round(100.0 * v_slow / v_calls, 1), v_slow, v_calls, p_b.slow_call_ms, p_b.window_seconds);
  end if;
  return null;
end
$$;

revoke all on function pgshield.breaker_trip_reason(pgshield.breakers, timestamptz)
  from public, anon, authenticated, service_role;

-- ---------------------------------------------------------------- acquire ----

-- May a call go through breaker p_name now? Closed and disabled: yes, with no
-- row lock (a permit of the current generation). Open: no, until open_until;
-- the first call after it moves the breaker to half_open (under the row
-- lock, with the clock read after the lock) and competes for a trial slot.
-- Half-open: a lease on one of half_open_permits slots for lease_ms, or no.
-- Forced open: no (retry_after_ms -1). An unknown name is created with the
-- defaults when the installation auto-creates, else refused.
-- Callers: service_role.
-- Errors: 22023 bad name; 42501 other roles; PT404 unknown breaker (auto_create
-- off); PT409 too many breakers.
create or replace function public.acquire_breaker(p_name text) returns public.breaker_decision
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_b pgshield.breakers;
  v_role text := current_setting('role');
  v_state text;
  v_gen bigint;
  v_now timestamptz;
  v_res public.breaker_decision;
  v_active integer;
  v_expiry timestamptz;
begin
  -- service_role and this function's owner are let through without a catalog
  -- read (the same roles pgshield.caller_is_trusted() trusts); any other role
  -- is judged by breaker_check_caller().
  if v_role <> 'service_role' and (case v_role when 'none' then session_user else v_role end) <> current_user then
    perform pgshield.breaker_check_caller();
  end if;

  -- The healthy path: one indexed read, no lock, no write, no clock. A name
  -- found in the table is valid (the table checks it).
  select b.state, b.generation into v_state, v_gen from pgshield.breakers b where b.name = p_name;
  if v_state in ('closed', 'disabled') then
    return row(true, v_state, v_gen, v_gen * 4294967296, 0, p_name)::public.breaker_decision;
  end if;

  perform pgshield.breaker_check_name(p_name);
  v_b := pgshield.breaker_get(p_name, true);
  v_res.name := p_name;
  if v_b.state in ('closed', 'disabled') then
    -- Created just now (or changed since the read above).
    v_res.allowed := true;
    v_res.state := v_b.state;
    v_res.generation := v_b.generation;
    v_res.permit := v_b.generation * 4294967296;
    v_res.retry_after_ms := 0;
    return v_res;
  elsif v_b.state = 'forced_open' then
    v_res.allowed := false;
    v_res.state := v_b.state;
    v_res.generation := v_b.generation;
    v_res.retry_after_ms := -1;
    return v_res;
  elsif v_b.state = 'open' then
    v_now := pgshield.now();
    if v_now < v_b.open_until then
      v_res.allowed := false;
      v_res.state := 'open';
      v_res.generation := v_b.generation;
      v_res.retry_after_ms := pgshield.breaker_ms_until(v_b.open_until, v_now);
      return v_res;
    end if;
  end if;

  -- open past open_until, or half_open: decide under the row lock, judged by
  -- the newest state and a clock read after the lock (never older than the
  -- row's last change).
  select * into v_b from pgshield.breakers b where b.name = p_name for update;
  if not found then
    raise exception using errcode = 'PT404', message = format('unknown breaker %L', p_name);
  end if;
  v_now := greatest(pgshield.now(), v_b.changed_at);
  if v_b.state = 'open' and v_now >= v_b.open_until then
    v_b := pgshield.breaker_transition(v_b, 'half_open', 'open period over', v_now);
  end if;
  v_res.state := v_b.state;
  v_res.generation := v_b.generation;
  if v_b.state <> 'half_open' then
    -- Someone changed the state while this call waited for the lock.
    v_res.allowed := v_b.state in ('closed', 'disabled');
    v_res.permit := case when v_res.allowed then v_b.generation * 4294967296 end;
    v_res.retry_after_ms := case v_b.state when 'forced_open' then -1
                                            when 'open' then pgshield.breaker_ms_until(v_b.open_until, v_now)
                                            else 0 end;
    return v_res;
  end if;

  delete from pgshield.breaker_leases l where l.name = p_name and l.expires_at <= v_now;
  select count(*), min(l.expires_at) into v_active, v_expiry
    from pgshield.breaker_leases l where l.name = p_name;
  if v_active >= v_b.half_open_permits then
    v_res.allowed := false;
    v_res.retry_after_ms := pgshield.breaker_ms_until(v_expiry, v_now);
    return v_res;
  end if;
  update pgshield.breakers b set leases_issued = b.leases_issued + 1
   where b.name = p_name
  returning b.leases_issued into v_b.leases_issued;
  insert into pgshield.breaker_leases (name, lease_no, generation, expires_at)
  values (p_name, v_b.leases_issued, v_b.generation, v_now + v_b.lease_ms * interval '1 millisecond');
  v_res.allowed := true;
  v_res.permit := v_b.generation * 4294967296 + v_b.leases_issued;
  v_res.retry_after_ms := 0;
  return v_res;
end
$$;

revoke all on function public.acquire_breaker(text) from public, anon, authenticated, service_role;
grant execute on function public.acquire_breaker(text) to service_role;

-- ---------------------------------------------------------------- release ----

-- Reports the outcome of a call that acquire_breaker allowed: p_outcome
-- 'success', 'failure' or 'ignored' (not counted; a trial slot is given back),
-- p_duration_ms how long it took (null: unknown, never slow). An outcome from
-- an older generation, or of a trial lease that expired, changes nothing.
--   closed:    a failure (or a slow call) is counted in the window and may
--              trip the breaker open; a success resets the consecutive
--              failures, and is counted in the window when the breaker has a
--              rate rule (without one it writes nothing when there is no
--              streak to reset).
--   half_open: a failure (or a slow call) opens it again, with backoff;
--              success_threshold successes close it.
-- Callers: service_role.
-- Errors: 22023 bad name, permit, outcome or duration; 42501 other roles;
-- PT404 unknown breaker.
create or replace function public.release_breaker(
  p_name text,
  p_permit bigint,
  p_outcome text,
  p_duration_ms integer default null
) returns public.breaker_release_result
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_b pgshield.breakers;
  v_role text := current_setting('role');
  v_state text;
  v_current bigint;
  v_streak integer;
  v_slow_ms integer;
  v_rated boolean;
  v_window integer;
  v_gen bigint;
  v_lease bigint;
  v_now timestamptz;
  v_slow boolean;
  v_bad boolean;
  v_counted boolean;
  v_trip text;
  v_res public.breaker_release_result;
begin
  -- service_role and this function's owner are let through without a catalog
  -- read (as in acquire_breaker); any other role by breaker_check_caller().
  if v_role <> 'service_role' and (case v_role when 'none' then session_user else v_role end) <> current_user then
    perform pgshield.breaker_check_caller();
  end if;
  -- One indexed read of what the paths without the row lock need. A name
  -- found in the table is valid (the table checks it).
  select b.state, b.generation, b.consecutive_failures, b.slow_call_ms,
         b.failure_rate is not null or b.slow_call_rate is not null, b.window_seconds
    into v_state, v_current, v_streak, v_slow_ms, v_rated, v_window
    from pgshield.breakers b where b.name = p_name;

  -- The healthy path, first and in one test: a success of the current
  -- generation in the closed state, for a breaker without a rate rule (so it
  -- has no slow-call rule either) and no streak of failures to forget. It
  -- writes nothing at all.
  if v_state = 'closed' and p_permit = v_current * 4294967296 and p_outcome = 'success' and v_streak = 0
     and not v_rated and (p_duration_ms is null or p_duration_ms >= 0) then
    return row(v_state, v_current, false, true, p_name)::public.breaker_release_result;
  end if;

  if p_permit is null or p_permit < 4294967296 then
    raise exception using errcode = '22023', message = 'p_permit must be a permit that acquire_breaker returned';
  end if;
  if p_outcome is null or p_outcome not in ('success', 'failure', 'ignored') then
    raise exception using errcode = '22023', message = 'p_outcome must be success, failure or ignored',
      hint = format('got %L', left(p_outcome, 80));
  end if;
  if p_duration_ms < 0 then
    raise exception using errcode = '22023', message = 'p_duration_ms must be >= 0 (or null)';
  end if;
  if v_state is null then
    perform pgshield.breaker_check_name(p_name);  -- 22023
    perform pgshield.breaker_get(p_name, false);  -- PT404
  end if;
  v_gen := p_permit / 4294967296;
  v_lease := p_permit % 4294967296;
  if v_gen > v_current then
    raise exception using errcode = '22023', message = 'p_permit was not issued by this breaker',
      hint = format('breaker %L is at generation %s', p_name, v_current);
  end if;
  v_slow := coalesce(p_duration_ms >= v_slow_ms, false);
  v_bad := p_outcome = 'failure' or (p_outcome = 'success' and v_slow);

  -- Still without the row lock: any other fast success (or an ignored call)
  -- in the closed state. It writes the breaker row only when there are
  -- consecutive failures to forget, and counts the call only for a breaker
  -- with a rate rule, in this backend's own bucket row (so concurrent callers
  -- never wait on each other). Stale outcomes change nothing.
  if v_gen < v_current or v_state not in ('closed', 'half_open')
     or (v_state = 'closed' and (v_lease <> 0 or not v_bad)) then
    v_counted := v_gen = v_current and v_state = 'closed' and v_lease = 0 and p_outcome <> 'ignored';
    if v_counted then
      if v_streak > 0 then
        update pgshield.breakers b set consecutive_failures = 0
         where b.name = p_name and b.generation = v_gen and b.consecutive_failures > 0;
      end if;
      if v_rated then
        perform pgshield.breaker_count(p_name, v_gen, pgshield.now(), false, false, v_window);
      end if;
    end if;
    return row(v_state, v_current, false, v_counted, p_name)::public.breaker_release_result;
  end if;
  v_res.name := p_name;
  v_res.changed := false;
  v_res.counted := false;

  -- A failure or slow call while closed, or any trial outcome: under the row
  -- lock, judged by the newest state and a clock read after the lock.
  select * into v_b from pgshield.breakers b where b.name = p_name for update;
  if not found then
    raise exception using errcode = 'PT404', message = format('unknown breaker %L', p_name);
  end if;
  v_now := greatest(pgshield.now(), v_b.changed_at);
  v_res.state := v_b.state;
  v_res.generation := v_b.generation;
  if v_gen <> v_b.generation then
    return v_res;  -- the state changed while this call waited: stale
  end if;

  if v_b.state = 'closed' then
    if v_lease <> 0 then
      return v_res;
    end if;
    perform pgshield.breaker_count(p_name, v_gen, v_now, p_outcome = 'failure', v_slow, v_b.window_seconds);
    v_res.counted := true;
    update pgshield.breakers b
       -- (capped: a breaker whose failure threshold is off still counts the streak)
       set consecutive_failures = case when p_outcome = 'failure'
                                       then least(b.consecutive_failures, 2147483646) + 1 else 0 end
     where b.name = p_name
    returning b.consecutive_failures into v_b.consecutive_failures;
    v_trip := pgshield.breaker_trip_reason(v_b, v_now);
    if v_trip is not null then
      v_b := pgshield.breaker_transition(v_b, 'open', v_trip, v_now);
      v_res.changed := true;
    end if;
  elsif v_b.state = 'half_open' then
    -- Only the holder of a live lease of this generation reports a trial.
    delete from pgshield.breaker_leases l
     where l.name = p_name and l.lease_no = v_lease and l.generation = v_gen and l.expires_at > v_now;
    if not found then
      return v_res;
    end if;
    if p_outcome = 'ignored' then
      return v_res;  -- the slot is free again
    end if;
    v_res.counted := true;
    if v_bad then
      v_b := pgshield.breaker_transition(v_b, 'open',
        case when p_outcome = 'failure' then 'trial call failed'
             else format('trial call slow (%s ms >= %s ms)', p_duration_ms, v_b.slow_call_ms) end, v_now);
      v_res.changed := true;
    else
      update pgshield.breakers b set trial_successes = b.trial_successes + 1
       where b.name = p_name
      returning b.trial_successes into v_b.trial_successes;
      if v_b.trial_successes >= v_b.success_threshold then
        v_b := pgshield.breaker_transition(v_b, 'closed',
          format('%s of %s trial calls succeeded', v_b.trial_successes, v_b.success_threshold), v_now);
        v_res.changed := true;
      end if;
    end if;
  end if;
  v_res.state := v_b.state;
  v_res.generation := v_b.generation;
  return v_res;
end
$$;

revoke all on function public.release_breaker(text, bigint, text, integer)
  from public, anon, authenticated, service_role;
grant execute on function public.release_breaker(text, bigint, text, integer) to service_role;

-- ---------------------------------------------------------- configuration ----

-- One breaker as JSON: its settings and its state.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.breaker_json(p_name text) returns jsonb
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object(
    'name', b.name, 'state', b.state, 'generation', b.generation, 'changed_at', b.changed_at,
    'reason', b.reason, 'open_until', b.open_until,
    'failure_threshold', b.failure_threshold, 'failure_rate', b.failure_rate,
    'min_calls', b.min_calls, 'window_seconds', b.window_seconds,
    'slow_call_ms', b.slow_call_ms, 'slow_call_rate', b.slow_call_rate,
    'open_ms', b.open_ms, 'backoff_factor', b.backoff_factor, 'max_open_ms', b.max_open_ms,
    'half_open_permits', b.half_open_permits, 'lease_ms', b.lease_ms,
    'success_threshold', b.success_threshold)
    from pgshield.breakers b where b.name = p_name
$$;

revoke all on function pgshield.breaker_json(text) from public, anon, authenticated, service_role;

-- Creates a breaker, or replaces every setting of an existing one (its state
-- is kept; an open period already running keeps its end). At least one trip
-- rule: p_failure_threshold consecutive failures, p_failure_rate, or the
-- slow-call rule (p_slow_call_ms with p_slow_call_rate). Only a breaker with
-- a rate rule counts its successes; giving one to a breaker that had none
-- starts its window afresh. p_max_open_ms null: p_open_ms (no backoff beyond
-- it). Returns the breaker as JSON.
-- Callers: service_role.
-- Errors: 22023 bad name or setting (named in the message); 42501 other roles.
create or replace function public.configure_breaker(
  p_name text,
  p_failure_threshold integer default 5,
  p_failure_rate numeric default null,
  p_min_calls integer default 10,
  p_window_seconds integer default 60,
  p_slow_call_ms integer default null,
  p_slow_call_rate numeric default null,
  p_open_ms integer default 30000,
  p_backoff_factor numeric default 1,
  p_max_open_ms integer default null,
  p_half_open_permits integer default 1,
  p_lease_ms integer default 30000,
  p_success_threshold integer default 2
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_max_open integer := coalesce(p_max_open_ms, p_open_ms);
  v_unrated boolean;
begin
  perform pgshield.breaker_check_caller();
  perform pgshield.breaker_check_name(p_name);
  if p_failure_threshold is not null and p_failure_threshold not between 1 and 100000 then
    raise exception using errcode = '22023', message = 'p_failure_threshold must be between 1 and 100000 (or null)';
  end if;
  if p_failure_rate is not null and not (p_failure_rate > 0 and p_failure_rate <= 1) then
    raise exception using errcode = '22023', message = 'p_failure_rate must be > 0 and <= 1 (or null)';
  end if;
  if p_min_calls is null or p_min_calls not between 1 and 1000000 then
    raise exception using errcode = '22023', message = 'p_min_calls must be between 1 and 1000000';
  end if;
  if p_window_seconds is null or p_window_seconds not between 1 and 86400 then
    raise exception using errcode = '22023', message = 'p_window_seconds must be between 1 and 86400';
  end if;
  if (p_slow_call_ms is null) <> (p_slow_call_rate is null) then
    raise exception using errcode = '22023', message = 'p_slow_call_ms and p_slow_call_rate go together',
      hint = 'give both (a call taking >= p_slow_call_ms is slow; trip at that rate of slow calls) or neither';
  end if;
  if p_slow_call_ms not between 1 and 86400000 then
    raise exception using errcode = '22023', message = 'p_slow_call_ms must be between 1 and 86400000';
  end if;
  if not (p_slow_call_rate > 0 and p_slow_call_rate <= 1) then
    raise exception using errcode = '22023', message = 'p_slow_call_rate must be > 0 and <= 1';
  end if;
  if p_failure_threshold is null and p_failure_rate is null and p_slow_call_rate is null then
    raise exception using errcode = '22023', message = 'a breaker needs a trip rule',
      hint = 'p_failure_threshold, p_failure_rate, or p_slow_call_ms with p_slow_call_rate';
  end if;
  if p_open_ms is null or p_open_ms not between 1 and 86400000 then
    raise exception using errcode = '22023', message = 'p_open_ms must be between 1 and 86400000 (one day)';
  end if;
  if p_backoff_factor is null or p_backoff_factor not between 1 and 10 then
    raise exception using errcode = '22023', message = 'p_backoff_factor must be between 1 (no backoff) and 10';
  end if;
  if v_max_open not between p_open_ms and 604800000 then
    raise exception using errcode = '22023',
      message = 'p_max_open_ms must be between p_open_ms and 604800000 (a week)';
  end if;
  if p_half_open_permits is null or p_half_open_permits not between 1 and 1000 then
    raise exception using errcode = '22023', message = 'p_half_open_permits must be between 1 and 1000';
  end if;
  if p_lease_ms is null or p_lease_ms not between 1 and 86400000 then
    raise exception using errcode = '22023', message = 'p_lease_ms must be between 1 and 86400000';
  end if;
  if p_success_threshold is null or p_success_threshold not between 1 and 1000 then
    raise exception using errcode = '22023', message = 'p_success_threshold must be between 1 and 1000';
  end if;

  select b.failure_rate is null and b.slow_call_rate is null into v_unrated
    from pgshield.breakers b where b.name = p_name for update;
  insert into pgshield.breakers as b
    (name, failure_threshold, failure_rate, min_calls, window_seconds, slow_call_ms, slow_call_rate,
     open_ms, backoff_factor, max_open_ms, half_open_permits, lease_ms, success_threshold, changed_at,
     generation)
  values (p_name, p_failure_threshold, p_failure_rate, p_min_calls, p_window_seconds, p_slow_call_ms,
          p_slow_call_rate, p_open_ms, p_backoff_factor, v_max_open, p_half_open_permits, p_lease_ms,
          p_success_threshold, pgshield.now(),
          coalesce((select t.generation + 1 from pgshield.breaker_tombstones t where t.name = p_name), 1))
  on conflict (name) do update
     set failure_threshold = excluded.failure_threshold, failure_rate = excluded.failure_rate,
         min_calls = excluded.min_calls, window_seconds = excluded.window_seconds,
         slow_call_ms = excluded.slow_call_ms, slow_call_rate = excluded.slow_call_rate,
         open_ms = excluded.open_ms, backoff_factor = excluded.backoff_factor,
         max_open_ms = excluded.max_open_ms, half_open_permits = excluded.half_open_permits,
         lease_ms = excluded.lease_ms, success_threshold = excluded.success_threshold;
  -- Successes are counted only while a breaker has a rate rule. When one is
  -- added, the window starts afresh: the failures counted alone before would
  -- otherwise weigh as if they were every call.
  if v_unrated and (p_failure_rate is not null or p_slow_call_rate is not null) then
    delete from pgshield.breaker_buckets k where k.name = p_name;
  end if;
  return pgshield.breaker_json(p_name);
end
$$;

revoke all on function public.configure_breaker(text, integer, numeric, integer, integer, integer, numeric,
  integer, numeric, integer, integer, integer, integer) from public, anon, authenticated, service_role;
grant execute on function public.configure_breaker(text, integer, numeric, integer, integer, integer, numeric,
  integer, numeric, integer, integer, integer, integer) to service_role;

-- --------------------------------------------------------- manual control ----

-- Back to closed with every counter, trial lease and the backoff cleared, as
-- a new generation (permits handed out before are stale), with p_reason in
-- the events log. Returns the breaker as JSON.
-- Callers: service_role. Errors: 22023 bad name or reason; 42501 other roles;
-- PT404 unknown breaker.
create or replace function public.reset_breaker(p_name text, p_reason text) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_b pgshield.breakers;
begin
  perform pgshield.breaker_check_caller();
  perform pgshield.breaker_check_name(p_name);
  perform pgshield.breaker_check_reason(p_reason);
  select * into v_b from pgshield.breakers b where b.name = p_name for update;
  if not found then
    raise exception using errcode = 'PT404', message = format('unknown breaker %L', p_name);
  end if;
  perform pgshield.breaker_transition(v_b, 'closed', btrim(p_reason), greatest(pgshield.now(), v_b.changed_at));
  return pgshield.breaker_json(p_name);
end
$$;

revoke all on function public.reset_breaker(text, text) from public, anon, authenticated, service_role;
grant execute on function public.reset_breaker(text, text) to service_role;

-- Forces a breaker into p_state until reset_breaker: 'forced_open' (every call
-- refused) or 'disabled' (forced closed: every call goes through, nothing is
-- counted). A new generation even when already in that state (the reason is
-- logged). Returns the breaker as JSON.
-- Callers: service_role. Errors: 22023 bad name, state or reason; 42501 other
-- roles; PT404 unknown breaker.
create or replace function public.force_breaker(p_name text, p_state text, p_reason text) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_b pgshield.breakers;
begin
  perform pgshield.breaker_check_caller();
  perform pgshield.breaker_check_name(p_name);
  if p_state is null or p_state not in ('forced_open', 'disabled') then
    raise exception using errcode = '22023', message = 'p_state must be forced_open or disabled',
      hint = 'reset_breaker() returns it to closed';
  end if;
  perform pgshield.breaker_check_reason(p_reason);
  select * into v_b from pgshield.breakers b where b.name = p_name for update;
  if not found then
    raise exception using errcode = 'PT404', message = format('unknown breaker %L', p_name);
  end if;
  perform pgshield.breaker_transition(v_b, p_state, btrim(p_reason), greatest(pgshield.now(), v_b.changed_at));
  return pgshield.breaker_json(p_name);
end
$$;

revoke all on function public.force_breaker(text, text, text) from public, anon, authenticated, service_role;
grant execute on function public.force_breaker(text, text, text) to service_role;

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

-- ----------------------------------------------------------------- status ----

-- Every breaker's state and its window: calls, failures and slow calls in
-- the last window_seconds (every generation, summed over the backends'
-- bucket rows), the failure rate, the time until an open breaker admits
-- trials, live trial leases, the last change. calls and failure_rate are null
-- for a breaker without a rate rule: its successes are not counted (that
-- keeps its healthy path free of writes); its failures are.
-- Security definer so that the view works for service_role.
-- Callers: the owner, service_role (through the view). Errors: none.
create or replace function pgshield.breaker_status_rows()
returns table (
  name text, state text, generation bigint, calls bigint, failures bigint, slow_calls bigint,
  failure_rate numeric, consecutive_failures integer, half_open_in_ms integer, trial_leases bigint,
  trial_successes integer, open_until timestamptz, last_change_at timestamptz, last_reason text
)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
begin
  return query
  select b.name, b.state, b.generation,
         case when b.failure_rate is not null or b.slow_call_rate is not null then coalesce(w.calls, 0) end,
         coalesce(w.failures, 0), coalesce(w.slow, 0),
         case when (b.failure_rate is not null or b.slow_call_rate is not null) and w.calls > 0
              then round(w.failures::numeric / w.calls, 4) end,
         b.consecutive_failures,
         case when b.state = 'open' then
           case when v_now >= b.open_until then 0 else pgshield.breaker_ms_until(b.open_until, v_now) end
         end,
         (select count(*) from pgshield.breaker_leases l where l.name = b.name and l.expires_at > v_now),
         b.trial_successes, b.open_until, b.changed_at, b.reason
    from pgshield.breakers b
    left join lateral (
      select sum(k.calls) as calls, sum(k.failures) as failures, sum(k.slow) as slow
        from pgshield.breaker_buckets k
       where k.name = b.name and k.second > v_now - b.window_seconds * interval '1 second'
    ) w on true;
end
$$;

revoke all on function pgshield.breaker_status_rows() from public, anon, authenticated, service_role;
grant execute on function pgshield.breaker_status_rows() to service_role;

-- One row per breaker. state 'open' with half_open_in_ms 0: the next acquire
-- moves it to half_open.
create or replace view pgshield.breaker_status as
select s.name, s.state, s.generation, s.calls, s.failures, s.slow_calls, s.failure_rate,
       s.consecutive_failures, s.half_open_in_ms, s.trial_leases, s.trial_successes, s.open_until,
       s.last_change_at, s.last_reason
  from pgshield.breaker_status_rows() s;
comment on view pgshield.breaker_status is
  'Every breaker: state, generation, calls / failures / slow calls in its window, failure rate, time until half-open, last change and reason.';
revoke all on table pgshield.breaker_status from public, anon, authenticated, service_role;
grant select on table pgshield.breaker_status to service_role;

-- The newest p_limit state changes (of one breaker, or of all), newest first.
-- Callers: the owner, service_role. Errors: 22023 bad name or limit; 42501 others.
create or replace function pgshield.breaker_events_recent(p_name text default null, p_limit integer default 100)
returns table (
  id bigint, name text, at timestamptz, from_state text, to_state text, generation bigint,
  reason text, actor name
)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform pgshield.breaker_check_caller();
  if p_name is not null then
    perform pgshield.breaker_check_name(p_name);
  end if;
  if p_limit is null or p_limit not between 1 and 10000 then
    raise exception using errcode = '22023', message = 'p_limit must be between 1 and 10000';
  end if;
  return query
  select e.id, e.name, e.at, e.from_state, e.to_state, e.generation, e.reason, e.actor
    from pgshield.breaker_events e
   where p_name is null or e.name = p_name
   order by e.id desc
   limit p_limit;
end
$$;

revoke all on function pgshield.breaker_events_recent(text, integer) from public, anon, authenticated, service_role;
grant execute on function pgshield.breaker_events_recent(text, integer) to service_role;

-- ----------------------------------------------------------------- settings ----

-- The installation's breaker settings as JSON.
-- Callers: the owner, service_role. Errors: 42501 others.
create or replace function pgshield.breaker_settings() returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform pgshield.breaker_check_caller();
  return (select jsonb_build_object('auto_create', s.auto_create, 'max_breakers', s.max_breakers,
                                    'event_retention_days', s.event_retention_days, 'updated_at', s.updated_at)
            from pgshield.breaker_settings s where s.id);
end
$$;

revoke all on function pgshield.breaker_settings() from public, anon, authenticated, service_role;
grant execute on function pgshield.breaker_settings() to service_role;

-- Changes the installation's breaker settings (null keeps a setting): whether
-- acquire_breaker creates unknown breakers, how many it may create, how many
-- days events are kept. Returns the settings as JSON.
-- Callers: the owner, service_role. Errors: 22023 out of range; 42501 others.
create or replace function pgshield.set_breaker_settings(
  p_auto_create boolean default null,
  p_max_breakers integer default null,
  p_event_retention_days integer default null
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform pgshield.breaker_check_caller();
  if p_max_breakers not between 1 and 1000000 then
    raise exception using errcode = '22023', message = 'p_max_breakers must be between 1 and 1000000';
  end if;
  if p_event_retention_days not between 1 and 3650 then
    raise exception using errcode = '22023', message = 'p_event_retention_days must be between 1 and 3650';
  end if;
  insert into pgshield.breaker_settings as s (id) values (true) on conflict (id) do nothing;
  update pgshield.breaker_settings s
     set auto_create = coalesce(p_auto_create, s.auto_create),
         max_breakers = coalesce(p_max_breakers, s.max_breakers),
         event_retention_days = coalesce(p_event_retention_days, s.event_retention_days),
         updated_at = now()
   where s.id;
  return pgshield.breaker_settings();
end
$$;

revoke all on function pgshield.set_breaker_settings(boolean, integer, integer)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.set_breaker_settings(boolean, integer, integer) to service_role;

-- ---------------------------------------------------------------- cleanup ----

-- Deletes up to p_batch_size rows that no longer matter: counter buckets
-- older than their breaker's window (or of a breaker that is gone), expired
-- trial leases, and events older than event_retention_days. Skips rows that
-- concurrent calls hold locked; returns how many rows it deleted. Call it in
-- a loop until it returns less than the batch.
-- Callers: the owner, service_role. Errors: 22023 bad batch size; 42501 others.
create or replace function pgshield.breaker_cleanup(p_batch_size integer default 10000)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
  v_left integer := p_batch_size;
  v_count integer;
  v_total integer := 0;
  v_keep interval;
begin
  perform pgshield.breaker_check_caller();
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023', message = 'p_batch_size must be a positive integer';
  end if;
  delete from pgshield.breaker_buckets k
   using (select x.name, x.generation, x.second, x.shard
            from pgshield.breaker_buckets x
            left join pgshield.breakers b on b.name = x.name
           where b.name is null
              or x.second <= v_now - (b.window_seconds + 1) * interval '1 second'
           limit v_left
             for update of x skip locked) d
   where k.name = d.name and k.generation = d.generation and k.second = d.second and k.shard = d.shard;
  get diagnostics v_count = row_count;
  v_total := v_total + v_count;
  v_left := v_left - v_count;
  if v_left > 0 then
    delete from pgshield.breaker_leases l
     using (select x.name, x.lease_no from pgshield.breaker_leases x
             where x.expires_at <= v_now limit v_left for update skip locked) d
     where l.name = d.name and l.lease_no = d.lease_no;
    get diagnostics v_count = row_count;
    v_total := v_total + v_count;
    v_left := v_left - v_count;
  end if;
  if v_left > 0 then
    select s.event_retention_days * interval '1 day' into v_keep
      from pgshield.breaker_settings s where s.id;
    delete from pgshield.breaker_events e
     using (select x.id from pgshield.breaker_events x
             where x.at < v_now - coalesce(v_keep, interval '30 days')
             order by x.id limit v_left for update skip locked) d
     where e.id = d.id;
    get diagnostics v_count = row_count;
    v_total := v_total + v_count;
  end if;
  return v_total;
end
$$;

revoke all on function pgshield.breaker_cleanup(integer) from public, anon, authenticated, service_role;
grant execute on function pgshield.breaker_cleanup(integer) to service_role;

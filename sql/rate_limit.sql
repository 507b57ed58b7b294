-- =============================================================================
-- pgshield rate_limit: atomic rate limits kept in the database.
--
-- Entry points (schema public; each checks its caller). Those anon or
-- authenticated may call run as the invoker and reach the security definer
-- logic in pgshield (rate_limit_check, rate_limit_usage_of): Supabase's Security
-- Advisor flags security definer functions in an exposed schema.
--   increment_rate_limit   one key, one window, caller-chosen limit   service_role
--   peek_rate_limit        the same decision as a dry run             service_role
--   record_rate_limit_key_usage  add or refund cost on a key          service_role
--   reset_rate_limit       forget a key                                service_role
--   check_rate_limit       a named policy: tiers, windows, endpoints  anon*, authenticated, service_role
--   peek_check_rate_limit  the same decision as a dry run             anon*, authenticated, service_role
--   record_rate_limit_usage  add or refund cost on a subject          service_role
--   reset_rate_limit_subject forget a subject                         service_role
--   get_rate_limit_usage   a subject's current usage                  authenticated (own), service_role
--   get_rate_limit_policies / define_rate_limit_policy /
--   drop_rate_limit_policy / set_rate_limit_tier                      service_role
--   (* anon only for policies that allow anonymous callers)
-- Internals (schema pgshield): the state table and its evaluator, policy tables,
-- per-policy decision counters (sequences), the usage and counters views,
-- cleanup_expired_rate_limits() and the storage mode switch.
--
-- Time is always pgshield.now(), in whole microseconds since the epoch. Windows
-- of fixed_window and sliding_window are aligned on the epoch.
-- =============================================================================

-- window_seconds and limit_value columns mirror the API's integer parameters
-- and are bounded by checks.
-- squawk-ignore-file prefer-bigint-over-int

-- Applied in one transaction: never wait long for a lock on the user's database.
set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- ------------------------------------------------------------------ state ----
-- One row per (key, policy, window). Direct keys (increment_rate_limit) use
-- policy ''; policy decisions use key = subject. The primary key starts with
-- key so that Citus could distribute the table by key. Nothing but the
-- primary key is indexed: every decision updates the row, and with free room
-- on the page (fillfactor) those updates stay HOT.
--   fixed_window:   window_start, count
--   sliding_window: window_start, count (that window), prev_count (the one before)
--   token_bucket:   tat, the GCRA theoretical arrival time in epoch microseconds
--                   (fractional: the emission interval window/limit is kept exact
--                   to 1e-15 microsecond, so a burst of exactly limit fits)
-- expires_at is the moment the row is equivalent to no row at all; cleanup
-- scans for it without an index.
-- Unlogged by default (no WAL: about twice the decisions per second of a
-- logged table, see docs/benchmarks.md); the state is then emptied after a
-- crash and absent on replicas. pgshield.set_rate_limit_storage('logged')
-- makes it durable.

create unlogged table if not exists pgshield.rate_limit_state (
  key text not null,
  policy text not null default '',
  window_seconds integer not null,
  algorithm text not null,
  limit_value integer not null,
  window_start timestamptz,
  count bigint not null default 0,
  prev_count bigint not null default 0,
  tat numeric,
  expires_at timestamptz not null,
  constraint rate_limit_state_pkey primary key (key, policy, window_seconds)
) with (fillfactor = 70);
comment on table pgshield.rate_limit_state is
  'Rate limit state: one row per (key, policy, window). Logged or unlogged: see pgshield.set_rate_limit_storage().';
alter table pgshield.rate_limit_state enable row level security;
revoke all on table pgshield.rate_limit_state from public, anon, authenticated, service_role;

-- --------------------------------------------------------------- policies ----
-- A policy names an algorithm, a unit, a default tier and, per tier, one or
-- more windows. Subjects (users, API keys) may be assigned a tier; the tiers
-- that exist are the tiers that some policy defines windows for.

create table if not exists pgshield.rate_limit_policies (
  name text primary key
    constraint rate_limit_policies_name_check check (name ~ '^[a-z0-9][a-z0-9_.:-]{0,62}$'),
  id bigint not null generated always as identity unique,
  algorithm text not null
    constraint rate_limit_policies_algorithm_check
    check (algorithm in ('fixed_window', 'sliding_window', 'token_bucket')),
  unit text not null default 'requests'
    constraint rate_limit_policies_unit_check check (unit in ('requests', 'tokens')),
  default_tier text not null,
  allow_anonymous boolean not null default false,
  description text,
  allowed_counter regclass not null,
  denied_counter regclass not null,
  updated_at timestamptz not null default now()
);
comment on table pgshield.rate_limit_policies is
  'Rate limit policies. Edit with public.define_rate_limit_policy().';
alter table pgshield.rate_limit_policies enable row level security;
revoke all on table pgshield.rate_limit_policies from public, anon, authenticated, service_role;

create table if not exists pgshield.rate_limit_policy_windows (
  policy text not null references pgshield.rate_limit_policies (name) on delete cascade,
  tier text not null
    constraint rate_limit_policy_windows_tier_check check (tier ~ '^[a-z0-9][a-z0-9_.:-]{0,62}$'),
  window_seconds integer not null
    constraint rate_limit_policy_windows_window_check check (window_seconds between 1 and 2678400),
  limit_value integer not null
    constraint rate_limit_policy_windows_limit_check check (limit_value > 0),
  name text not null,
  primary key (policy, tier, window_seconds)
);
comment on table pgshield.rate_limit_policy_windows is
  'The windows of each policy and tier: window length, limit and a display name.';
alter table pgshield.rate_limit_policy_windows enable row level security;
revoke all on table pgshield.rate_limit_policy_windows from public, anon, authenticated, service_role;

create table if not exists pgshield.rate_limit_policy_endpoints (
  policy text not null references pgshield.rate_limit_policies (name) on delete cascade,
  endpoint text not null
    constraint rate_limit_policy_endpoints_endpoint_check check (length(endpoint) between 1 and 256),
  multiplier numeric not null
    constraint rate_limit_policy_endpoints_multiplier_check check (multiplier > 0),
  primary key (policy, endpoint)
);
comment on table pgshield.rate_limit_policy_endpoints is
  'Per-endpoint cost multipliers: cost = ceil(p_cost * multiplier).';
alter table pgshield.rate_limit_policy_endpoints enable row level security;
revoke all on table pgshield.rate_limit_policy_endpoints from public, anon, authenticated, service_role;

create table if not exists pgshield.rate_limit_subject_tiers (
  subject text primary key,
  tier text not null,
  updated_at timestamptz not null default now()
);
comment on table pgshield.rate_limit_subject_tiers is
  'The tier of a subject (user id or API key); subjects without a row get each policy''s default tier.';
alter table pgshield.rate_limit_subject_tiers enable row level security;
revoke all on table pgshield.rate_limit_subject_tiers from public, anon, authenticated, service_role;

-- --------------------------------------------------------------- counters ----
-- Allowed and denied decisions are counted with one sequence per policy and
-- outcome: nextval() takes no row lock and is not rolled back, so the counters
-- never serialise decisions and a denied request changes no row. Direct keys
-- share the pair below.

-- Unlogged like the state table where the server allows it (PostgreSQL 15+).
do $$
begin
  execute format('create %s sequence if not exists pgshield.rate_limit_direct_allowed',
                 case when current_setting('server_version_num')::integer >= 150000 then 'unlogged' else '' end);
  execute format('create %s sequence if not exists pgshield.rate_limit_direct_denied',
                 case when current_setting('server_version_num')::integer >= 150000 then 'unlogged' else '' end);
end
$$;
revoke all on sequence pgshield.rate_limit_direct_allowed from public, anon, authenticated, service_role;
revoke all on sequence pgshield.rate_limit_direct_denied from public, anon, authenticated, service_role;

-- ---------------------------------------------------------- result types ----
-- In public: anon has no usage on pgshield, and a function's result type must
-- be usable by its caller.

do $$
begin
  if to_regtype('public.rate_limit_result') is null then
    create type public.rate_limit_result as (
      allowed boolean,
      "limit" integer,
      remaining integer,
      reset_at timestamptz,
      retry_after_ms integer,
      key text,
      algorithm text,
      window_seconds integer,
      cost integer
    );
  end if;
  if to_regtype('public.rate_limit_check_result') is null then
    create type public.rate_limit_check_result as (
      allowed boolean,
      "limit" integer,
      remaining integer,
      reset_at timestamptz,
      retry_after_ms integer,
      policy text,
      tier text,
      subject text,
      cost integer,
      unit text,
      windows jsonb,
      violated text[]
    );
  end if;
  if to_regtype('pgshield.rate_limit_eval') is null then
    create type pgshield.rate_limit_eval as (
      fits boolean,
      window_start timestamptz,
      count bigint,
      prev_count bigint,
      tat numeric,
      remaining integer,
      used bigint,
      reset_at timestamptz,
      retry_after_ms integer
    );
  end if;
end
$$;

-- A type of these names that the pack did not create (another owner, other
-- fields, a domain with a CHECK calling someone's function) would run its
-- owner's code inside the pack's functions: refuse it.
select pgshield.assert_pack_type('public.rate_limit_result',
  'allowed boolean, limit integer, remaining integer, reset_at timestamp with time zone, '
  'retry_after_ms integer, key text, algorithm text, window_seconds integer, cost integer');
select pgshield.assert_pack_type('public.rate_limit_check_result',
  'allowed boolean, limit integer, remaining integer, reset_at timestamp with time zone, '
  'retry_after_ms integer, policy text, tier text, subject text, cost integer, unit text, '
  'windows jsonb, violated text[]');
select pgshield.assert_pack_type('pgshield.rate_limit_eval',
  'fits boolean, window_start timestamp with time zone, count bigint, prev_count bigint, '
  'tat numeric, remaining integer, used bigint, reset_at timestamp with time zone, '
  'retry_after_ms integer');

comment on type public.rate_limit_result is
  'One decision on one key: allowed, limit, remaining, reset_at, retry_after_ms (0 when allowed, -1 when the cost exceeds the limit).';
comment on type public.rate_limit_check_result is
  'One policy decision: the tightest window at the top level, every window in windows, the violated window names in violated.';

-- ---------------------------------------------------------------- helpers ----

-- Rejects bad direct-key arguments with 22023 naming the parameter.
-- Callers: pack functions. Errors: 22023.
create or replace function pgshield.rate_limit_check_args(
  p_key text, p_limit integer, p_window_seconds integer, p_algorithm text
) returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_key is null or length(p_key) not between 1 and 256 then
    raise exception using errcode = '22023', message = 'p_key must be 1 to 256 characters';
  end if;
  if p_limit is null or p_limit < 1 then
    raise exception using errcode = '22023', message = 'p_limit must be a positive integer';
  end if;
  if p_window_seconds is null or p_window_seconds not between 1 and 2678400 then
    raise exception using errcode = '22023',
      message = 'p_window_seconds must be between 1 and 2678400 (31 days)';
  end if;
  if p_algorithm is null or p_algorithm not in ('fixed_window', 'sliding_window', 'token_bucket') then
    raise exception using errcode = '22023',
      message = 'p_algorithm must be fixed_window, sliding_window or token_bucket',
      hint = format('got %L', p_algorithm);
  end if;
end
$$;

revoke all on function pgshield.rate_limit_check_args(text, integer, integer, text)
  from public, anon, authenticated, service_role;

-- The display name of a window length: minute, hour, day, week or "<n>s".
-- Callers: pack functions. Errors: none.
create or replace function pgshield.rate_limit_window_name(p_window_seconds integer) returns text
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case p_window_seconds
           when 1 then 'second' when 60 then 'minute' when 3600 then 'hour'
           when 86400 then 'day' when 604800 then 'week'
           else p_window_seconds::text || 's'
         end
$$;

revoke all on function pgshield.rate_limit_window_name(integer)
  from public, anon, authenticated, service_role;

-- -------------------------------------------------------------- evaluator ----
-- The arithmetic of every algorithm, in one place. Given a row's stored state
-- (null/0 when there is none) and the time in epoch microseconds, it returns
-- whether p_cost fits, the state after the decision, and what to tell the
-- caller. With p_force it applies p_cost (which may be negative: a refund)
-- whether or not it fits: usage recorded after the fact.
--
--   remaining      requests of cost 1 that would still fit after this decision
--   used           consumption the window currently counts (may exceed the limit)
--   reset_at       when the consumption is entirely forgotten (now when empty)
--   retry_after_ms 0 when it fits, -1 when p_cost > p_limit, else the wait in ms,
--                  rounded up: after exactly that wait the same call fits
--                  (capped at 2147483647 ms, about 24.8 days)
--
-- fixed_window:   fits when count + cost <= limit within the epoch-aligned window.
-- sliding_window: fits when prev * (w - elapsed) / w + count + cost <= limit,
--                 computed exactly in integers.
-- token_bucket:   GCRA, T = w / limit (truncated to 1e-15 us): fits when
--                 max(tat, now) + cost * T - now <= w; the new tat is that sum.
--                 window_start holds the time of the row's last decision.
-- "now" is never older than the row: max(p_now_us, the stored window's start
-- or the last decision's time). A call that read the clock, then waited for
-- the row lock while the window rolled over, is judged in the newest window.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.rate_limit_evaluate(
  p_algorithm text,
  p_limit integer,
  p_window_seconds integer,
  p_cost bigint,
  p_now_us bigint,
  p_state_algorithm text,
  p_window_start timestamptz,
  p_count bigint,
  p_prev_count bigint,
  p_tat numeric,
  p_force boolean default false
) returns pgshield.rate_limit_eval
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_r pgshield.rate_limit_eval;
  v_epoch constant timestamptz := timestamptz '1970-01-01 00:00:00+00';
  v_w bigint := p_window_seconds::bigint * 1000000;
  v_start bigint;
  v_elapsed bigint;
  v_stored bigint;
  v_cur bigint := 0;
  v_prev bigint := 0;
  v_t numeric;
  v_tat0 numeric;
  v_a numeric;
  v_q numeric;
  v_wait numeric;
  v_reset numeric;
  v_refund bigint;
begin
  -- Never back in time: a call that read the clock and then waited for the
  -- row lock may carry a time older than the state it finds. It is judged at
  -- the newest time the row was judged at (fixed and sliding windows: the
  -- start of the stored window; token bucket: its last decision).
  if p_state_algorithm = p_algorithm and p_window_start is not null then
    v_stored := (extract(epoch from p_window_start) * 1000000)::bigint;
    if v_stored > p_now_us then
      p_now_us := v_stored;
    end if;
  end if;
  v_start := p_now_us - ((p_now_us % v_w) + v_w) % v_w;
  v_elapsed := p_now_us - v_start;

  if p_algorithm = 'token_bucket' then
    -- ------------------------------------------------------ token bucket --
    v_t := div(v_w::numeric * 1000000000000000, p_limit) * 0.000000000000001;
    v_tat0 := greatest(case when p_state_algorithm = 'token_bucket' then p_tat end, p_now_us);
    if p_force then
      v_r.fits := true;
      v_r.tat := greatest(v_tat0 + p_cost * v_t, p_now_us);
    else
      v_r.fits := p_cost <= p_limit and v_tat0 + p_cost * v_t - p_now_us <= v_w;
      v_r.tat := case when v_r.fits then v_tat0 + p_cost * v_t else v_tat0 end;
    end if;
    v_r.remaining := least(greatest(div(p_now_us + v_w - v_r.tat, v_t), 0), p_limit);
    v_a := v_r.tat - p_now_us;
    v_q := div(v_a, v_t);
    v_r.used := (case when v_q * v_t < v_a then v_q + 1 else v_q end);
    v_reset := ceil(greatest(v_r.tat, p_now_us));
    v_r.reset_at := v_epoch + v_reset * interval '1 microsecond';
    v_r.count := 0;
    v_r.prev_count := 0;
    v_r.window_start := v_epoch + p_now_us * interval '1 microsecond';
    if not v_r.fits then
      if p_cost > p_limit then
        v_r.retry_after_ms := -1;
      else
        v_wait := ceil(v_tat0 + p_cost * v_t - v_w - p_now_us);
      end if;
    end if;
  else
    -- ----------------------------------------- fixed and sliding window --
    if v_stored is not null then
      if v_stored = v_start then
        v_cur := p_count;
        v_prev := case when p_algorithm = 'sliding_window' then p_prev_count else 0 end;
      elsif v_stored = v_start - v_w and p_algorithm = 'sliding_window' then
        v_prev := p_count;
      end if;
    end if;
    if p_force then
      v_r.fits := true;
      if p_cost >= 0 then
        v_r.count := v_cur + p_cost;
        v_r.prev_count := v_prev;
      else
        v_refund := least(v_cur, -p_cost);
        v_r.count := v_cur - v_refund;
        v_r.prev_count := greatest(v_prev - (-p_cost - v_refund), 0);
      end if;
    else
      if p_algorithm = 'fixed_window' then
        v_r.fits := p_cost <= p_limit and v_cur + p_cost <= p_limit;
      else
        v_r.fits := p_cost <= p_limit
          and v_prev::numeric * (v_w - v_elapsed) + (v_cur + p_cost)::numeric * v_w
              <= p_limit::numeric * v_w;
      end if;
      v_r.count := case when v_r.fits then v_cur + p_cost else v_cur end;
      v_r.prev_count := v_prev;
    end if;
    v_r.window_start := v_epoch + v_start * interval '1 microsecond';
    if p_algorithm = 'fixed_window' then
      v_r.prev_count := 0;
      v_r.remaining := least(greatest(p_limit - v_r.count, 0), p_limit);
      v_r.used := v_r.count;
      v_reset := case when v_r.count > 0 then v_start + v_w else p_now_us end;
    else
      v_a := v_r.prev_count::numeric * (v_w - v_elapsed);
      v_r.remaining := least(greatest(
        div(p_limit::numeric * v_w - v_a - v_r.count::numeric * v_w, v_w), 0), p_limit);
      v_q := div(v_a, v_w);
      v_r.used := v_r.count + (case when v_q * v_w < v_a then v_q + 1 else v_q end);
      v_reset := case
        when v_r.count > 0 then v_start + 2 * v_w
        when v_r.prev_count > 0 then v_start + v_w
        else p_now_us
      end;
    end if;
    v_r.reset_at := v_epoch + v_reset * interval '1 microsecond';
    if not v_r.fits then
      if p_cost > p_limit then
        v_r.retry_after_ms := -1;
      elsif p_algorithm = 'fixed_window' then
        v_wait := v_start + v_w - p_now_us;
      else
        -- Within this window the estimate falls as the previous window's
        -- weight does; otherwise the current count becomes the previous one.
        v_a := (p_limit - v_cur - p_cost)::numeric * v_w;
        if v_a >= 0 then
          v_wait := v_w - div(v_a, v_prev) - v_elapsed;
        else
          v_wait := (v_w - v_elapsed) + v_w - div((p_limit - p_cost)::numeric * v_w, v_cur);
        end if;
      end if;
    end if;
  end if;
  if v_r.fits then
    v_r.retry_after_ms := 0;
  elsif v_wait is not null then
    v_r.retry_after_ms := least(div(v_wait + 999, 1000), 2147483647);
  end if;
  return v_r;
end
$$;

revoke all on function pgshield.rate_limit_evaluate(text, integer, integer, bigint, bigint, text,
  timestamptz, bigint, bigint, numeric, boolean) from public, anon, authenticated, service_role;

-- The clock in whole epoch microseconds.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.rate_limit_now_us() returns bigint
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  return (extract(epoch from pgshield.now()) * 1000000)::bigint;
end
$$;

revoke all on function pgshield.rate_limit_now_us() from public, anon, authenticated, service_role;

-- ------------------------------------------------------------ direct keys ----

-- Builds a rate_limit_result from an evaluation.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.rate_limit_result_of(
  p_e pgshield.rate_limit_eval, p_allowed boolean, p_key text, p_limit integer,
  p_window_seconds integer, p_cost integer, p_algorithm text
) returns public.rate_limit_result
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_res public.rate_limit_result;
begin
  v_res.allowed := p_allowed;
  v_res."limit" := p_limit;
  v_res.remaining := p_e.remaining;
  v_res.reset_at := p_e.reset_at;
  v_res.retry_after_ms := case when p_allowed then 0 else p_e.retry_after_ms end;
  v_res.key := p_key;
  v_res.algorithm := p_algorithm;
  v_res.window_seconds := p_window_seconds;
  v_res.cost := p_cost;
  return v_res;
end
$$;

revoke all on function pgshield.rate_limit_result_of(pgshield.rate_limit_eval, boolean, text, integer,
  integer, integer, text) from public, anon, authenticated, service_role;

-- Consumes p_cost from key p_key if it fits in p_limit per p_window_seconds,
-- atomically: one insert ... on conflict do update ... where <fits>. A denied
-- request changes no row (the conflicting row is only locked, then read).
-- This is the hot path: PL/pgSQL pays for every statement and expression it
-- evaluates, so an allowed decision is one argument test, one clock reading,
-- one upsert that does the window arithmetic and returns the answer (and
-- counts it), and a return. pgshield.rate_limit_evaluate() is the reference
-- (denials, peeks) and the tests hold the two together.
-- Callers: service_role (whoever calls it picks the limit).
-- Errors: 22023 bad key, limit, window, cost or algorithm.
create or replace function public.increment_rate_limit(
  p_key text,
  p_limit integer,
  p_window_seconds integer,
  p_cost integer default 1,
  p_algorithm text default 'fixed_window'
) returns public.rate_limit_result
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz;
  v_now_us bigint;
  v_w bigint;
  v_elapsed bigint;
  v_start_ts timestamptz;
  v_prev_ts timestamptz;
  v_t numeric;
  v_res public.rate_limit_result;
  v_row record;
  v_e pgshield.rate_limit_eval;
begin
  -- One test for every argument; which one is wrong is worked out only on
  -- the slow path, in the order the parameters are declared.
  if (length(p_key) between 1 and 256 and p_limit >= 1 and p_window_seconds between 1 and 2678400
      and p_cost >= 1 and p_algorithm in ('fixed_window', 'sliding_window', 'token_bucket')) is not true then
    if p_key is null or length(p_key) not between 1 and 256 then
      raise exception using errcode = '22023', message = 'p_key must be 1 to 256 characters';
    end if;
    if p_limit is null or p_limit < 1 then
      raise exception using errcode = '22023', message = 'p_limit must be a positive integer';
    end if;
    if p_window_seconds is null or p_window_seconds not between 1 and 2678400 then
      raise exception using errcode = '22023',
        message = 'p_window_seconds must be between 1 and 2678400 (31 days)';
    end if;
    if p_cost is null or p_cost < 1 then
      raise exception using errcode = '22023', message = 'p_cost must be a positive integer';
    end if;
    raise exception using errcode = '22023',
      message = 'p_algorithm must be fixed_window, sliding_window or token_bucket',
      hint = format('got %L', p_algorithm);
  end if;

  -- For fixed_window (the common case, tested first) the upsert itself
  -- reads the clock (pgshield.now(), written out) and does the window
  -- arithmetic: one statement. The other paths read the clock first.
  if p_algorithm = 'fixed_window' and p_cost <= p_limit then
    insert into pgshield.rate_limit_state as s
      (key, policy, window_seconds, algorithm, limit_value, window_start, count, prev_count, tat, expires_at)
    select p_key, '', p_window_seconds, 'fixed_window', p_limit, n.ws, p_cost, 0, null,
           n.ws + p_window_seconds * interval '1 second'
      from (select date_bin(p_window_seconds * interval '1 second',
                            coalesce((select coalesce(c.frozen_at, clock_timestamp()) + c.shift
                                        from pgshield.clock c), clock_timestamp()),
                            timestamptz '1970-01-01 00:00:00+00') as ws) n
    -- A row already in a newer window (this call read the clock, then waited
    -- for the lock while the window rolled over) keeps that window, and the
    -- call is counted in it: windows only move forward.
    on conflict (key, policy, window_seconds) do update
       set algorithm = excluded.algorithm,
           limit_value = excluded.limit_value,
           window_start = case when s.algorithm = excluded.algorithm
                                and s.window_start > excluded.window_start
                               then s.window_start else excluded.window_start end,
           count = excluded.count
                   + case when s.algorithm = excluded.algorithm
                           and s.window_start >= excluded.window_start then s.count else 0 end,
           prev_count = 0,
           tat = null,
           expires_at = case when s.algorithm = excluded.algorithm
                              and s.window_start > excluded.window_start
                             then s.window_start + p_window_seconds * interval '1 second'
                             else excluded.expires_at end
     where excluded.count
           + case when s.algorithm = excluded.algorithm
                   and s.window_start >= excluded.window_start then s.count else 0 end
           <= excluded.limit_value
    -- RETURNING runs only for a row that was written, i.e. an allowed
    -- decision: it counts it (retry_after_ms is 0 * nextval(...) = 0) and
    -- hands back the finished result. Same in the two branches below.
    returning true, p_limit, greatest(p_limit - s.count, 0)::integer, s.expires_at,
              (0 * nextval('pgshield.rate_limit_direct_allowed'::regclass))::integer,
              p_key, p_algorithm, p_window_seconds, p_cost
      into v_res;
    if found then
      return v_res;
    end if;
  end if;
  v_now := coalesce((select coalesce(c.frozen_at, clock_timestamp()) + c.shift from pgshield.clock c),
                    clock_timestamp());
  v_now_us := (extract(epoch from v_now) * 1000000)::bigint;
  if p_algorithm = 'fixed_window' or p_cost > p_limit then
    null;  -- denied, or can never fit: answered below without touching the row
  elsif p_algorithm = 'sliding_window' then
    v_w := p_window_seconds::bigint * 1000000;
    v_elapsed := ((v_now_us % v_w) + v_w) % v_w;
    v_start_ts := v_now - v_elapsed * interval '1 microsecond';
    v_prev_ts := v_start_ts - v_w * interval '1 microsecond';
    insert into pgshield.rate_limit_state as s
      (key, policy, window_seconds, algorithm, limit_value, window_start, count, prev_count, tat, expires_at)
    values (p_key, '', p_window_seconds, 'sliding_window', p_limit, v_start_ts, p_cost, 0, null,
            v_start_ts + 2 * v_w * interval '1 microsecond')
    -- A row already in a newer window keeps it, and the call is judged at
    -- that window's start (elapsed 0: the previous window weighs fully).
    on conflict (key, policy, window_seconds) do update
       set algorithm = excluded.algorithm,
           limit_value = excluded.limit_value,
           window_start = case when s.algorithm = excluded.algorithm
                                and s.window_start > excluded.window_start
                               then s.window_start else excluded.window_start end,
           count = excluded.count
                   + case when s.algorithm = excluded.algorithm
                           and s.window_start >= excluded.window_start then s.count else 0 end,
           prev_count = case when s.algorithm <> excluded.algorithm then 0
                             when s.window_start >= excluded.window_start then s.prev_count
                             when s.window_start = v_prev_ts then s.count
                             else 0 end,
           tat = null,
           expires_at = case when s.algorithm = excluded.algorithm
                              and s.window_start > excluded.window_start
                             then s.window_start + 2 * v_w * interval '1 microsecond'
                             else excluded.expires_at end
     where (case when s.algorithm <> excluded.algorithm then 0
                 when s.window_start >= excluded.window_start then s.prev_count
                 when s.window_start = v_prev_ts then s.count
                 else 0 end)::numeric
           * (v_w - case when s.algorithm = excluded.algorithm
                          and s.window_start > excluded.window_start then 0 else v_elapsed end)
           + (excluded.count
              + case when s.algorithm = excluded.algorithm
                      and s.window_start >= excluded.window_start then s.count else 0 end
             )::numeric * v_w
           <= excluded.limit_value::numeric * v_w
    returning true, p_limit,
              least(greatest(div(p_limit::numeric * v_w
                                 - s.prev_count::numeric
                                   * (v_w - case when s.window_start > v_start_ts then 0 else v_elapsed end)
                                 - s.count::numeric * v_w, v_w), 0), p_limit)::integer,
              s.expires_at,
              (0 * nextval('pgshield.rate_limit_direct_allowed'::regclass))::integer,
              p_key, p_algorithm, p_window_seconds, p_cost
      into v_res;
    if found then
      return v_res;
    end if;
  else
    -- token_bucket (GCRA): T = w / limit, truncated to 1e-15 microsecond.
    v_w := p_window_seconds::bigint * 1000000;
    v_t := div(v_w::numeric * 1000000000000000, p_limit) * 0.000000000000001;
    -- window_start keeps the time of the last decision; a call that waited
    -- for the lock behind a later one is judged at that later time.
    insert into pgshield.rate_limit_state as s
      (key, policy, window_seconds, algorithm, limit_value, window_start, count, prev_count, tat, expires_at)
    values (p_key, '', p_window_seconds, 'token_bucket', p_limit, v_now, 0, 0, v_now_us + p_cost * v_t,
            timestamptz '1970-01-01 00:00:00+00' + ceil(v_now_us + p_cost * v_t) * interval '1 microsecond')
    on conflict (key, policy, window_seconds) do update
       set algorithm = excluded.algorithm,
           limit_value = excluded.limit_value,
           window_start = greatest(case when s.algorithm = excluded.algorithm then s.window_start end, v_now),
           count = 0,
           prev_count = 0,
           tat = greatest(case when s.algorithm = excluded.algorithm then s.tat end,
                          case when s.algorithm = excluded.algorithm and s.window_start > v_now
                               then (extract(epoch from s.window_start) * 1000000)::bigint
                               else v_now_us end) + p_cost * v_t,
           expires_at = timestamptz '1970-01-01 00:00:00+00'
                        + ceil(greatest(case when s.algorithm = excluded.algorithm then s.tat end,
                                        case when s.algorithm = excluded.algorithm and s.window_start > v_now
                                             then (extract(epoch from s.window_start) * 1000000)::bigint
                                             else v_now_us end)
                               + p_cost * v_t) * interval '1 microsecond'
     where greatest(case when s.algorithm = excluded.algorithm then s.tat end,
                    case when s.algorithm = excluded.algorithm and s.window_start > v_now
                         then (extract(epoch from s.window_start) * 1000000)::bigint
                         else v_now_us end) + p_cost * v_t
           - case when s.algorithm = excluded.algorithm and s.window_start > v_now
                  then (extract(epoch from s.window_start) * 1000000)::bigint
                  else v_now_us end <= v_w
    returning true, p_limit,
              least(greatest(div((extract(epoch from s.window_start) * 1000000)::bigint + v_w - s.tat, v_t),
                             0), p_limit)::integer,
              s.expires_at,
              (0 * nextval('pgshield.rate_limit_direct_allowed'::regclass))::integer,
              p_key, p_algorithm, p_window_seconds, p_cost
      into v_res;
    if found then
      return v_res;
    end if;
  end if;

  -- Denied: read the state it was refused on (locked by the upsert above, or
  -- not locked at all when the cost can never fit) and explain.
  select s.algorithm, s.window_start, s.count, s.prev_count, s.tat into v_row
    from pgshield.rate_limit_state s
   where s.key = p_key and s.policy = '' and s.window_seconds = p_window_seconds;
  v_e := pgshield.rate_limit_evaluate(p_algorithm, p_limit, p_window_seconds, p_cost, v_now_us,
    v_row.algorithm, v_row.window_start, v_row.count, v_row.prev_count, v_row.tat, false);
  -- A fixed window refused at the upsert's clock reading that fits at this
  -- later one has rolled over in between. The row is still locked by the
  -- upsert and nothing else changed: the call is allowed now, in the new
  -- window, and written as the evaluator says.
  if v_e.fits and p_algorithm = 'fixed_window' then
    update pgshield.rate_limit_state s
       set algorithm = 'fixed_window', limit_value = p_limit, window_start = v_e.window_start,
           count = v_e.count, prev_count = 0, tat = null, expires_at = v_e.reset_at
     where s.key = p_key and s.policy = '' and s.window_seconds = p_window_seconds;
    perform nextval('pgshield.rate_limit_direct_allowed'::regclass);
    return row(true, p_limit, v_e.remaining, v_e.reset_at, 0,
               p_key, p_algorithm, p_window_seconds, p_cost)::public.rate_limit_result;
  end if;
  perform nextval('pgshield.rate_limit_direct_denied'::regclass);
  return row(false, p_limit, v_e.remaining, v_e.reset_at, v_e.retry_after_ms,
             p_key, p_algorithm, p_window_seconds, p_cost)::public.rate_limit_result;
end
$$;

revoke all on function public.increment_rate_limit(text, integer, integer, integer, text)
  from public, anon, authenticated, service_role;
grant execute on function public.increment_rate_limit(text, integer, integer, integer, text) to service_role;

-- What increment_rate_limit would answer now, without consuming or counting.
-- Callers: service_role. Errors: 22023 bad key, limit, window, cost or algorithm.
create or replace function public.peek_rate_limit(
  p_key text,
  p_limit integer,
  p_window_seconds integer,
  p_cost integer default 1,
  p_algorithm text default 'fixed_window'
) returns public.rate_limit_result
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row record;
  v_e pgshield.rate_limit_eval;
begin
  perform pgshield.rate_limit_check_args(p_key, p_limit, p_window_seconds, p_algorithm);
  if p_cost is null or p_cost < 1 then
    raise exception using errcode = '22023', message = 'p_cost must be a positive integer';
  end if;
  select s.algorithm, s.window_start, s.count, s.prev_count, s.tat into v_row
    from pgshield.rate_limit_state s
   where s.key = p_key and s.policy = '' and s.window_seconds = p_window_seconds;
  v_e := pgshield.rate_limit_evaluate(p_algorithm, p_limit, p_window_seconds, p_cost,
    pgshield.rate_limit_now_us(),
    v_row.algorithm, v_row.window_start, v_row.count, v_row.prev_count, v_row.tat, false);
  return pgshield.rate_limit_result_of(v_e, v_e.fits, p_key, p_limit, p_window_seconds, p_cost, p_algorithm);
end
$$;

revoke all on function public.peek_rate_limit(text, integer, integer, integer, text)
  from public, anon, authenticated, service_role;
grant execute on function public.peek_rate_limit(text, integer, integer, integer, text) to service_role;

-- Records cost on a key after the fact (p_amount > 0), even past the limit so
-- that the next request is denied, or refunds it (p_amount < 0, never below
-- zero). Returns what a request of cost 1 would get now (not consumed).
-- Callers: service_role.
-- Errors: 22023 bad key, limit, window, algorithm, or p_amount null or 0.
create or replace function public.record_rate_limit_key_usage(
  p_key text,
  p_limit integer,
  p_window_seconds integer,
  p_amount integer,
  p_algorithm text default 'fixed_window'
) returns public.rate_limit_result
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now_us bigint;
  v_row record;
  v_e pgshield.rate_limit_eval;
begin
  perform pgshield.rate_limit_check_args(p_key, p_limit, p_window_seconds, p_algorithm);
  if p_amount is null or p_amount = 0 then
    raise exception using errcode = '22023', message = 'p_amount must be a non-zero integer',
      hint = 'positive records usage, negative refunds it';
  end if;
  v_now_us := pgshield.rate_limit_now_us();
  -- Lock the row (or create it empty), then apply.
  insert into pgshield.rate_limit_state as s
    (key, policy, window_seconds, algorithm, limit_value, window_start, count, prev_count, tat, expires_at)
  values (p_key, '', p_window_seconds, p_algorithm, p_limit, null, 0, 0, null, pgshield.now())
  on conflict (key, policy, window_seconds) do update set count = s.count where false;
  select s.algorithm, s.window_start, s.count, s.prev_count, s.tat into v_row
    from pgshield.rate_limit_state s
   where s.key = p_key and s.policy = '' and s.window_seconds = p_window_seconds;
  v_e := pgshield.rate_limit_evaluate(p_algorithm, p_limit, p_window_seconds, p_amount, v_now_us,
    v_row.algorithm, v_row.window_start, v_row.count, v_row.prev_count, v_row.tat, true);
  update pgshield.rate_limit_state s
     set algorithm = p_algorithm, limit_value = p_limit, window_start = v_e.window_start,
         count = v_e.count, prev_count = v_e.prev_count, tat = v_e.tat, expires_at = v_e.reset_at
   where s.key = p_key and s.policy = '' and s.window_seconds = p_window_seconds;
  v_e := pgshield.rate_limit_evaluate(p_algorithm, p_limit, p_window_seconds, 1, v_now_us,
    p_algorithm, v_e.window_start, v_e.count, v_e.prev_count, v_e.tat, false);
  return pgshield.rate_limit_result_of(v_e, v_e.fits, p_key, p_limit, p_window_seconds, 1, p_algorithm);
end
$$;

revoke all on function public.record_rate_limit_key_usage(text, integer, integer, integer, text)
  from public, anon, authenticated, service_role;
grant execute on function public.record_rate_limit_key_usage(text, integer, integer, integer, text)
  to service_role;

-- Forgets a key: every window of it, or only p_window_seconds. Returns the
-- number of rows deleted.
-- Callers: service_role. Errors: 22023 bad key or window.
create or replace function public.reset_rate_limit(p_key text, p_window_seconds integer default null)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_count integer;
begin
  if p_key is null or length(p_key) not between 1 and 256 then
    raise exception using errcode = '22023', message = 'p_key must be 1 to 256 characters';
  end if;
  if p_window_seconds is not null and p_window_seconds not between 1 and 2678400 then
    raise exception using errcode = '22023',
      message = 'p_window_seconds must be between 1 and 2678400 (31 days)';
  end if;
  delete from pgshield.rate_limit_state s
   where s.key = p_key and s.policy = ''
     and (p_window_seconds is null or s.window_seconds = p_window_seconds);
  get diagnostics v_count = row_count;
  return v_count;
end
$$;

revoke all on function public.reset_rate_limit(text, integer) from public, anon, authenticated, service_role;
grant execute on function public.reset_rate_limit(text, integer) to service_role;

-- -------------------------------------------------------- policy decisions ----

-- The policy named p_policy, or 22023. An anonymous caller learns nothing
-- about policies it may not use: unknown and closed policies are the same 42501.
-- Callers: pack functions. Errors: 22023 null or unknown policy; 42501 anon.
create or replace function pgshield.rate_limit_policy(p_policy text) returns pgshield.rate_limit_policies
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_policy pgshield.rate_limit_policies;
begin
  if p_policy is null then
    raise exception using errcode = '22023', message = 'p_policy must not be null';
  end if;
  select * into v_policy from pgshield.rate_limit_policies p where p.name = p_policy;
  if v_policy.allow_anonymous is not true and pgshield.caller_role() = 'anon' then
    raise exception using errcode = '42501',
      message = 'this policy is not available to anonymous callers',
      hint = 'sign in, or use a policy defined with p_allow_anonymous => true';
  end if;
  if v_policy.name is null then
    raise exception using errcode = '22023', message = format('p_policy: unknown policy %L', p_policy),
      hint = 'list the policies with public.get_rate_limit_policies()';
  end if;
  return v_policy;
end
$$;

revoke all on function pgshield.rate_limit_policy(text) from public, anon, authenticated, service_role;

-- The subject a policy call acts on, from the caller's role:
--   trusted (service_role, owner): p_subject, which is then required;
--   authenticated: auth.uid(), p_subject must be null or the same;
--   anon: "anon:<client address>" when the policy allows anonymous callers,
--   the address from pgshield.client_address() (the configured header and
--   trusted proxy hops; IPv6 grouped by prefix), "anon:unknown" without one.
-- anon and authenticated are never trusted, so caller_is_trusted() is only
-- asked about other roles.
-- Callers: pack functions. Errors: 22023 missing or bad subject, 42501 not allowed.
create or replace function pgshield.rate_limit_subject(
  p_policy pgshield.rate_limit_policies, p_subject text
) returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role name := pgshield.caller_role();
  v_uid uuid;
begin
  if p_subject is not null and length(p_subject) not between 1 and 256 then
    raise exception using errcode = '22023', message = 'p_subject must be 1 to 256 characters';
  end if;
  if v_role = 'authenticated' then
    v_uid := auth.uid();
    if v_uid is null then
      raise exception using errcode = '42501', message = 'no user id (sub) in the JWT';
    end if;
    if p_subject is not null and p_subject <> v_uid::text then
      raise exception using errcode = '42501',
        message = 'p_subject is only honoured for service_role',
        hint = 'authenticated callers are always limited as themselves: omit p_subject';
    end if;
    return v_uid::text;
  end if;
  if v_role = 'anon' then
    if not p_policy.allow_anonymous then
      raise exception using errcode = '42501',
        message = 'this policy is not available to anonymous callers',
        hint = 'sign in, or use a policy defined with p_allow_anonymous => true';
    end if;
    if p_subject is not null then
      raise exception using errcode = '42501', message = 'p_subject is only honoured for service_role';
    end if;
    return 'anon:' || coalesce(pgshield.client_address(), 'unknown');
  end if;
  if v_role = 'service_role' or pgshield.caller_is_trusted() then
    if p_subject is null then
      raise exception using errcode = '22023', message = 'p_subject is required for trusted callers',
        hint = 'pass the user id or API key to limit';
    end if;
    return p_subject;
  end if;
  raise exception using errcode = '42501', message = format('role %s may not check rate limits', v_role);
end
$$;

revoke all on function pgshield.rate_limit_subject(pgshield.rate_limit_policies, text)
  from public, anon, authenticated, service_role;

-- Decides, peeks or records usage for one subject under one policy, over all
-- windows of the subject's tier at once (its assigned tier when the policy
-- defines windows for it, else the policy's default tier).
--   p_mode 'check': consume p_cost in every window or in none. One plain
--     read (tier, windows, their state and the clock in one statement)
--     decides. A denial writes nothing. An allowed call writes every window
--     in one upsert that only changes a row still holding the state that was
--     read (compare and set); missing rows are inserted by the same statement,
--     in window order, so concurrent calls cannot deadlock. When some row had
--     moved, that statement has locked every window's row anyway (ON CONFLICT
--     DO UPDATE locks the rows it does not change): the call is decided again
--     on the locked state, taking the rows it already wrote at the state it
--     read, and every row is written to the outcome.
--   p_mode 'peek':  the same decision from the plain read; nothing written.
--   p_mode 'usage': apply p_cost (negative refunds) to every window regardless
--     of the limits (under the same lock as the retry above); the result then
--     describes a request of cost 1.
-- Callers: pack functions. Errors: 22023 when the tier has no windows.
create or replace function pgshield.rate_limit_decide(
  p_policy pgshield.rate_limit_policies,
  p_subject text,
  p_cost bigint,
  p_mode text
) returns public.rate_limit_check_result
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tier text;
  v_ws integer[];
  v_lim integer[];
  v_names text[];
  v_n integer;
  v_now timestamptz;
  v_now_us bigint;
  v_alg text[]; v_start timestamptz[]; v_count bigint[]; v_prev bigint[]; v_tat numeric[];  -- state read
  v_wrote integer[];
  v_e pgshield.rate_limit_eval;
  v_evals pgshield.rate_limit_eval[] := array[]::pgshield.rate_limit_eval[];
  v_all_fit boolean := true;
  v_res public.rate_limit_check_result;
  v_bind integer;
  v_remaining integer;
  v_json text := '[';
  v_violated text[] := array[]::text[];
  v_w bigint; v_stored bigint; v_t bigint; v_s0 bigint; v_cur bigint; v_pv bigint;  -- one window
  v_a numeric; v_u numeric;
begin
  -- Tier, windows, a plain read of their state and the clock, in one
  -- statement. The windows come in window order from the primary key (one
  -- sort of the few rows, not one per array).
  select min(x.tier), array_agg(x.window_seconds), array_agg(x.limit_value), array_agg(x.name),
         array_agg(x.algorithm), array_agg(x.window_start), array_agg(x.count), array_agg(x.prev_count),
         array_agg(x.tat),
         coalesce((select coalesce(c.frozen_at, clock_timestamp()) + c.shift from pgshield.clock c),
                  clock_timestamp())
    into v_tier, v_ws, v_lim, v_names, v_alg, v_start, v_count, v_prev, v_tat, v_now
    from (select w.tier, w.window_seconds, w.limit_value, w.name, s.algorithm, s.window_start,
                 coalesce(s.count, 0) as count, coalesce(s.prev_count, 0) as prev_count, s.tat
            from (select coalesce(
                           (select st.tier from pgshield.rate_limit_subject_tiers st
                             where st.subject = p_subject
                               and exists (select 1 from pgshield.rate_limit_policy_windows w2
                                            where w2.policy = p_policy.name and w2.tier = st.tier)),
                           p_policy.default_tier) as tier) t
            join pgshield.rate_limit_policy_windows w on w.policy = p_policy.name and w.tier = t.tier
            left join pgshield.rate_limit_state s
              on s.key = p_subject and s.policy = w.policy and s.window_seconds = w.window_seconds
           order by w.window_seconds) x;
  if v_ws is null then
    raise exception using errcode = '22023',
      message = format('p_policy: policy %L has no windows for its default tier %L',
                       p_policy.name, p_policy.default_tier);
  end if;
  v_n := array_length(v_ws, 1);
  v_now_us := (extract(epoch from v_now) * 1000000)::bigint;

  -- Fixed and sliding windows that all fit: rate_limit_evaluate's arithmetic written out (no
  -- call per window). A window that does not fit, and token buckets, go through it.
  if p_mode <> 'usage' and p_policy.algorithm <> 'token_bucket' then
    for v_i in 1 .. v_n loop
      v_w := v_ws[v_i] * 1000000::bigint;
      v_stored := case when v_alg[v_i] = p_policy.algorithm
                       then (extract(epoch from v_start[v_i]) * 1000000)::bigint end;
      v_t := greatest(v_now_us, v_stored);
      v_s0 := v_t - ((v_t % v_w) + v_w) % v_w;
      v_cur := case when v_stored = v_s0 then v_count[v_i] else 0 end;
      v_pv := case when p_policy.algorithm = 'fixed_window' then 0 when v_stored = v_s0 then v_prev[v_i]
                   when v_stored = v_s0 - v_w then v_count[v_i] else 0 end;
      v_a := v_pv::numeric * (v_w - v_t + v_s0);
      if p_cost > v_lim[v_i] or v_a + (v_cur + p_cost)::numeric * v_w > v_lim[v_i]::numeric * v_w then
        v_all_fit := false;
        exit;
      end if;
      v_cur := v_cur + p_cost;
      -- ceil(v_a / v_w), the previous window's share: used is count + it, and the
      -- evaluator's remaining, div(limit * w - a - count * w, w), is limit - used.
      v_u := div(v_a, v_w);
      v_u := case when v_u * v_w < v_a then v_u + 1 else v_u end;
      v_evals[v_i] := row(true, timestamptz 'epoch' + v_s0 * interval '1 microsecond', v_cur, v_pv, null,
        least(greatest(v_lim[v_i] - v_cur - v_u, 0), v_lim[v_i]), v_cur + v_u,
        timestamptz 'epoch' + (v_s0 + case when p_policy.algorithm = 'fixed_window' then v_w else 2 * v_w end)
                              * interval '1 microsecond',
        0)::pgshield.rate_limit_eval;
    end loop;
  end if;
  if p_mode <> 'usage' and (p_policy.algorithm = 'token_bucket' or not v_all_fit) then
    for v_i in 1 .. v_n loop
      v_e := pgshield.rate_limit_evaluate(p_policy.algorithm, v_lim[v_i], v_ws[v_i], p_cost, v_now_us,
        v_alg[v_i], v_start[v_i], v_count[v_i], v_prev[v_i], v_tat[v_i], false);
      v_evals[v_i] := v_e;  -- over what the loop above wrote; v_all_fit is false already then
      v_all_fit := v_all_fit and v_e.fits;
    end loop;
  end if;

  if p_mode = 'check' and v_all_fit then
    -- Compare and set: a row is changed only if it still holds what was read.
    -- A row that was read but is gone by now (a reset, or cleanup, committed
    -- in between) is inserted empty and locked, not written with the state
    -- computed from the read: the call then decides again (below).
    with written as (
      insert into pgshield.rate_limit_state as s
        (key, policy, window_seconds, algorithm, limit_value, window_start, count, prev_count, tat, expires_at)
      select p_subject, p_policy.name, v_ws[u.ord], p_policy.algorithm, v_lim[u.ord],
             case when v_alg[u.ord] is null then u.window_start end,
             case when v_alg[u.ord] is null then u.count else 0 end,
             case when v_alg[u.ord] is null then u.prev_count else 0 end,
             case when v_alg[u.ord] is null then u.tat end,
             greatest(u.reset_at, v_now)
        from unnest(v_evals) with ordinality
               as u(fits, window_start, count, prev_count, tat, remaining, used, reset_at, retry_after_ms, ord)
       order by u.ord
      on conflict (key, policy, window_seconds) do update
         set algorithm = excluded.algorithm,
             limit_value = excluded.limit_value,
             window_start = (v_evals[array_position(v_ws, s.window_seconds)]).window_start,
             count = (v_evals[array_position(v_ws, s.window_seconds)]).count,
             prev_count = (v_evals[array_position(v_ws, s.window_seconds)]).prev_count,
             tat = (v_evals[array_position(v_ws, s.window_seconds)]).tat,
             expires_at = excluded.expires_at
       where s.algorithm = v_alg[array_position(v_ws, s.window_seconds)]
         and s.window_start is not distinct from v_start[array_position(v_ws, s.window_seconds)]
         and s.count = v_count[array_position(v_ws, s.window_seconds)]
         and s.prev_count = v_prev[array_position(v_ws, s.window_seconds)]
         and s.tat is not distinct from v_tat[array_position(v_ws, s.window_seconds)]
      -- Every state a decision writes has a window_start; an empty row has none.
      returning s.window_seconds, s.window_start is not null as decided)
    select array_agg(window_seconds) filter (where decided) into v_wrote from written;
  end if;

  if p_mode = 'usage' or (p_mode = 'check' and v_all_fit and coalesce(cardinality(v_wrote), 0) < v_n) then
    if p_mode = 'usage' then
      -- Lock every window's row in window order; missing rows are inserted
      -- empty by the same statement (an empty row reads as no row).
      insert into pgshield.rate_limit_state as s
        (key, policy, window_seconds, algorithm, limit_value, window_start, count, prev_count, tat, expires_at)
      select p_subject, p_policy.name, u.ws, p_policy.algorithm, u.lim, null, 0, 0, null,
             v_now + u.ws * interval '1 second'
        from unnest(v_ws, v_lim) as u(ws, lim)
       order by u.ws
      on conflict (key, policy, window_seconds) do update set count = s.count where false;
    end if;
    -- Every row is locked now. A row the upsert above wrote held the state
    -- read first (or none); the others are read again. The clock is read
    -- again too: the upsert may have waited for a lock.
    if p_mode = 'check' then
      v_now := greatest(v_now, coalesce((select coalesce(c.frozen_at, clock_timestamp()) + c.shift
                                           from pgshield.clock c), clock_timestamp()));
      v_now_us := (extract(epoch from v_now) * 1000000)::bigint;
    end if;
    select array_agg(case when u.ws = any(v_wrote) then v_alg[u.ord] else s.algorithm end order by u.ord),
           array_agg(case when u.ws = any(v_wrote) then v_start[u.ord] else s.window_start end order by u.ord),
           array_agg(case when u.ws = any(v_wrote) then v_count[u.ord] else s.count end order by u.ord),
           array_agg(case when u.ws = any(v_wrote) then v_prev[u.ord] else s.prev_count end order by u.ord),
           array_agg(case when u.ws = any(v_wrote) then v_tat[u.ord] else s.tat end order by u.ord)
      into v_alg, v_start, v_count, v_prev, v_tat
      from unnest(v_ws) with ordinality as u(ws, ord)
      join pgshield.rate_limit_state s
        on s.key = p_subject and s.policy = p_policy.name and s.window_seconds = u.ws;
    v_evals := array[]::pgshield.rate_limit_eval[];
    v_all_fit := true;
    for v_i in 1 .. v_n loop
      v_e := pgshield.rate_limit_evaluate(p_policy.algorithm, v_lim[v_i], v_ws[v_i], p_cost, v_now_us,
        v_alg[v_i], v_start[v_i], v_count[v_i], v_prev[v_i], v_tat[v_i], p_mode = 'usage');
      v_evals := v_evals || v_e;
      v_all_fit := v_all_fit and v_e.fits;
    end loop;
    if p_mode = 'usage' or v_all_fit then
      update pgshield.rate_limit_state s
         set algorithm = p_policy.algorithm,
             limit_value = v_lim[u.ord],
             window_start = u.window_start,
             count = u.count,
             prev_count = u.prev_count,
             tat = u.tat,
             expires_at = greatest(u.reset_at, v_now)
        from unnest(v_evals) with ordinality
               as u(fits, window_start, count, prev_count, tat, remaining, used, reset_at, retry_after_ms, ord)
       where s.key = p_subject and s.policy = p_policy.name and s.window_seconds = v_ws[u.ord];
    elsif v_wrote is not null then
      -- Denied after all: the rows the upsert wrote get back the state they
      -- held (none: an empty row, which reads as no row).
      update pgshield.rate_limit_state s
         set algorithm = coalesce(v_alg[u.ord], p_policy.algorithm),
             window_start = v_start[u.ord],
             count = v_count[u.ord],
             prev_count = v_prev[u.ord],
             tat = v_tat[u.ord]
        from unnest(v_ws) with ordinality as u(ws, ord)
       where s.key = p_subject and s.policy = p_policy.name and s.window_seconds = u.ws
         and u.ws = any(v_wrote);
    end if;
  end if;

  if p_mode = 'usage' then
    -- Describe the recorded state as a request of cost 1 would see it.
    v_all_fit := true;
    for v_i in 1 .. v_n loop
      v_e := v_evals[v_i];
      v_e := pgshield.rate_limit_evaluate(p_policy.algorithm, v_lim[v_i], v_ws[v_i], 1, v_now_us,
        p_policy.algorithm, v_e.window_start, v_e.count, v_e.prev_count, v_e.tat, false);
      v_evals[v_i] := v_e;
      v_all_fit := v_all_fit and v_e.fits;
    end loop;
  elsif not v_all_fit then
    -- Nothing is consumed: windows that would have fitted report their
    -- current state rather than the state after the refused cost.
    for v_i in 1 .. v_n loop
      if v_evals[v_i].fits then
        v_evals[v_i] := pgshield.rate_limit_evaluate(p_policy.algorithm, v_lim[v_i], v_ws[v_i], 0, v_now_us,
          v_alg[v_i], v_start[v_i], v_count[v_i], v_prev[v_i], v_tat[v_i], true);
      end if;
    end loop;
  end if;

  -- The binding window: among violated windows the longest wait (-1 first),
  -- else the fewest remaining (ties: the longer window).
  for v_i in 1 .. v_n loop
    v_e := v_evals[v_i];
    -- Text parsed once below: the same jsonb, cheaper than jsonb_build_object per window.
    v_json := concat(v_json, case when v_i > 1 then ',' end,
      format('{"name":%s,"window_seconds":%s,"limit":%s,"remaining":%s,"used":%s,"reset_at":%s,'
             '"retry_after_ms":%s,"allowed":%s}', to_json(v_names[v_i]), v_ws[v_i], v_lim[v_i],
             v_e.remaining, v_e.used, to_json(v_e.reset_at), v_e.retry_after_ms, v_e.fits::text));
    v_remaining := least(v_remaining, v_e.remaining);
    if not v_e.fits then
      v_violated := v_violated || v_names[v_i];
    end if;
    if v_bind is null then
      v_bind := v_i;
    elsif v_all_fit then
      if v_e.remaining <= v_evals[v_bind].remaining then
        v_bind := v_i;
      end if;
    elsif not v_e.fits then
      if v_evals[v_bind].fits
         or (v_evals[v_bind].retry_after_ms <> -1
             and (v_e.retry_after_ms = -1 or v_e.retry_after_ms >= v_evals[v_bind].retry_after_ms)) then
        v_bind := v_i;
      end if;
    end if;
  end loop;

  v_e := v_evals[v_bind];
  v_res := row(v_all_fit, v_lim[v_bind], v_remaining, v_e.reset_at,
               case when v_all_fit then 0 else v_e.retry_after_ms end, p_policy.name, v_tier, p_subject,
               least(greatest(p_cost, -2147483648), 2147483647)::integer, p_policy.unit,
               (v_json || ']')::jsonb, v_violated)::public.rate_limit_check_result;

  if p_mode = 'check' then
    perform nextval(case when v_all_fit then p_policy.allowed_counter else p_policy.denied_counter end);
  end if;
  return v_res;
end
$$;

revoke all on function pgshield.rate_limit_decide(pgshield.rate_limit_policies, text, bigint, text)
  from public, anon, authenticated, service_role;

-- The cost of a call under a policy: ceil(p_cost * the endpoint's multiplier).
-- Callers: pack functions. Errors: 22023 bad cost or unknown endpoint.
create or replace function pgshield.rate_limit_cost(p_policy text, p_cost integer, p_endpoint text)
returns bigint
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_multiplier numeric;
begin
  if p_cost is null or p_cost < 1 then
    raise exception using errcode = '22023', message = 'p_cost must be a positive integer';
  end if;
  if p_endpoint is null then
    return p_cost;
  end if;
  select e.multiplier into v_multiplier
    from pgshield.rate_limit_policy_endpoints e
   where e.policy = p_policy and e.endpoint = p_endpoint;
  if not found then
    raise exception using errcode = '22023',
      message = format('p_endpoint: unknown endpoint %L for policy %L', left(p_endpoint, 256), p_policy),
      hint = 'omit p_endpoint, or add it with define_rate_limit_policy(p_endpoint_costs => ...)';
  end if;
  return ceil(p_cost * v_multiplier)::bigint;
end
$$;

revoke all on function pgshield.rate_limit_cost(text, integer, text) from public, anon, authenticated, service_role;

-- A policy call for the current caller: the policy, then the subject (which
-- refuses callers that may not use the policy), then the cost, so a caller
-- that may not use a policy learns nothing about its endpoints either. With
-- p_peek nothing is consumed or counted. The logic behind check_rate_limit
-- and peek_check_rate_limit, which run as the invoker in public.
-- authenticated and service_role callers without an endpoint take a path
-- with no nested calls (the same checks in the same order, written out);
-- everything else goes through rate_limit_policy, rate_limit_subject and
-- rate_limit_cost.
-- Callers: anon, authenticated, service_role (through those entry points).
-- Errors: 22023 unknown policy or endpoint, bad cost or subject; 42501 not allowed.
create or replace function pgshield.rate_limit_check(
  p_policy text, p_cost integer, p_endpoint text, p_subject text, p_peek boolean
) returns public.rate_limit_check_result
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role text := current_setting('role');
  v_policy pgshield.rate_limit_policies;
  v_uid uuid;
begin
  if p_endpoint is null and v_role in ('authenticated', 'service_role') then
    select * into v_policy from pgshield.rate_limit_policies p where p.name = p_policy;
    if v_policy.name is null then
      perform pgshield.rate_limit_policy(p_policy);  -- raises its 22023
    end if;
    if p_subject is not null and length(p_subject) not between 1 and 256 then
      raise exception using errcode = '22023', message = 'p_subject must be 1 to 256 characters';
    end if;
    if v_role = 'authenticated' then
      v_uid := auth.uid();
      if v_uid is null then
        raise exception using errcode = '42501', message = 'no user id (sub) in the JWT';
      end if;
      if p_subject is not null and p_subject <> v_uid::text then
        raise exception using errcode = '42501',
          message = 'p_subject is only honoured for service_role',
          hint = 'authenticated callers are always limited as themselves: omit p_subject';
      end if;
      p_subject := v_uid::text;
    elsif p_subject is null then
      raise exception using errcode = '22023', message = 'p_subject is required for trusted callers',
        hint = 'pass the user id or API key to limit';
    end if;
    if p_cost is null or p_cost < 1 then
      raise exception using errcode = '22023', message = 'p_cost must be a positive integer';
    end if;
    return pgshield.rate_limit_decide(v_policy, p_subject, p_cost,
                                      case when p_peek then 'peek' else 'check' end);
  end if;
  v_policy := pgshield.rate_limit_policy(p_policy);
  return pgshield.rate_limit_decide(v_policy, pgshield.rate_limit_subject(v_policy, p_subject),
                                    pgshield.rate_limit_cost(p_policy, p_cost, p_endpoint),
                                    case when p_peek then 'peek' else 'check' end);
end
$$;

revoke all on function pgshield.rate_limit_check(text, integer, text, text, boolean)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.rate_limit_check(text, integer, text, text, boolean)
  to anon, authenticated, service_role;

-- Consumes p_cost (times the endpoint's multiplier) from every window of the
-- caller's tier under policy p_policy, or from none. Runs as the invoker.
-- Callers: service_role (any p_subject, required); authenticated (limited as
-- auth.uid()); anon when the policy allows anonymous callers (keyed by the
-- client address, see pgshield.client_address()).
-- Errors: 22023 unknown policy or endpoint, bad cost or subject; 42501 not allowed
-- (anon: also for a policy that does not exist).
create or replace function public.check_rate_limit(
  p_policy text,
  p_cost integer default 1,
  p_endpoint text default null,
  p_subject text default null
) returns public.rate_limit_check_result
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.rate_limit_check(p_policy, p_cost, p_endpoint, p_subject, false);
end
$$;

revoke all on function public.check_rate_limit(text, integer, text, text)
  from public, anon, authenticated, service_role;
grant execute on function public.check_rate_limit(text, integer, text, text)
  to anon, authenticated, service_role;

-- What check_rate_limit would answer now, without consuming or counting.
-- Runs as the invoker. Callers and errors: as check_rate_limit.
create or replace function public.peek_check_rate_limit(
  p_policy text,
  p_cost integer default 1,
  p_endpoint text default null,
  p_subject text default null
) returns public.rate_limit_check_result
language plpgsql volatile security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.rate_limit_check(p_policy, p_cost, p_endpoint, p_subject, true);
end
$$;

revoke all on function public.peek_check_rate_limit(text, integer, text, text)
  from public, anon, authenticated, service_role;
grant execute on function public.peek_check_rate_limit(text, integer, text, text)
  to anon, authenticated, service_role;

-- Records usage after the fact on every window of the subject's tier: a
-- positive p_amount is added even past the limits (so the next request is
-- denied), a negative one is refunded (never below zero). Returns what a
-- request of cost 1 would get now.
-- Callers: service_role.
-- Errors: 22023 unknown policy, bad subject, p_amount null or 0.
create or replace function public.record_rate_limit_usage(
  p_policy text,
  p_subject text,
  p_amount integer
) returns public.rate_limit_check_result
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_policy pgshield.rate_limit_policies := pgshield.rate_limit_policy(p_policy);
begin
  if p_subject is null or length(p_subject) not between 1 and 256 then
    raise exception using errcode = '22023', message = 'p_subject must be 1 to 256 characters';
  end if;
  if p_amount is null or p_amount = 0 then
    raise exception using errcode = '22023', message = 'p_amount must be a non-zero integer',
      hint = 'positive records usage, negative refunds it';
  end if;
  return pgshield.rate_limit_decide(v_policy, p_subject, p_amount, 'usage');
end
$$;

revoke all on function public.record_rate_limit_usage(text, text, integer)
  from public, anon, authenticated, service_role;
grant execute on function public.record_rate_limit_usage(text, text, integer) to service_role;

-- Forgets a subject under every policy, or only under p_policy. Returns the
-- number of rows deleted.
-- Callers: service_role. Errors: 22023 bad subject or unknown policy.
create or replace function public.reset_rate_limit_subject(p_subject text, p_policy text default null)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_count integer;
begin
  if p_subject is null or length(p_subject) not between 1 and 256 then
    raise exception using errcode = '22023', message = 'p_subject must be 1 to 256 characters';
  end if;
  if p_policy is not null then
    perform pgshield.rate_limit_policy(p_policy);
  end if;
  delete from pgshield.rate_limit_state s
   where s.key = p_subject and s.policy <> ''
     and (p_policy is null or s.policy = p_policy);
  get diagnostics v_count = row_count;
  return v_count;
end
$$;

revoke all on function public.reset_rate_limit_subject(text, text) from public, anon, authenticated, service_role;
grant execute on function public.reset_rate_limit_subject(text, text) to service_role;

-- ------------------------------------------------------------------ usage ----

-- Current usage of every live row, one evaluation of its stored state each.
-- Security definer so that the view below works for service_role, which
-- may neither read the table nor run the evaluator.
-- Callers: the owner, service_role (through the view). Errors: none.
create or replace function pgshield.rate_limit_usage_rows()
returns table (
  key text, policy text, window_seconds integer, algorithm text, limit_value integer,
  used bigint, remaining integer, reset_at timestamptz, expires_at timestamptz
)
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
  v_now_us bigint := (extract(epoch from v_now) * 1000000)::bigint;
begin
  return query
  select s.key, nullif(s.policy, ''), s.window_seconds, s.algorithm, s.limit_value,
         e.used, e.remaining, e.reset_at, s.expires_at
    from pgshield.rate_limit_state s
   cross join lateral pgshield.rate_limit_evaluate(s.algorithm, s.limit_value, s.window_seconds, 0,
            v_now_us, s.algorithm, s.window_start, s.count, s.prev_count, s.tat, true) e
   where s.expires_at > v_now;
end
$$;

revoke all on function pgshield.rate_limit_usage_rows() from public, anon, authenticated, service_role;
grant execute on function pgshield.rate_limit_usage_rows() to service_role;

-- Current usage per key (direct keys: policy null) or per subject and policy,
-- one row per window. Readable by the owner and service_role (pgshield is
-- not exposed by the Data API). It evaluates every live row: for one
-- subject, use public.get_rate_limit_usage(), which reads only its rows.
create or replace view pgshield.rate_limit_usage as
select u.key, u.policy, u.window_seconds, u.algorithm, u.limit_value as "limit", u.used, u.remaining,
       u.reset_at, u.expires_at
  from pgshield.rate_limit_usage_rows() u;
comment on view pgshield.rate_limit_usage is
  'Current usage per key (direct keys: policy null) or per subject and policy, one row per window.';
revoke all on table pgshield.rate_limit_usage from public, anon, authenticated, service_role;
grant select on table pgshield.rate_limit_usage to service_role;

-- A subject's current usage as a JSON array (one object per policy window).
-- Reads only that subject's rows (the primary key starts with the key), so
-- its cost does not grow with other subjects' state.
-- Callers: authenticated (own usage only: p_subject null or auth.uid()),
-- service_role (p_subject required), through public.get_rate_limit_usage.
-- Errors: 22023 bad subject or unknown policy; 42501 another user's usage.
create or replace function pgshield.rate_limit_usage_of(p_subject text, p_policy text)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_subject text := p_subject;
  v_now timestamptz := pgshield.now();
  v_now_us bigint := (extract(epoch from v_now) * 1000000)::bigint;
begin
  if p_subject is not null and length(p_subject) not between 1 and 256 then
    raise exception using errcode = '22023', message = 'p_subject must be 1 to 256 characters';
  end if;
  if not pgshield.caller_is_trusted() then
    if auth.uid() is null or (p_subject is not null and p_subject <> auth.uid()::text) then
      raise exception using errcode = '42501', message = 'only your own usage can be read',
        hint = 'omit p_subject';
    end if;
    v_subject := auth.uid()::text;
  elsif v_subject is null then
    raise exception using errcode = '22023', message = 'p_subject is required for trusted callers';
  end if;
  if p_policy is not null then
    perform pgshield.rate_limit_policy(p_policy);
  end if;
  return coalesce((
    select jsonb_agg(jsonb_build_object(
             'policy', s.policy, 'window_seconds', s.window_seconds, 'name',
             coalesce(w.name, pgshield.rate_limit_window_name(s.window_seconds)),
             'limit', s.limit_value, 'used', e.used, 'remaining', e.remaining, 'reset_at', e.reset_at)
             order by s.policy, s.window_seconds)
      from pgshield.rate_limit_state s
     cross join lateral pgshield.rate_limit_evaluate(s.algorithm, s.limit_value, s.window_seconds, 0,
              v_now_us, s.algorithm, s.window_start, s.count, s.prev_count, s.tat, true) e
      left join lateral (
        select w.name from pgshield.rate_limit_policy_windows w
         where w.policy = s.policy and w.window_seconds = s.window_seconds limit 1
      ) w on true
     where s.key = v_subject and s.policy <> ''
       and (p_policy is null or s.policy = p_policy)
       and s.expires_at > v_now
  ), '[]'::jsonb);
end
$$;

revoke all on function pgshield.rate_limit_usage_of(text, text) from public, anon, authenticated, service_role;
grant execute on function pgshield.rate_limit_usage_of(text, text) to authenticated, service_role;

-- A subject's current usage as a JSON array (one object per policy window).
-- Runs as the invoker. Callers: authenticated (own usage only: p_subject null
-- or auth.uid()), service_role (p_subject required).
-- Errors: 22023 bad subject or unknown policy; 42501 another user's usage.
create or replace function public.get_rate_limit_usage(p_subject text default null, p_policy text default null)
returns jsonb
language plpgsql stable security invoker
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.rate_limit_usage_of(p_subject, p_policy);
end
$$;

revoke all on function public.get_rate_limit_usage(text, text) from public, anon, authenticated, service_role;
grant execute on function public.get_rate_limit_usage(text, text) to authenticated, service_role;

-- Allowed and denied decisions per policy ('' for direct keys) since the
-- counters were last reset, read from the sequences (security definer: the
-- sequences are not granted to anyone).
-- Callers: the owner, service_role (through the view). Errors: none.
create or replace function pgshield.rate_limit_counter_values()
returns table (policy text, allowed bigint, denied bigint)
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select ''::text,
         coalesce(pg_sequence_last_value('pgshield.rate_limit_direct_allowed'::regclass), 0),
         coalesce(pg_sequence_last_value('pgshield.rate_limit_direct_denied'::regclass), 0)
  union all
  select p.name,
         coalesce(pg_sequence_last_value(p.allowed_counter), 0),
         coalesce(pg_sequence_last_value(p.denied_counter), 0)
    from pgshield.rate_limit_policies p
$$;

revoke all on function pgshield.rate_limit_counter_values() from public, anon, authenticated, service_role;
grant execute on function pgshield.rate_limit_counter_values() to service_role;

-- Sequences are not transactional: a decision stays counted even when the
-- caller's transaction rolls back.
create or replace view pgshield.rate_limit_counters as
select c.policy, c.allowed, c.denied from pgshield.rate_limit_counter_values() c;
comment on view pgshield.rate_limit_counters is
  'Allowed and denied decisions per policy (policy '''' = direct keys), read from per-policy sequences.';
revoke all on table pgshield.rate_limit_counters from public, anon, authenticated, service_role;
grant select on table pgshield.rate_limit_counters to service_role;

-- Sets every decision counter back to zero.
-- Callers: the owner. Errors: none.
create or replace function pgshield.reset_rate_limit_counters() returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_seq regclass;
begin
  for v_seq in
    select 'pgshield.rate_limit_direct_allowed'::regclass
    union all select 'pgshield.rate_limit_direct_denied'::regclass
    union all select p.allowed_counter from pgshield.rate_limit_policies p
    union all select p.denied_counter from pgshield.rate_limit_policies p
  loop
    perform setval(v_seq, 1, false);
  end loop;
end
$$;

revoke all on function pgshield.reset_rate_limit_counters() from public, anon, authenticated, service_role;

-- ------------------------------------------------------------- management ----

-- The current storage mode of the state table: 'logged' or 'unlogged'.
-- Callers: the owner, service_role. Errors: none.
create or replace function pgshield.rate_limit_storage() returns text
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select case c.relpersistence when 'u' then 'unlogged' else 'logged' end
    from pg_catalog.pg_class c
   where c.oid = 'pgshield.rate_limit_state'::regclass
$$;

revoke all on function pgshield.rate_limit_storage() from public, anon, authenticated, service_role;
grant execute on function pgshield.rate_limit_storage() to service_role;

-- Sets the persistence of one counter sequence (PostgreSQL 15 and later can
-- make sequences unlogged; older servers keep them logged).
-- Callers: pack functions. Errors: none.
create or replace function pgshield.rate_limit_set_sequence_storage(p_seq regclass, p_mode text)
returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if current_setting('server_version_num')::integer >= 150000 then
    execute format('alter sequence %s set %s', p_seq, case p_mode when 'unlogged' then 'unlogged' else 'logged' end);
  end if;
end
$$;

revoke all on function pgshield.rate_limit_set_sequence_storage(regclass, text)
  from public, anon, authenticated, service_role;

-- Switches the state table (and the decision counters) between 'logged'
-- (durable, replicated) and 'unlogged' (no WAL: faster; emptied after a crash
-- and not readable on replicas). Rewrites the table under an exclusive lock:
-- run it at deploy time. Returns the new mode.
-- Callers: the owner. Errors: 22023 unknown mode.
create or replace function pgshield.set_rate_limit_storage(p_mode text) returns text
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_seq regclass;
begin
  if p_mode is null or p_mode not in ('logged', 'unlogged') then
    raise exception using errcode = '22023', message = 'p_mode must be logged or unlogged';
  end if;
  if pgshield.rate_limit_storage() <> p_mode then
    execute format('alter table pgshield.rate_limit_state set %s', p_mode);
  end if;
  for v_seq in
    select 'pgshield.rate_limit_direct_allowed'::regclass
    union all select 'pgshield.rate_limit_direct_denied'::regclass
    union all select p.allowed_counter from pgshield.rate_limit_policies p
    union all select p.denied_counter from pgshield.rate_limit_policies p
  loop
    perform pgshield.rate_limit_set_sequence_storage(v_seq, p_mode);
  end loop;
  return pgshield.rate_limit_storage();
end
$$;

revoke all on function pgshield.set_rate_limit_storage(text) from public, anon, authenticated, service_role;

-- Creates (if missing) the allowed/denied counter sequences of a policy id,
-- in the state table's storage mode, and returns them.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.rate_limit_counters_for(
  p_id bigint, out allowed_counter regclass, out denied_counter regclass
)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_name text;
begin
  foreach v_name in array array['allowed', 'denied'] loop
    execute format('create sequence if not exists pgshield.%I',
                   format('rate_limit_policy_%s_%s', p_id, v_name));
    execute format('revoke all on sequence pgshield.%I from public, anon, authenticated, service_role',
                   format('rate_limit_policy_%s_%s', p_id, v_name));
    perform pgshield.rate_limit_set_sequence_storage(
      format('pgshield.%I', format('rate_limit_policy_%s_%s', p_id, v_name))::regclass,
      pgshield.rate_limit_storage());
  end loop;
  allowed_counter := format('pgshield.%I', format('rate_limit_policy_%s_allowed', p_id))::regclass;
  denied_counter := format('pgshield.%I', format('rate_limit_policy_%s_denied', p_id))::regclass;
end
$$;

revoke all on function pgshield.rate_limit_counters_for(bigint) from public, anon, authenticated, service_role;

-- Creates or replaces a policy. p_windows maps each tier to its windows, each
-- window a length in seconds (or minute, hour, day, week) and its limit:
--   {"free": {"minute": 10, "hour": 100}, "pro": {"60": 100, "3600": 2000}}
-- p_endpoint_costs maps endpoint names to cost multipliers: {"/v1/chat": 5}.
-- The windows and endpoints given replace the old ones; state is kept.
-- Returns the policy as get_rate_limit_policies() shows it.
-- Callers: service_role. Errors: 22023 bad name, algorithm, unit, windows,
-- default tier or endpoint costs.
create or replace function public.define_rate_limit_policy(
  p_name text,
  p_windows jsonb,
  p_algorithm text default 'sliding_window',
  p_unit text default 'requests',
  p_default_tier text default 'free',
  p_allow_anonymous boolean default false,
  p_endpoint_costs jsonb default '{}'::jsonb,
  p_description text default null
) returns jsonb
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_tier text;
  v_tier_windows jsonb;
  v_window text;
  v_limit jsonb;
  v_seconds integer;
  v_endpoint text;
  v_multiplier jsonb;
  v_id bigint;
  v_counters record;
begin
  if p_name is null or p_name !~ '^[a-z0-9][a-z0-9_.:-]{0,62}$' then
    raise exception using errcode = '22023',
      message = 'p_name must be 1 to 63 characters of a-z, 0-9, _ . : - (starting with a letter or digit)';
  end if;
  if p_algorithm is null or p_algorithm not in ('fixed_window', 'sliding_window', 'token_bucket') then
    raise exception using errcode = '22023',
      message = 'p_algorithm must be fixed_window, sliding_window or token_bucket';
  end if;
  if p_unit is null or p_unit not in ('requests', 'tokens') then
    raise exception using errcode = '22023', message = 'p_unit must be requests or tokens';
  end if;
  if p_allow_anonymous is null then
    raise exception using errcode = '22023', message = 'p_allow_anonymous must not be null';
  end if;
  if p_windows is null or jsonb_typeof(p_windows) <> 'object' or p_windows = '{}'::jsonb then
    raise exception using errcode = '22023',
      message = 'p_windows must be a non-empty object of tier -> {window: limit}',
      hint = '{"free": {"minute": 10, "hour": 100}}';
  end if;
  if p_default_tier is null or not p_windows ? p_default_tier then
    raise exception using errcode = '22023', message = 'p_default_tier must be one of the tiers in p_windows';
  end if;
  if p_endpoint_costs is null or jsonb_typeof(p_endpoint_costs) <> 'object' then
    raise exception using errcode = '22023',
      message = 'p_endpoint_costs must be an object of endpoint -> multiplier';
  end if;

  insert into pgshield.rate_limit_policies as p
    (name, algorithm, unit, default_tier, allow_anonymous, description, allowed_counter, denied_counter)
  values (p_name, p_algorithm, p_unit, p_default_tier, p_allow_anonymous, p_description,
          'pgshield.rate_limit_direct_allowed'::regclass, 'pgshield.rate_limit_direct_denied'::regclass)
  on conflict (name) do update
     set algorithm = excluded.algorithm, unit = excluded.unit, default_tier = excluded.default_tier,
         allow_anonymous = excluded.allow_anonymous, description = excluded.description,
         updated_at = now()
  returning p.id into v_id;
  select * into v_counters from pgshield.rate_limit_counters_for(v_id);
  update pgshield.rate_limit_policies p
     set allowed_counter = v_counters.allowed_counter, denied_counter = v_counters.denied_counter
   where p.name = p_name;

  delete from pgshield.rate_limit_policy_windows w where w.policy = p_name;
  for v_tier, v_tier_windows in select * from jsonb_each(p_windows) loop
    if v_tier !~ '^[a-z0-9][a-z0-9_.:-]{0,62}$' then
      raise exception using errcode = '22023', message = format('p_windows: bad tier name %L', v_tier);
    end if;
    if jsonb_typeof(v_tier_windows) <> 'object' or v_tier_windows = '{}'::jsonb then
      raise exception using errcode = '22023',
        message = format('p_windows: tier %L must map windows to limits', v_tier);
    end if;
    for v_window, v_limit in select * from jsonb_each(v_tier_windows) loop
      v_seconds := case v_window
        when 'second' then 1 when 'minute' then 60 when 'hour' then 3600
        when 'day' then 86400 when 'week' then 604800
        else case when v_window ~ '^[0-9]{1,7}$' then v_window::integer end
      end;
      if v_seconds is null or v_seconds not between 1 and 2678400 then
        raise exception using errcode = '22023',
          message = format('p_windows: bad window %L in tier %L', v_window, v_tier),
          hint = 'seconds from 1 to 2678400, or second, minute, hour, day, week';
      end if;
      if jsonb_typeof(v_limit) <> 'number' or (v_limit::text)::numeric <> floor((v_limit::text)::numeric)
         or (v_limit::text)::numeric not between 1 and 2147483647 then
        raise exception using errcode = '22023',
          message = format('p_windows: the limit of %L in tier %L must be a positive integer', v_window, v_tier);
      end if;
      insert into pgshield.rate_limit_policy_windows (policy, tier, window_seconds, limit_value, name)
      values (p_name, v_tier, v_seconds, (v_limit::text)::integer, pgshield.rate_limit_window_name(v_seconds))
      on conflict (policy, tier, window_seconds) do update set limit_value = excluded.limit_value;
    end loop;
  end loop;

  delete from pgshield.rate_limit_policy_endpoints e where e.policy = p_name;
  for v_endpoint, v_multiplier in select * from jsonb_each(p_endpoint_costs) loop
    if length(v_endpoint) not between 1 and 256 or jsonb_typeof(v_multiplier) <> 'number'
       or (v_multiplier::text)::numeric <= 0 then
      raise exception using errcode = '22023',
        message = format('p_endpoint_costs: endpoint %L needs a positive multiplier', left(v_endpoint, 256));
    end if;
    insert into pgshield.rate_limit_policy_endpoints (policy, endpoint, multiplier)
    values (p_name, v_endpoint, (v_multiplier::text)::numeric);
  end loop;

  return pgshield.rate_limit_policy_json(p_name);
end
$$;

-- (grants below, after rate_limit_policy_json exists)

-- One policy as JSON: its settings, tiers with windows, and endpoint costs.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.rate_limit_policy_json(p_name text) returns jsonb
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select jsonb_build_object(
    'name', p.name, 'algorithm', p.algorithm, 'unit', p.unit, 'default_tier', p.default_tier,
    'allow_anonymous', p.allow_anonymous, 'description', p.description,
    'tiers', coalesce((
      select jsonb_object_agg(t.tier, t.windows)
        from (select w.tier,
                     jsonb_agg(jsonb_build_object('name', w.name, 'window_seconds', w.window_seconds,
                                                  'limit', w.limit_value) order by w.window_seconds) as windows
                from pgshield.rate_limit_policy_windows w
               where w.policy = p.name
               group by w.tier) t), '{}'::jsonb),
    'endpoint_costs', coalesce((
      select jsonb_object_agg(e.endpoint, e.multiplier)
        from pgshield.rate_limit_policy_endpoints e where e.policy = p.name), '{}'::jsonb))
    from pgshield.rate_limit_policies p
   where p.name = p_name
$$;

revoke all on function pgshield.rate_limit_policy_json(text) from public, anon, authenticated, service_role;

revoke all on function public.define_rate_limit_policy(text, jsonb, text, text, text, boolean, jsonb, text)
  from public, anon, authenticated, service_role;
grant execute on function public.define_rate_limit_policy(text, jsonb, text, text, text, boolean, jsonb, text)
  to service_role;

-- Every policy as a JSON array, by name.
-- Callers: service_role. Errors: none.
create or replace function public.get_rate_limit_policies() returns jsonb
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  select coalesce(jsonb_agg(pgshield.rate_limit_policy_json(p.name) order by p.name), '[]'::jsonb)
    from pgshield.rate_limit_policies p
$$;

revoke all on function public.get_rate_limit_policies() from public, anon, authenticated, service_role;
grant execute on function public.get_rate_limit_policies() to service_role;

-- Deletes a policy, its windows, endpoints, counters and state. Returns true
-- when it existed.
-- Callers: service_role. Errors: 22023 null name.
create or replace function public.drop_rate_limit_policy(p_name text) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_policy pgshield.rate_limit_policies;
begin
  if p_name is null then
    raise exception using errcode = '22023', message = 'p_name must not be null';
  end if;
  delete from pgshield.rate_limit_policies p where p.name = p_name returning * into v_policy;
  if not found then
    return false;
  end if;
  delete from pgshield.rate_limit_state s where s.policy = p_name;
  execute format('drop sequence if exists %s, %s', v_policy.allowed_counter, v_policy.denied_counter);
  return true;
end
$$;

revoke all on function public.drop_rate_limit_policy(text) from public, anon, authenticated, service_role;
grant execute on function public.drop_rate_limit_policy(text) to service_role;

-- Assigns a subject (user id or API key) a tier; p_tier null removes the
-- assignment (back to each policy's default tier). Returns the tier.
-- Callers: service_role. Errors: 22023 bad subject or unknown tier.
create or replace function public.set_rate_limit_tier(p_subject text, p_tier text) returns text
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_subject is null or length(p_subject) not between 1 and 256 then
    raise exception using errcode = '22023', message = 'p_subject must be 1 to 256 characters';
  end if;
  if p_tier is null then
    delete from pgshield.rate_limit_subject_tiers t where t.subject = p_subject;
    return null;
  end if;
  if not exists (select 1 from pgshield.rate_limit_policy_windows w where w.tier = p_tier) then
    raise exception using errcode = '22023', message = format('p_tier: unknown tier %L', p_tier),
      hint = 'tiers are those that some policy defines windows for';
  end if;
  insert into pgshield.rate_limit_subject_tiers as t (subject, tier) values (p_subject, p_tier)
  on conflict (subject) do update set tier = excluded.tier, updated_at = now();
  return p_tier;
end
$$;

revoke all on function public.set_rate_limit_tier(text, text) from public, anon, authenticated, service_role;
grant execute on function public.set_rate_limit_tier(text, text) to service_role;

-- ---------------------------------------------------------------- cleanup ----

-- Deletes up to p_batch_size rows whose state expired at least p_expired_for
-- ago (expired state is equivalent to no row), skipping rows that concurrent
-- decisions hold locked, and returns how many it deleted. Call it in a loop
-- until it returns less than the batch. Each batch goes on from the page where
-- this session's previous batch stopped (the custom setting
-- pgshield.rate_limit_cleanup_block, a hint only) and goes round the whole
-- table before it reports less than a batch, so no batch reads again the
-- pages that earlier batches emptied. p_expired_for (the maintenance task's
-- retention) leaves alone keys whose window has only just ended: such a key
-- is often decided on again at once, and that decision would wait for the
-- commit of the cleanup that deleted its row.
-- Callers: the owner, service_role. Errors: 22023 bad batch size or interval.
create or replace function pgshield.cleanup_expired_rate_limits(p_batch_size integer, p_expired_for interval)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_before timestamptz;
  v_from bigint;
  v_lo tid;
  v_hi tid := '(4294967295,65535)'::tid;
  v_count integer := 0;
  v_n integer;
  v_block bigint;
  v_last bigint;
begin
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023', message = 'p_batch_size must be a positive integer';
  end if;
  if p_expired_for is null or p_expired_for < interval '0' then
    raise exception using errcode = '22023', message = 'p_expired_for must be an interval of zero or more';
  end if;
  v_before := pgshield.now() - p_expired_for;
  v_from := least(coalesce(substring(current_setting('pgshield.rate_limit_cleanup_block', true) from '^[0-9]{1,10}$'),
                           '0')::bigint, 4294967294);
  v_lo := format('(%s,0)', v_from)::tid;
  -- From the hint to the end of the table (a TID range scan), then from the
  -- start up to the hint; deleted by ctid, which the row lock keeps stable.
  for v_pass in 1..2 loop
    exit when v_count >= p_batch_size or v_hi = '(0,0)'::tid;
    with d as (
      delete from pgshield.rate_limit_state s
       where s.ctid = any (array(select x.ctid from pgshield.rate_limit_state x
                                  where x.ctid >= v_lo and x.ctid < v_hi and x.expires_at <= v_before
                                  limit p_batch_size - v_count
                                    for update skip locked))
         and s.expires_at <= v_before
      returning (s.ctid::text::point)[0]::bigint as block)
    select count(*)::integer, max(d.block) into v_n, v_block from d;
    v_count := v_count + v_n;
    v_last := coalesce(v_block, v_last);
    v_hi := v_lo;
    v_lo := '(0,0)'::tid;
  end loop;
  perform set_config('pgshield.rate_limit_cleanup_block', coalesce(v_last, 0)::text, false);
  return v_count;
end
$$;

revoke all on function pgshield.cleanup_expired_rate_limits(integer, interval)
  from public, anon, authenticated, service_role;
grant execute on function pgshield.cleanup_expired_rate_limits(integer, interval) to service_role;

-- Deletes up to p_batch_size rows whose state has expired, as the function
-- above with p_expired_for = 0, and returns how many it deleted.
-- Callers: the owner, service_role. Errors: 22023 bad batch size.
create or replace function pgshield.cleanup_expired_rate_limits(p_batch_size integer default 10000)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  return pgshield.cleanup_expired_rate_limits(p_batch_size, interval '0');
end
$$;

revoke all on function pgshield.cleanup_expired_rate_limits(integer) from public, anon, authenticated, service_role;
grant execute on function pgshield.cleanup_expired_rate_limits(integer) to service_role;

-- ---------------------------------------------------------- default tiers ----
-- Editable defaults: "api" counts requests per minute, hour and day;
-- "ai_tokens" counts tokens per day. Existing policies are left as they are.

do $$
begin
  if not exists (select 1 from pgshield.rate_limit_policies p where p.name = 'api') then
    perform public.define_rate_limit_policy(
      'api',
      '{"free":       {"minute": 10,   "hour": 100,   "day": 500},
        "basic":      {"minute": 30,   "hour": 500,   "day": 5000},
        "pro":        {"minute": 100,  "hour": 2000,  "day": 20000},
        "enterprise": {"minute": 1000, "hour": 10000, "day": 100000}}'::jsonb,
      p_algorithm => 'sliding_window', p_unit => 'requests', p_default_tier => 'free',
      p_description => 'API requests per minute, hour and day, by tier');
  end if;
  if not exists (select 1 from pgshield.rate_limit_policies p where p.name = 'ai_tokens') then
    perform public.define_rate_limit_policy(
      'ai_tokens',
      '{"free":       {"day": 50000},
        "basic":      {"day": 500000},
        "pro":        {"day": 2000000},
        "enterprise": {"day": 10000000}}'::jsonb,
      p_algorithm => 'fixed_window', p_unit => 'tokens', p_default_tier => 'free',
      p_description => 'AI tokens per day (UTC), by tier; record the real count with record_rate_limit_usage');
  end if;
end
$$;

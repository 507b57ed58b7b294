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
  updated_at timestamptz not null default now(),
  -- the number of tiers with windows (kept by rate_limit_policy_tier_refresh)
  tiers integer not null default 1
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

-- A tier's windows as arrays in window order (the decision reads one row),
-- with what of its answers is fixed, made once: each window's JSON up to its
-- remaining count (heads), the JSON-escaped start of its RateLimit header
-- (rate_limit_heads) and the tier's RateLimit-Policy header as a JSON string
-- (policy_header). Written only by the trigger on rate_limit_policy_windows.

create table if not exists pgshield.rate_limit_policy_tiers (
  policy text not null references pgshield.rate_limit_policies (name) on delete cascade,
  tier text not null,
  windows integer[] not null,
  limits integer[] not null,
  names text[] not null,
  heads text[] not null,
  rate_limit_heads text[] not null,
  policy_header text not null,
  primary key (policy, tier)
);
comment on table pgshield.rate_limit_policy_tiers is
  'The windows of each policy and tier as arrays in window order, with the fixed parts of each window''s JSON and RateLimit header and the tier''s RateLimit-Policy header (JSON strings); kept from rate_limit_policy_windows by a trigger.';
alter table pgshield.rate_limit_policy_tiers enable row level security;
revoke all on table pgshield.rate_limit_policy_tiers from public, anon, authenticated, service_role;

-- Policy state: one row per (subject, policy) holding every window of the
-- tier it was last written for (element i of each array is windows[i]):
--   fixed_window, sliding_window: starts (window start, epoch microseconds),
--                                 counts, prevs (sliding: the window before)
--   token_bucket:                 tats (GCRA theoretical arrival times)
-- An allowed decision rewrites the row once (HOT, with free room on the page)
-- whatever the number of windows. expires_at: when every window has reset.

create unlogged table if not exists pgshield.rate_limit_policy_state (
  subject text not null,
  policy text not null,
  algorithm text not null,
  windows integer[] not null,
  limits integer[] not null,
  starts bigint[] not null,
  counts bigint[] not null,
  prevs bigint[] not null,
  tats numeric[] not null,
  expires_at timestamptz not null,
  constraint rate_limit_policy_state_pkey primary key (subject, policy)
) with (fillfactor = 70);
comment on table pgshield.rate_limit_policy_state is
  'Policy state: one row per (subject, policy) with every window of the tier it was written for, element i of each array for windows[i].';
alter table pgshield.rate_limit_policy_state enable row level security;
revoke all on table pgshield.rate_limit_policy_state from public, anon, authenticated, service_role;

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

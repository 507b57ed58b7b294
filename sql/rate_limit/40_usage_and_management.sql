-- ------------------------------------------------------------------ usage ----

-- Every window of the policy state as rows in the shape of rate_limit_state
-- (key = subject), read as the decision reads it: the windows of the
-- subject's tier under the policy as it is now (its limits and algorithm),
-- each with the stored window of its length. State written under another
-- algorithm, and windows the tier no longer has, are not shown (the decision
-- ignores them too). A filter on the key (the subject) becomes an index scan.
-- Readers: pack functions (the owner). Not granted to any API role.
create or replace view pgshield.rate_limit_policy_state_windows as
select s.subject as key, s.policy, u.w as window_seconds, p.algorithm, u.l as limit_value,
       timestamptz 'epoch' + s.starts[x.j] * interval '1 microsecond' as window_start,
       coalesce(s.counts[x.j], 0) as count, coalesce(s.prevs[x.j], 0) as prev_count, s.tats[x.j] as tat,
       s.expires_at
  from pgshield.rate_limit_policy_state s
  join pgshield.rate_limit_policies p on p.name = s.policy
  join pgshield.rate_limit_policy_tiers t
    on t.policy = s.policy
   and t.tier = coalesce((select st.tier from pgshield.rate_limit_subject_tiers st
                           where st.subject = s.subject
                             and exists (select 1 from pgshield.rate_limit_policy_tiers t2
                                          where t2.policy = s.policy and t2.tier = st.tier)),
                         p.default_tier)
 cross join lateral unnest(t.windows, t.limits) as u(w, l)
 cross join lateral (select case when s.algorithm = p.algorithm then array_position(s.windows, u.w) end as j) x
 where x.j is not null;
comment on view pgshield.rate_limit_policy_state_windows is
  'Every window of the policy state as the decision reads it (the subject''s tier as it is now), in the shape of rate_limit_state.';
revoke all on table pgshield.rate_limit_policy_state_windows from public, anon, authenticated, service_role;

-- Current usage of every live row, one evaluation of its stored state each;
-- policy state read as the decision reads it (see rate_limit_policy_state_windows).
-- Direct keys only from rate_limit_state: a policy row left there by a call
-- that was in flight while 20261202070000 moved them is never read again and
-- is cleaned up when it expires.
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
    from (select x.key, x.policy, x.window_seconds, x.algorithm, x.limit_value, x.window_start, x.count,
                 x.prev_count, x.tat, x.expires_at
            from pgshield.rate_limit_state x
           where x.policy = ''
          union all
          select w.key, w.policy, w.window_seconds, w.algorithm, w.limit_value, w.window_start, w.count,
                 w.prev_count, w.tat, w.expires_at
            from pgshield.rate_limit_policy_state_windows w) s
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
-- Reads only that subject's rows (the primary key starts with the subject),
-- so its cost does not grow with other subjects' state.
-- Callers: authenticated (own usage only: p_subject null or their subject,
-- pgshield.caller_subject()), service_role (p_subject required), through
-- public.get_rate_limit_usage.
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
    v_subject := pgshield.caller_subject();
    if v_subject is null or (p_subject is not null and p_subject <> v_subject) then
      raise exception using errcode = '42501', message = 'only your own usage can be read',
        hint = 'omit p_subject';
    end if;
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
      from pgshield.rate_limit_policy_state_windows s
     cross join lateral pgshield.rate_limit_evaluate(s.algorithm, s.limit_value, s.window_seconds, 0,
              v_now_us, s.algorithm, s.window_start, s.count, s.prev_count, s.tat, true) e
      left join lateral (
        select w.name from pgshield.rate_limit_policy_windows w
         where w.policy = s.policy and w.window_seconds = s.window_seconds limit 1
      ) w on true
     where s.key = v_subject
       and (p_policy is null or s.policy = p_policy)
       and s.expires_at > v_now
  ), '[]'::jsonb);
end
$$;

revoke all on function pgshield.rate_limit_usage_of(text, text) from public, anon, authenticated, service_role;
grant execute on function pgshield.rate_limit_usage_of(text, text) to authenticated, service_role;

-- A subject's current usage as a JSON array (one object per policy window).
-- Runs as the invoker. Callers: authenticated (own usage only: p_subject null
-- or their subject), service_role (p_subject required).
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
-- make sequences unlogged; older servers keep them logged), only when it
-- differs: ALTER SEQUENCE takes an ACCESS EXCLUSIVE lock even when it changes
-- nothing, and every decision of the policy holds a lock on its counters
-- until its transaction ends (a redefinition would queue behind them and
-- every new decision behind it).
-- Callers: pack functions. Errors: none.
create or replace function pgshield.rate_limit_set_sequence_storage(p_seq regclass, p_mode text)
returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if current_setting('server_version_num')::integer >= 150000
     and (select c.relpersistence from pg_class c where c.oid = p_seq)
         is distinct from (case p_mode when 'unlogged' then 'u' else 'p' end) then
    execute format('alter sequence %s set %s', p_seq, case p_mode when 'unlogged' then 'unlogged' else 'logged' end);
  end if;
end
$$;

revoke all on function pgshield.rate_limit_set_sequence_storage(regclass, text)
  from public, anon, authenticated, service_role;

-- Switches the state tables (and the decision counters) between 'logged'
-- (durable, replicated) and 'unlogged' (no WAL: faster; emptied after a crash
-- and not readable on replicas). Rewrites the tables under an exclusive lock:
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
  if (select case c.relpersistence when 'u' then 'unlogged' else 'logged' end from pg_catalog.pg_class c
       where c.oid = 'pgshield.rate_limit_policy_state'::regclass) <> p_mode then
    execute format('alter table pgshield.rate_limit_policy_state set %s', p_mode);
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
-- Callers: service_role. Errors: 22023 bad name, algorithm, unit, windows
-- (a window named twice, as "60" and "minute", too), default tier or endpoint
-- costs.
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
      -- A whole number written as 50.0 (JSON from a float) is the integer 50.
      insert into pgshield.rate_limit_policy_windows (policy, tier, window_seconds, limit_value, name)
      values (p_name, v_tier, v_seconds, (v_limit::text)::numeric::integer, pgshield.rate_limit_window_name(v_seconds))
      on conflict (policy, tier, window_seconds) do nothing;
      if not found then
        -- Two names of one length ("60" and "minute"): one limit would be
        -- dropped without a word.
        raise exception using errcode = '22023',
          message = format('p_windows: tier %L names the %s-second window twice', v_tier, v_seconds),
          hint = 'second, minute, hour, day and week are 1, 60, 3600, 86400 and 604800 seconds';
      end if;
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

  -- Token buckets keep the tokens they used under the new limits.
  perform pgshield.rate_limit_convert_buckets(p_name, null);
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
-- when it existed. A policy something else names (a Data API guard rule) is
-- refused, changing nothing: drop what names it first.
-- Callers: service_role. Errors: 22023 null name; 2BP01 still named.
create or replace function public.drop_rate_limit_policy(p_name text) returns boolean
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_policy pgshield.rate_limit_policies;
  v_table text;
begin
  if p_name is null then
    raise exception using errcode = '22023', message = 'p_name must not be null';
  end if;
  begin
    delete from pgshield.rate_limit_policies p where p.name = p_name returning * into v_policy;
  exception when foreign_key_violation then
    get stacked diagnostics v_table = table_name;
    raise exception using errcode = '2BP01',
      message = format('policy %L is still named by rows of pgshield.%s', p_name, v_table),
      hint = case when v_table = 'guard_rules'
                  then 'drop the guard rules that name it first: pgshield.guard_rule_list(), pgshield.drop_guard_rule(id)'
                  else 'delete the rows that name it first' end;
  end;
  if not found then
    return false;
  end if;
  delete from pgshield.rate_limit_policy_state s where s.policy = p_name;
  execute format('drop sequence if exists %s, %s', v_policy.allowed_counter, v_policy.denied_counter);
  return true;
end
$$;

revoke all on function public.drop_rate_limit_policy(text) from public, anon, authenticated, service_role;
grant execute on function public.drop_rate_limit_policy(text) to service_role;

-- A token bucket's tat (epoch microseconds) written under p_old_limit per
-- p_window_seconds, as p_new_limit reads the same tokens used: tat is now +
-- used * window / limit; more used than the new limit holds is an empty
-- bucket (a window's wait at most, or the debt as it was where a recorded
-- penalty made it longer). Unchanged when the limits agree or are unknown.
-- Callers: rate_limit_decide, rate_limit_convert_buckets. Errors: none.
create or replace function pgshield.rate_limit_bucket_tat(
  p_tat numeric, p_now_us bigint, p_window_seconds integer, p_old_limit integer, p_new_limit integer
) returns numeric
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case when p_tat > p_now_us and p_old_limit > 0 and p_new_limit <> p_old_limit
              then p_now_us + least((p_tat - p_now_us) * p_old_limit / p_new_limit,
                                    greatest(p_window_seconds * 1000000::numeric, p_tat - p_now_us))
              else p_tat end
$$;

revoke all on function pgshield.rate_limit_bucket_tat(numeric, bigint, integer, integer, integer)
  from public, anon, authenticated, service_role;

-- Converts the token buckets of a policy (p_policy), of a subject
-- (p_subject), or both, to the limits the subject's tier in the policy has
-- now, at once: a bucket keeps the tokens it used, not its time debt
-- (rate_limit_bucket_tat). Converted when the tier or the policy
-- changes, the bucket then refills at the new rate; a decision converts a
-- bucket it finds written under other limits too (one written meanwhile).
-- Returns how many rows it changed.
-- Callers: set_rate_limit_tier, define_rate_limit_policy. Errors: none.
create or replace function pgshield.rate_limit_convert_buckets(p_policy text, p_subject text)
returns integer
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now_us bigint := (extract(epoch from pgshield.now()) * 1000000)::bigint;
  v_n integer;
begin
  if p_policy is not null
     and not exists (select 1 from pgshield.rate_limit_policies p
                      where p.name = p_policy and p.algorithm = 'token_bucket') then
    return 0;  -- nothing to convert: no scan of the policy's state
  end if;
  update pgshield.rate_limit_policy_state s
     set limits = c.limits, tats = c.tats
    from (select b.subject, b.policy,
                 array_agg(coalesce(b.nl, b.l) order by b.o) as limits,
                 array_agg(pgshield.rate_limit_bucket_tat(b.tat, v_now_us, b.w, b.l, b.nl)
                           order by b.o) as tats
            from (select s2.subject, s2.policy, x.w, x.l, x.tat, x.o,
                         t.limits[array_position(t.windows, x.w)] as nl
                    from pgshield.rate_limit_policy_state s2
                    join pgshield.rate_limit_policies p on p.name = s2.policy and p.algorithm = 'token_bucket'
                    join pgshield.rate_limit_policy_tiers t
                      on t.policy = p.name
                     and t.tier = coalesce((select st.tier from pgshield.rate_limit_subject_tiers st
                                             where st.subject = s2.subject
                                               and exists (select 1 from pgshield.rate_limit_policy_tiers t2
                                                            where t2.policy = p.name and t2.tier = st.tier)),
                                           p.default_tier)
                   cross join lateral unnest(s2.windows, s2.limits, s2.tats) with ordinality x(w, l, tat, o)
                   where s2.algorithm = 'token_bucket'
                     and (p_policy is null or s2.policy = p_policy)
                     and (p_subject is null or s2.subject = p_subject)) b
           group by b.subject, b.policy) c
   where s.subject = c.subject and s.policy = c.policy
     and (s.limits is distinct from c.limits or s.tats is distinct from c.tats);
  get diagnostics v_n = row_count;
  return v_n;
end
$$;

revoke all on function pgshield.rate_limit_convert_buckets(text, text)
  from public, anon, authenticated, service_role;

-- Assigns a subject (user id or API key) a tier; p_tier null removes the
-- assignment (back to each policy's default tier). Returns the tier. The
-- subject's token buckets keep the tokens they used (converted now).
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
    perform pgshield.rate_limit_convert_buckets(null, p_subject);
    return null;
  end if;
  if not exists (select 1 from pgshield.rate_limit_policy_windows w where w.tier = p_tier) then
    raise exception using errcode = '22023', message = format('p_tier: unknown tier %L', p_tier),
      hint = 'tiers are those that some policy defines windows for';
  end if;
  insert into pgshield.rate_limit_subject_tiers as t (subject, tier) values (p_subject, p_tier)
  on conflict (subject) do update set tier = excluded.tier, updated_at = now();
  perform pgshield.rate_limit_convert_buckets(null, p_subject);
  return p_tier;
end
$$;

revoke all on function public.set_rate_limit_tier(text, text) from public, anon, authenticated, service_role;
grant execute on function public.set_rate_limit_tier(text, text) to service_role;

-- ---------------------------------------------------------------- cleanup ----

-- Deletes up to p_batch_size rows whose state expired at least p_expired_for
-- ago (expired state is equivalent to no row), from the direct-key state and
-- then the policy state, skipping rows that concurrent decisions hold locked,
-- and returns how many it deleted. Call it in a loop until it returns less
-- than the batch. In each table a batch goes on from the page where this
-- session's previous batch stopped (the custom settings
-- pgshield.rate_limit_cleanup_block and pgshield.rate_limit_cleanup_policy_block,
-- hints only) and goes round the whole table before it reports less than a
-- batch, so no batch reads again the pages that earlier batches emptied.
-- p_expired_for (the maintenance task's retention) leaves alone keys whose
-- window has only just ended: such a key is often decided on again at once,
-- and that decision would wait for the commit of the cleanup that deleted
-- its row.
-- Callers: the owner, service_role. Errors: 22023 bad batch size or interval.
create or replace function pgshield.cleanup_expired_rate_limits(p_batch_size integer, p_expired_for interval)
returns integer
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_now timestamptz := pgshield.now();
  v_before timestamptz;
  v_from bigint;
  v_lo tid;
  v_hi tid;
  v_count integer := 0;
  v_n integer;
  v_block bigint;
  v_last bigint;
  v_table text;
  v_hint text;
begin
  if p_batch_size is null or p_batch_size < 1 then
    raise exception using errcode = '22023', message = 'p_batch_size must be a positive integer';
  end if;
  v_before := pgshield.time_moved(v_now, p_expired_for, true);
  if v_before between v_now - interval '1000 years' and v_now is not true then
    raise exception using errcode = '22023', message = 'p_expired_for must be an interval of zero to 1000 years';
  end if;
  for v_table, v_hint in
    values ('pgshield.rate_limit_state', 'pgshield.rate_limit_cleanup_block'),
           ('pgshield.rate_limit_policy_state', 'pgshield.rate_limit_cleanup_policy_block')
  loop
    exit when v_count >= p_batch_size;
    v_from := least(coalesce(substring(current_setting(v_hint, true) from '^[0-9]{1,10}$'), '0')::bigint,
                    4294967294);
    v_lo := format('(%s,0)', v_from)::tid;
    v_hi := '(4294967295,65535)'::tid;
    v_last := null;
    -- From the hint to the end of the table (a TID range scan), then from the
    -- start up to the hint; deleted by ctid, which the row lock keeps stable.
    for v_pass in 1..2 loop
      exit when v_count >= p_batch_size or v_hi = '(0,0)'::tid;
      execute format($q$
        with d as (
          delete from %1$s s
           where s.ctid = any (array(select x.ctid from %1$s x
                                      where x.ctid >= $1 and x.ctid < $2 and x.expires_at <= $3
                                      limit $4
                                        for update skip locked))
             and s.expires_at <= $3
          returning (s.ctid::text::point)[0]::bigint as block)
        select count(*)::integer, max(d.block) from d$q$, v_table)
        into v_n, v_block using v_lo, v_hi, v_before, p_batch_size - v_count;
      v_count := v_count + v_n;
      v_last := coalesce(v_block, v_last);
      v_hi := v_lo;
      v_lo := '(0,0)'::tid;
    end loop;
    perform set_config(v_hint, coalesce(v_last, 0)::text, false);
  end loop;
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

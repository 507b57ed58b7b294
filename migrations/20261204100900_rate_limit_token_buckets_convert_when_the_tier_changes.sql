-- rate limit: token buckets are converted when the subject's tier or the
-- policy changes, not only by the next decision.
-- 20261204100600 converted a bucket's time debt through its stored limits
-- in the decision, and the converted state was written only by an allowed
-- call: while calls were refused the stored debt went on draining at the old
-- tier's rate, and the wait a refusal gave was wrong (after a downgrade from
-- pro's 100 a minute to free's 2, "retry after 30 s", then refused again at
-- 30 s; after a recorded penalty and an upgrade, hours instead of minutes).
-- set_rate_limit_tier and define_rate_limit_policy now convert the buckets
-- they change, in their own transaction; the decision still converts one
-- written meanwhile under other limits.
-- define_rate_limit_policy also refuses a window named twice and takes a
-- whole number written as 50.0:
-- A tier naming one window twice ({"60": 5, "minute": 100}) kept whichever
-- came last in jsonb's key order (here the looser 100) without a word; it is
-- now 22023. A limit of 50.0 (JSON written from a float, as Python's 100 / 2
-- gives) passed the "positive integer" test and then failed with 22P02
-- naming no parameter; it is now the limit 50.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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

revoke all on function public.define_rate_limit_policy(text, jsonb, text, text, text, boolean, jsonb, text)
  from public, anon, authenticated, service_role;
grant execute on function public.define_rate_limit_policy(text, jsonb, text, text, text, boolean, jsonb, text)
  to service_role;

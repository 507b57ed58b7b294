-- rate_limit: a subject's state under a policy is one row holding every
-- window (pgshield.rate_limit_policy_state), and each tier's windows are one
-- row of arrays (pgshield.rate_limit_policy_tiers, kept by a trigger on
-- rate_limit_policy_windows). A policy decision is then one read and, when
-- allowed, one compare-and-set write of one row, whatever the number of
-- windows. Existing policy state moves over; direct keys stay in
-- pgshield.rate_limit_state.

-- Window lengths and limits are integers, as in rate_limit_policy_windows.
-- squawk-ignore-file prefer-bigint-over-int

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

-- ------------------------------------------------------------------ tables ----

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

-- Same storage mode as the direct-key state.
do $$
begin
  if (select c.relpersistence from pg_catalog.pg_class c where c.oid = 'pgshield.rate_limit_state'::regclass) = 'p'
     and (select c.relpersistence from pg_catalog.pg_class c
           where c.oid = 'pgshield.rate_limit_policy_state'::regclass) = 'u' then
    alter table pgshield.rate_limit_policy_state set logged;
  end if;
end
$$;

-- ----------------------------------------------------------------- tiers ----

-- Rewrites the rate_limit_policy_tiers row of one policy and tier from its
-- windows (deletes it when the tier has none left): the windows in order,
-- and the fixed parts of the answers about them (docs/data_api_guard.md has
-- the header formats).
-- Callers: the trigger below. Errors: none.
create or replace function pgshield.rate_limit_policy_tier_refresh(p_policy text, p_tier text) returns void
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  delete from pgshield.rate_limit_policy_tiers t where t.policy = p_policy and t.tier = p_tier;
  insert into pgshield.rate_limit_policy_tiers
    (policy, tier, windows, limits, names, heads, rate_limit_heads, policy_header)
  select w.policy, w.tier, array_agg(w.window_seconds order by w.window_seconds),
         array_agg(w.limit_value order by w.window_seconds), array_agg(w.name order by w.window_seconds),
         array_agg(format('{"name":%s,"window_seconds":%s,"limit":%s,"remaining":',
                          to_json(w.name), w.window_seconds, w.limit_value) order by w.window_seconds),
         array_agg(substr(to_json(format('"%s-%s";r=', p.name, w.name))::text, 2,
                          length(to_json(format('"%s-%s";r=', p.name, w.name))::text) - 2)
                   order by w.window_seconds),
         to_json(string_agg(format('"%s-%s";q=%s;w=%s%s', p.name, w.name, w.limit_value, w.window_seconds,
                                   case when p.unit = 'requests' then ';qu="requests"' else '' end),
                            ', ' order by w.window_seconds))::text
    from pgshield.rate_limit_policy_windows w
    join pgshield.rate_limit_policies p on p.name = w.policy
   where w.policy = p_policy and w.tier = p_tier
   group by w.policy, w.tier;
end
$$;

revoke all on function pgshield.rate_limit_policy_tier_refresh(text, text)
  from public, anon, authenticated, service_role;

-- Keeps rate_limit_policy_tiers in step with every change of a window.
-- Callers: the trigger. Errors: none.
create or replace function pgshield.rate_limit_policy_windows_changed() returns trigger
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op in ('UPDATE', 'DELETE') then
    perform pgshield.rate_limit_policy_tier_refresh(old.policy, old.tier);
  end if;
  if tg_op in ('INSERT', 'UPDATE') then
    perform pgshield.rate_limit_policy_tier_refresh(new.policy, new.tier);
  end if;
  return null;
end
$$;

revoke all on function pgshield.rate_limit_policy_windows_changed() from public, anon, authenticated, service_role;

drop trigger if exists rate_limit_policy_windows_changed on pgshield.rate_limit_policy_windows;
create trigger rate_limit_policy_windows_changed
  after insert or update or delete on pgshield.rate_limit_policy_windows
  for each row execute function pgshield.rate_limit_policy_windows_changed();

select pgshield.rate_limit_policy_tier_refresh(x.policy, x.tier)
  from (select distinct w.policy, w.tier from pgshield.rate_limit_policy_windows w) x;

-- -------------------------------------------------------------- decisions ----

-- Decides, peeks or records usage for one subject under one policy, over all
-- windows of the subject's tier at once (its assigned tier when the policy
-- defines windows for it, else the policy's default tier). The subject's
-- state is one row holding every window.
--   p_mode 'check': consume p_cost in every window or in none. One plain
--     read (tier, windows, the state row and the clock in one statement)
--     decides; a denial writes nothing. An allowed call writes the row in one
--     update that only changes it if it is still the version that was read
--     (compare and set on xmin), or inserts it if none was read and none is
--     there. When the row had moved, appeared or gone (a reset committed in
--     between), the call locks it (inserted empty when gone), reads it and the
--     clock again, and decides once more on the locked state.
--   p_mode 'peek':  the same decision from the plain read; nothing written.
--   p_mode 'usage': apply p_cost (negative refunds) to every window regardless
--     of the limits, on the locked row; the result then describes a request
--     of cost 1.
--   p_mode 'guard', 'guard_peek': 'check' and 'peek' for the Data API guard.
--     Allowed: the RateLimit and RateLimit-Policy headers are appended to
--     response.headers, windows is null. Denied: windows is the object of
--     headers (with Retry-After when a wait can help) for the 429.
--   p_mode 'guard_silent', 'guard_silent_peek': the same, sending no headers
--     when allowed.
-- Stored windows are matched to the tier's windows by length; state written
-- under another algorithm reads as none.
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
  v_heads text[];
  v_rl_heads text[];
  v_policy_header text;
  v_sent text;
  v_n integer;
  v_now timestamptz;
  v_now_us bigint;
  v_salg text; v_sws integer[]; v_xmin xid;                                -- the stored row
  v_start bigint[]; v_count bigint[]; v_prev bigint[]; v_tat numeric[];   -- its state, per window
  n_start bigint[]; n_count bigint[]; n_prev bigint[]; n_tat numeric[];   -- the state to write
  r_fits boolean[]; r_rem integer[]; r_used bigint[]; r_reset timestamptz[]; r_retry integer[];
  v_expires timestamptz;
  v_e pgshield.rate_limit_eval;
  v_all_fit boolean;
  v_fast boolean;
  v_fixed boolean := p_policy.algorithm = 'fixed_window';
  v_reported boolean := false;  -- a refusal already reports every window as it stands
  v_ok boolean;
  v_k integer;
  v_locked boolean := false;
  v_bind integer;
  v_remaining integer;
  v_json text := '[';
  v_windows boolean := p_mode not like 'guard%';  -- the result's windows is the windows JSON
  v_violated text[] := array[]::text[];
  v_w bigint; v_stored bigint; v_t bigint; v_s0 bigint; v_cur bigint; v_pv bigint;  -- one window
  v_a numeric; v_u numeric;
begin
  select t.tier, t.windows, t.limits, t.names, t.heads, t.rate_limit_heads, t.policy_header,
         s.algorithm, s.windows, s.starts, s.counts, s.prevs, s.tats, s.xmin,
         coalesce((select coalesce(c.frozen_at, clock_timestamp()) + c.shift from pgshield.clock c),
                  clock_timestamp())
    into v_tier, v_ws, v_lim, v_names, v_heads, v_rl_heads, v_policy_header,
         v_salg, v_sws, v_start, v_count, v_prev, v_tat, v_xmin, v_now
    from pgshield.rate_limit_policy_tiers t
    left join pgshield.rate_limit_policy_state s on s.subject = p_subject and s.policy = t.policy
   where t.policy = p_policy.name
     and t.tier = coalesce((select st.tier from pgshield.rate_limit_subject_tiers st
                             where st.subject = p_subject
                               and exists (select 1 from pgshield.rate_limit_policy_tiers t2
                                            where t2.policy = p_policy.name and t2.tier = st.tier)),
                           p_policy.default_tier);
  if v_ws is null then
    raise exception using errcode = '22023',
      message = format('p_policy: policy %L has no windows for its default tier %L',
                       p_policy.name, p_policy.default_tier);
  end if;
  v_n := cardinality(v_ws);
  if p_mode = 'usage' then
    -- Lock the row (inserted empty when missing: an empty row reads as none).
    insert into pgshield.rate_limit_policy_state as s
      (subject, policy, algorithm, windows, limits, starts, counts, prevs, tats, expires_at)
    values (p_subject, p_policy.name, p_policy.algorithm, '{}', '{}', '{}', '{}', '{}', '{}', v_now)
    on conflict (subject, policy) do update set expires_at = s.expires_at where false;
    v_locked := true;
    select s.algorithm, s.windows, s.starts, s.counts, s.prevs, s.tats
      into v_salg, v_sws, v_start, v_count, v_prev, v_tat
      from pgshield.rate_limit_policy_state s where s.subject = p_subject and s.policy = p_policy.name;
  end if;

  <<decide>>
  loop  -- once; again on the locked row when the compare and set found it moved
    v_now_us := (extract(epoch from v_now) * 1000000)::bigint;
    if v_sws is distinct from v_ws or v_salg is distinct from p_policy.algorithm then
      -- The row was written for other windows or another algorithm (or is
      -- missing): each window takes the stored window of its length, if any.
      select array_agg(case when v_salg = p_policy.algorithm then v_start[x.j] end order by x.o),
             array_agg(case when v_salg = p_policy.algorithm then v_count[x.j] end order by x.o),
             array_agg(case when v_salg = p_policy.algorithm then v_prev[x.j] end order by x.o),
             array_agg(case when v_salg = p_policy.algorithm then v_tat[x.j] end order by x.o)
        into v_start, v_count, v_prev, v_tat
        from (select u.o, array_position(v_sws, u.w) as j from unnest(v_ws) with ordinality as u(w, o)) x;
    end if;
    v_fast := p_mode <> 'usage' and p_policy.algorithm <> 'token_bucket';
    if v_fast then
      -- Fixed and sliding windows: rate_limit_evaluate's arithmetic written
      -- out (no call per window). While every window fits: the state to
      -- write, the binding window, the expiry and the windows JSON on the
      -- way. At the first window that does not fit, nothing is consumed: the
      -- loop starts again, and every window reports its state as it stands,
      -- and a window the cost does not fit its wait.
      v_expires := v_now;
      v_bind := null;
      v_json := '[';
      v_k := 1;
      while v_k <= v_n loop
        v_w := v_ws[v_k] * 1000000::bigint;
        v_stored := v_start[v_k];
        v_t := greatest(v_now_us, v_stored);
        v_s0 := v_t - v_t % v_w;  -- v_t is after 1970
        v_cur := case when v_stored = v_s0 then v_count[v_k] else 0 end;
        v_pv := case when v_fixed then 0 when v_stored = v_s0 then v_prev[v_k]
                     when v_stored = v_s0 - v_w then v_count[v_k] else 0 end;
        v_a := v_pv::numeric * (v_w - v_t + v_s0);
        -- ceil(v_a / v_w), the previous window's share: used is count + it.
        v_u := div(v_a + v_w - 1, v_w);
        v_ok := p_cost <= v_lim[v_k] and v_a + (v_cur + p_cost)::numeric * v_w <= v_lim[v_k]::numeric * v_w;
        if v_fast and not v_ok then
          v_fast := false;
          v_k := 1;
          continue;
        end if;
        if v_fast then
          v_cur := v_cur + p_cost;
          n_start[v_k] := v_s0;
          n_count[v_k] := v_cur;
          n_prev[v_k] := v_pv;
        end if;
        r_rem[v_k] := least(greatest(v_lim[v_k] - v_cur - v_u, 0), v_lim[v_k]);
        r_reset[v_k] := timestamptz 'epoch'
          + (case when v_cur > 0 then v_s0 + case when v_fixed then v_w else 2 * v_w end
                  when v_pv > 0 then v_s0 + v_w else v_t end) * interval '1 microsecond';
        if v_fast then
          v_expires := greatest(v_expires, r_reset[v_k]);
          if v_bind is null or r_rem[v_k] <= r_rem[v_bind] then
            v_bind := v_k;
          end if;
          if v_windows then
            v_json := v_json || v_heads[v_k] || r_rem[v_k] || ',"used":' || (v_cur + v_u) || ',"reset_at":'
                      || to_json(r_reset[v_k]) || ',"retry_after_ms":0,"allowed":true},';
          end if;
        else
          r_fits[v_k] := v_ok;
          r_used[v_k] := v_cur + v_u;
          -- The wait, rounded up to the millisecond: to the window's end
          -- (fixed); sliding: until the previous window's weight has fallen
          -- enough, or, when this window alone is too full, until its count
          -- becomes the previous one and weighs little enough.
          r_retry[v_k] := case
            when v_ok then 0
            when p_cost > v_lim[v_k] then -1
            else least(div(case when v_fixed then v_s0 + v_w - v_t
                                when v_lim[v_k] - v_cur - p_cost >= 0
                                then v_w - div((v_lim[v_k] - v_cur - p_cost)::numeric * v_w, v_pv) - (v_t - v_s0)
                                else (v_w - (v_t - v_s0)) + v_w - div((v_lim[v_k] - p_cost)::numeric * v_w, v_cur)
                           end + 999, 1000), 2147483647)
          end;
        end if;
        v_k := v_k + 1;
      end loop;
      v_all_fit := v_fast;
      v_reported := not v_fast;
    else
      v_all_fit := true;
      v_expires := v_now;
      for v_i in 1 .. v_n loop
        v_e := pgshield.rate_limit_evaluate(p_policy.algorithm, v_lim[v_i], v_ws[v_i], p_cost, v_now_us,
          p_policy.algorithm, timestamptz 'epoch' + v_start[v_i] * interval '1 microsecond',
          coalesce(v_count[v_i], 0), coalesce(v_prev[v_i], 0), v_tat[v_i], p_mode = 'usage');
        n_start[v_i] := (extract(epoch from v_e.window_start) * 1000000)::bigint;
        n_count[v_i] := v_e.count;
        n_prev[v_i] := v_e.prev_count;
        n_tat[v_i] := v_e.tat;
        r_fits[v_i] := v_e.fits;
        r_rem[v_i] := v_e.remaining;
        r_used[v_i] := v_e.used;
        r_reset[v_i] := v_e.reset_at;
        r_retry[v_i] := v_e.retry_after_ms;
        v_expires := greatest(v_expires, v_e.reset_at);
        v_all_fit := v_all_fit and v_e.fits;
      end loop;
    end if;
    exit decide when p_mode like '%peek' or not v_all_fit;
    if v_locked or v_xmin is not null then
      -- Compare and set: the row is changed only while it is the version that
      -- was read (or once this call holds it locked).
      update pgshield.rate_limit_policy_state s
         set algorithm = p_policy.algorithm, windows = v_ws, limits = v_lim, starts = n_start,
             counts = n_count, prevs = n_prev, tats = coalesce(n_tat, '{}'), expires_at = v_expires
       where s.subject = p_subject and s.policy = p_policy.name and (v_locked or s.xmin = v_xmin);
    else
      -- None was read: insert it, unless one appeared meanwhile (then locked).
      insert into pgshield.rate_limit_policy_state as s
        (subject, policy, algorithm, windows, limits, starts, counts, prevs, tats, expires_at)
      values (p_subject, p_policy.name, p_policy.algorithm, v_ws, v_lim, n_start, n_count, n_prev,
              coalesce(n_tat, '{}'), v_expires)
      on conflict (subject, policy) do update set expires_at = s.expires_at where false;
    end if;
    exit decide when found;
    -- The row moved since the read, appeared, or is gone (a reset): lock it,
    -- inserting it empty when gone (an empty row reads as none), and read it,
    -- and the clock, again; never back in time.
    insert into pgshield.rate_limit_policy_state as s
      (subject, policy, algorithm, windows, limits, starts, counts, prevs, tats, expires_at)
    values (p_subject, p_policy.name, p_policy.algorithm, '{}', '{}', '{}', '{}', '{}', '{}', v_now)
    on conflict (subject, policy) do update set expires_at = s.expires_at where false;
    v_locked := true;
    select s.algorithm, s.windows, s.starts, s.counts, s.prevs, s.tats
      into v_salg, v_sws, v_start, v_count, v_prev, v_tat
      from pgshield.rate_limit_policy_state s where s.subject = p_subject and s.policy = p_policy.name;
    v_now := greatest(v_now, coalesce((select coalesce(c.frozen_at, clock_timestamp()) + c.shift
                                         from pgshield.clock c), clock_timestamp()));
  end loop;

  if p_mode = 'usage' then
    -- Describe the recorded state as a request of cost 1 would see it.
    v_all_fit := true;
    for v_i in 1 .. v_n loop
      v_e := pgshield.rate_limit_evaluate(p_policy.algorithm, v_lim[v_i], v_ws[v_i], 1, v_now_us,
        p_policy.algorithm, timestamptz 'epoch' + n_start[v_i] * interval '1 microsecond',
        n_count[v_i], n_prev[v_i], n_tat[v_i], false);
      r_fits[v_i] := v_e.fits;
      r_rem[v_i] := v_e.remaining;
      r_used[v_i] := v_e.used;
      r_reset[v_i] := v_e.reset_at;
      r_retry[v_i] := v_e.retry_after_ms;
      v_all_fit := v_all_fit and v_e.fits;
    end loop;
  elsif not v_all_fit and not v_reported then
    -- Nothing is consumed: windows that would have fitted report their
    -- current state rather than the state after the refused cost.
    for v_i in 1 .. v_n loop
      if r_fits[v_i] then
        v_e := pgshield.rate_limit_evaluate(p_policy.algorithm, v_lim[v_i], v_ws[v_i], 0, v_now_us,
          p_policy.algorithm, timestamptz 'epoch' + v_start[v_i] * interval '1 microsecond',
          coalesce(v_count[v_i], 0), coalesce(v_prev[v_i], 0), v_tat[v_i], true);
        r_rem[v_i] := v_e.remaining;
        r_used[v_i] := v_e.used;
        r_reset[v_i] := v_e.reset_at;
      end if;
    end loop;
  end if;

  if not v_fast then
    -- The binding window: among violated windows the longest wait (-1 first),
    -- else the fewest remaining (ties: the longer window).
    v_bind := null;
    v_json := '[';
    for v_i in 1 .. v_n loop
      v_remaining := least(v_remaining, r_rem[v_i]);
      if v_windows then
        v_json := v_json || v_heads[v_i] || r_rem[v_i] || ',"used":' || r_used[v_i] || ',"reset_at":'
                  || to_json(r_reset[v_i]) || ',"retry_after_ms":' || r_retry[v_i] || ',"allowed":'
                  || r_fits[v_i] || '},';
      end if;
      if not r_fits[v_i] then
        v_violated := v_violated || v_names[v_i];
      end if;
      if v_bind is null then
        v_bind := v_i;
      elsif v_all_fit then
        if r_rem[v_i] <= r_rem[v_bind] then
          v_bind := v_i;
        end if;
      elsif not r_fits[v_i] then
        if r_fits[v_bind] or (r_retry[v_bind] <> -1 and (r_retry[v_i] = -1 or r_retry[v_i] >= r_retry[v_bind])) then
          v_bind := v_i;
        end if;
      end if;
    end loop;
  else
    v_remaining := r_rem[v_bind];  -- every window fits: the binding one has the fewest
  end if;

  if p_mode in ('check', 'guard', 'guard_silent') then
    perform nextval(case when v_all_fit then p_policy.allowed_counter else p_policy.denied_counter end);
  end if;
  if not v_windows then
    -- The binding window's RateLimit header; allowed: sent with the tier's
    -- RateLimit-Policy through response.headers (after what is there), the
    -- result's windows then null; denied: the headers object, Retry-After too
    -- when a wait can help, as the result's windows.
    v_json := v_rl_heads[v_bind] || v_remaining || ';t='
              || greatest(ceil(extract(epoch from r_reset[v_bind] - v_now)), 0)::bigint;
    if not v_all_fit then
      v_json := '{"RateLimit": "' || v_json || '", "RateLimit-Policy": ' || v_policy_header
                || case when r_retry[v_bind] > 0
                        then ', "Retry-After": "' || ceil(r_retry[v_bind] / 1000.0)::bigint || '"' else '' end
                || '}';
    elsif p_mode in ('guard', 'guard_peek') then
      v_json := '[{"RateLimit": "' || v_json || '"}, {"RateLimit-Policy": ' || v_policy_header || '}]';
      v_sent := nullif(current_setting('response.headers', true), '');
      perform set_config('response.headers',
        case when v_sent is null then v_json
             else (case when jsonb_typeof(v_sent::jsonb) = 'array' then v_sent::jsonb else '[]'::jsonb end
                   || v_json::jsonb)::text end,
        true);
      v_json := null;
    else
      v_json := null;
    end if;
  else
    v_json := rtrim(v_json, ',') || ']';
  end if;
  return row(v_all_fit, v_lim[v_bind], v_remaining, r_reset[v_bind],
             case when v_all_fit then 0 else r_retry[v_bind] end, p_policy.name, v_tier, p_subject,
             least(greatest(p_cost, -2147483648), 2147483647)::integer, p_policy.unit,
             v_json::jsonb, v_violated)::public.rate_limit_check_result;
end
$$;

revoke all on function pgshield.rate_limit_decide(pgshield.rate_limit_policies, text, bigint, text)
  from public, anon, authenticated, service_role;

-- Forgets a subject under every policy, or only under p_policy. Returns the
-- number of windows forgotten.
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
  with d as (
    delete from pgshield.rate_limit_policy_state s
     where s.subject = p_subject and (p_policy is null or s.policy = p_policy)
    returning cardinality(s.windows) as n)
  select coalesce(sum(d.n), 0)::integer into v_count from d;
  return v_count;
end
$$;

revoke all on function public.reset_rate_limit_subject(text, text) from public, anon, authenticated, service_role;
grant execute on function public.reset_rate_limit_subject(text, text) to service_role;

-- ------------------------------------------------------------------ usage ----

-- Every window of p_subject's policy state as rows in the shape of
-- rate_limit_state (key = subject); an index scan on the subject.
-- Callers: pack functions. Errors: none.
create or replace function pgshield.rate_limit_policy_windows_of(p_subject text)
returns table (
  key text, policy text, window_seconds integer, algorithm text, limit_value integer,
  window_start timestamptz, count bigint, prev_count bigint, tat numeric, expires_at timestamptz
)
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select s.subject, s.policy, u.w, s.algorithm, u.l,
         timestamptz 'epoch' + u.st * interval '1 microsecond', coalesce(u.c, 0), coalesce(u.p, 0), u.tat,
         s.expires_at
    from pgshield.rate_limit_policy_state s
   cross join lateral unnest(s.windows, s.limits, s.starts, s.counts, s.prevs, s.tats) as u(w, l, st, c, p, tat)
   where s.subject = p_subject and u.w is not null
$$;

revoke all on function pgshield.rate_limit_policy_windows_of(text) from public, anon, authenticated, service_role;

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
    from (select x.key, x.policy, x.window_seconds, x.algorithm, x.limit_value, x.window_start, x.count,
                 x.prev_count, x.tat, x.expires_at
            from pgshield.rate_limit_state x
          union all
          select ps.subject, ps.policy, u.w, ps.algorithm, u.l,
                 timestamptz 'epoch' + u.st * interval '1 microsecond', coalesce(u.c, 0), coalesce(u.p, 0),
                 u.tat, ps.expires_at
            from pgshield.rate_limit_policy_state ps
           cross join lateral unnest(ps.windows, ps.limits, ps.starts, ps.counts, ps.prevs, ps.tats)
                        as u(w, l, st, c, p, tat)
           where u.w is not null) s
   cross join lateral pgshield.rate_limit_evaluate(s.algorithm, s.limit_value, s.window_seconds, 0,
            v_now_us, s.algorithm, s.window_start, s.count, s.prev_count, s.tat, true) e
   where s.expires_at > v_now;
end
$$;

revoke all on function pgshield.rate_limit_usage_rows() from public, anon, authenticated, service_role;
grant execute on function pgshield.rate_limit_usage_rows() to service_role;

-- A subject's current usage as a JSON array (one object per policy window).
-- Reads only that subject's rows (the primary key starts with the subject),
-- so its cost does not grow with other subjects' state.
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
      from pgshield.rate_limit_policy_windows_of(v_subject) s
     cross join lateral pgshield.rate_limit_evaluate(s.algorithm, s.limit_value, s.window_seconds, 0,
              v_now_us, s.algorithm, s.window_start, s.count, s.prev_count, s.tat, true) e
      left join lateral (
        select w.name from pgshield.rate_limit_policy_windows w
         where w.policy = s.policy and w.window_seconds = s.window_seconds limit 1
      ) w on true
     where (p_policy is null or s.policy = p_policy)
       and s.expires_at > v_now
  ), '[]'::jsonb);
end
$$;

revoke all on function pgshield.rate_limit_usage_of(text, text) from public, anon, authenticated, service_role;
grant execute on function pgshield.rate_limit_usage_of(text, text) to authenticated, service_role;

-- ------------------------------------------------------------- management ----

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
  delete from pgshield.rate_limit_policy_state s where s.policy = p_name;
  execute format('drop sequence if exists %s, %s', v_policy.allowed_counter, v_policy.denied_counter);
  return true;
end
$$;

revoke all on function public.drop_rate_limit_policy(text) from public, anon, authenticated, service_role;
grant execute on function public.drop_rate_limit_policy(text) to service_role;

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
  if p_expired_for is null or p_expired_for < interval '0' then
    raise exception using errcode = '22023', message = 'p_expired_for must be an interval of zero or more';
  end if;
  v_before := pgshield.now() - p_expired_for;
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

-- ------------------------------------------------------------ state moves ----
-- Each subject's policy rows become one row, windows in order; rows written
-- under another algorithm than the policy's read as none and are dropped.

insert into pgshield.rate_limit_policy_state as n
  (subject, policy, algorithm, windows, limits, starts, counts, prevs, tats, expires_at)
select s.key, s.policy, s.algorithm,
       array_agg(s.window_seconds order by s.window_seconds),
       array_agg(s.limit_value order by s.window_seconds),
       array_agg((extract(epoch from s.window_start) * 1000000)::bigint order by s.window_seconds),
       array_agg(s.count order by s.window_seconds),
       array_agg(s.prev_count order by s.window_seconds),
       array_agg(s.tat order by s.window_seconds),
       max(s.expires_at)
  from pgshield.rate_limit_state s
  join pgshield.rate_limit_policies p on p.name = s.policy and p.algorithm = s.algorithm
 group by s.key, s.policy, s.algorithm
on conflict (subject, policy) do nothing;

delete from pgshield.rate_limit_state s where s.policy <> '';


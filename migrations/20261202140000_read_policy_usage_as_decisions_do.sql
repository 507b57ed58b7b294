-- rate_limit: three fixes from a review of the one-row policy state.
-- * Recorded usage (record_rate_limit_usage, 'usage' mode of
--   rate_limit_decide) reads the clock again once it holds the row: a call
--   that waited for the lock no longer records into a window already over.
-- * Usage (pgshield.rate_limit_usage, get_rate_limit_usage) reads policy
--   state as the decision does: the windows of the subject's tier as the
--   policy is now, with its limits and algorithm; state written under
--   another algorithm and windows the tier no longer has are not shown. One
--   view, pgshield.rate_limit_policy_state_windows, holds that reading;
--   rate_limit_policy_windows_of(subject) is replaced by it.
-- * Direct keys' usage reads only direct keys (policy ''): a policy row that
--   a call in flight during 20261202070000 wrote into rate_limit_state is
--   never read again, and cleanup removes it when it expires.

-- Window lengths and limits are integers, as in rate_limit_policy_windows.
-- squawk-ignore-file prefer-bigint-over-int

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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
    -- The lock may have been waited for: the usage is recorded at the time it
    -- was got, not at the earlier reading (never into a window already over).
    v_now := greatest(v_now, pgshield.now());
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

-- Every window of the policy state as rows in the shape of rate_limit_state
-- (key = subject), read as the decision reads it: the windows of the
-- subject's tier under the policy as it is now (its limits and algorithm),
-- each with the stored window of its length. State written under another
-- algorithm, and windows the tier no longer has, are not shown (the decision
-- ignores them too). A filter on the key becomes an index scan.
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

-- Internal (no API role may call it); its one caller reads the view now.
-- squawk-ignore ban-drop-function
drop function if exists pgshield.rate_limit_policy_windows_of(text);

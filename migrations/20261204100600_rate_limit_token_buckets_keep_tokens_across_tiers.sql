-- rate limit: a decision made while its policy is redefined no longer fails
-- with 22023.
-- rate_limit_check and the Data API guard read the policy in one statement
-- and rate_limit_decide its tier's windows in the next, each with its own
-- snapshot: a redefinition that committed in between and changed the default
-- tier left the first copy naming a tier the second read no longer found,
-- and a valid call failed with 22023 "no windows for its default tier" (HTTP
-- 400; about 1 call in 100 while a policy was redefined in a loop). The
-- decision now reads the policy again when that happens and decides on it as
-- it is. Nothing changes on the path that finds its tier.
-- Also: a token bucket keeps the tokens used when its limit changes.
-- A policy's token bucket stores its time debt (tat, the theoretical arrival
-- time). When a subject changed tier (or the policy was redefined) the debt
-- was read under the new limit as it was: 2 of free's 2 a minute are a full
-- minute of debt, which under pro's 100 a minute is a full bucket, so an
-- upgraded subject was refused for the rest of the minute. The decision now
-- converts the debt through the stored limit (tat = now + used * window /
-- limit), as fixed and sliding windows carry their counts; more used than
-- the new limit holds is an empty bucket (a window's wait at most, or the
-- debt as it was where a recorded penalty made it longer). The stored limits
-- are read with the state row, in the same statement (read apart, a call
-- committed in between under the new tier made them look current).

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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
--     response.headers, and the result is null (the guard needs no more).
--     Denied: SQLSTATE PGRST is raised, which PostgREST answers with HTTP
--     429 and the headers (Retry-After too when a wait can help).
--   p_mode 'guard_silent', 'guard_silent_peek': the same, sending no headers
--     when allowed.
-- Stored windows are matched to the tier's windows by length; state written
-- under another algorithm reads as none.
-- Callers: pack functions. Errors: 22023 when the tier has no windows; PGRST
-- (HTTP 429) for a denial in the guard modes.
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
  v_lock boolean := p_mode = 'usage';  -- lock the row before deciding (usage: always)
  v_bind integer;
  v_remaining integer;
  v_json text := '[';
  v_windows boolean := p_mode not like 'guard%';  -- the result's windows is the windows JSON
  v_violated text[] := array[]::text[];
  v_w bigint; v_stored bigint; v_t bigint; v_s0 bigint; v_cur bigint; v_pv bigint;  -- one window
  v_u bigint; v_r bigint; v_exp bigint; v_bind_r bigint; v_rem bigint;
  v_current pgshield.rate_limit_policies;
  v_slim integer[]; v_j integer;  -- the stored limits (a token bucket's tier change)
begin
  -- The tier's windows, the stored row and the clock in one read. A policy
  -- with one tier decides every subject under it, whatever tier the
  -- subject has: the subject's tier is looked up only when there is a
  -- choice (each part of a statement costs again in every transaction).
  if p_policy.tiers = 1 then
    select t.tier, t.windows, t.limits, t.names, t.heads, t.rate_limit_heads, t.policy_header,
           s.algorithm, s.windows, s.limits, s.starts, s.counts, s.prevs, s.tats, s.xmin,
           coalesce((select coalesce(c.frozen_at, clock_timestamp()) + c.shift from pgshield.clock c),
                    clock_timestamp())
      into v_tier, v_ws, v_lim, v_names, v_heads, v_rl_heads, v_policy_header,
           v_salg, v_sws, v_slim, v_start, v_count, v_prev, v_tat, v_xmin, v_now
      from pgshield.rate_limit_policy_tiers t
      left join pgshield.rate_limit_policy_state s on s.subject = p_subject and s.policy = t.policy
     where t.policy = p_policy.name
       and t.tier = p_policy.default_tier;
  else
    select t.tier, t.windows, t.limits, t.names, t.heads, t.rate_limit_heads, t.policy_header,
           s.algorithm, s.windows, s.limits, s.starts, s.counts, s.prevs, s.tats, s.xmin,
           coalesce((select coalesce(c.frozen_at, clock_timestamp()) + c.shift from pgshield.clock c),
                    clock_timestamp())
      into v_tier, v_ws, v_lim, v_names, v_heads, v_rl_heads, v_policy_header,
           v_salg, v_sws, v_slim, v_start, v_count, v_prev, v_tat, v_xmin, v_now
      from pgshield.rate_limit_policy_tiers t
      left join pgshield.rate_limit_policy_state s on s.subject = p_subject and s.policy = t.policy
     where t.policy = p_policy.name
       and t.tier = coalesce((select st.tier from pgshield.rate_limit_subject_tiers st
                               where st.subject = p_subject
                                 and exists (select 1 from pgshield.rate_limit_policy_tiers t2
                                              where t2.policy = p_policy.name and t2.tier = st.tier)),
                             p_policy.default_tier);
  end if;
  if v_ws is null then
    -- The caller read the policy in an earlier statement: a redefinition
    -- (a new default tier) that committed in between leaves that copy without
    -- the tiers this read sees. Decide on the policy as it is now instead.
    select * into v_current from pgshield.rate_limit_policies p where p.name = p_policy.name;
    if v_current.name is not null and v_current is distinct from p_policy then
      return pgshield.rate_limit_decide(v_current, p_subject, p_cost, p_mode);
    end if;
    raise exception using errcode = '22023',
      message = format('p_policy: policy %L has no windows for its default tier %L',
                       p_policy.name, p_policy.default_tier);
  end if;
  v_n := cardinality(v_ws);
  <<decide>>
  loop  -- once; again on the locked row when the compare and set found it moved
    if v_lock then
      -- Lock the row, inserting it empty when missing or gone (an empty row
      -- reads as none), and read it, and the clock, again: the lock may have
      -- been waited for, and the call is decided (or its usage recorded) at
      -- the time it was got, never back in time nor in a window already over.
      insert into pgshield.rate_limit_policy_state as s
        (subject, policy, algorithm, windows, limits, starts, counts, prevs, tats, expires_at)
      values (p_subject, p_policy.name, p_policy.algorithm, '{}', '{}', '{}', '{}', '{}', '{}', v_now)
      on conflict (subject, policy) do update set expires_at = s.expires_at where false;
      v_locked := true;
      select s.algorithm, s.windows, s.limits, s.starts, s.counts, s.prevs, s.tats
        into v_salg, v_sws, v_slim, v_start, v_count, v_prev, v_tat
        from pgshield.rate_limit_policy_state s where s.subject = p_subject and s.policy = p_policy.name;
      v_now := greatest(v_now, pgshield.now());
    end if;
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
      v_exp := v_now_us;
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
        -- The previous window's share, ceil(pv * (w - elapsed) / w), exactly
        -- (in bigint while the product cannot overflow: w is at most 31 days):
        -- used is count + it, and the cost fits when it fits the limit and
        -- used + cost does too.
        if v_pv <= 3000000 then
          v_u := (v_pv * (v_w - v_t + v_s0) + v_w - 1) / v_w;
        else
          v_u := div(v_pv::numeric * (v_w - v_t + v_s0) + v_w - 1, v_w)::bigint;
        end if;
        v_ok := p_cost <= v_lim[v_k] and v_cur + v_u + p_cost <= v_lim[v_k];
        -- When this window resets (epoch microseconds).
        v_r := case when v_cur + case when v_fast then p_cost else 0 end > 0
                    then v_s0 + case when v_fixed then v_w else 2 * v_w end
                    when v_pv > 0 then v_s0 + v_w else v_t end;
        if v_fast then
          if not v_ok then
            v_fast := false;
            v_remaining := null;
            v_k := 1;
            continue;
          end if;
          v_cur := v_cur + p_cost;
          n_start[v_k] := v_s0;
          n_count[v_k] := v_cur;
          n_prev[v_k] := v_pv;
          v_rem := least(greatest(v_lim[v_k] - v_cur - v_u, 0), v_lim[v_k]);
          v_exp := greatest(v_exp, v_r);
          if v_bind is null or v_rem <= v_remaining then
            v_bind := v_k;
            v_remaining := v_rem;
            v_bind_r := v_r;
          end if;
          if v_windows then
            v_json := v_json || case when v_k > 1 then ',' else '' end || v_heads[v_k] || v_rem
                      || ',"used":' || (v_cur + v_u) || ',"reset_at":'
                      || to_json(timestamptz 'epoch' + v_r * interval '1 microsecond')
                      || ',"retry_after_ms":0,"allowed":true}';
          end if;
        else
          r_fits[v_k] := v_ok;
          r_rem[v_k] := least(greatest(v_lim[v_k] - v_cur - v_u, 0), v_lim[v_k]);
          r_used[v_k] := v_cur + v_u;
          r_reset[v_k] := timestamptz 'epoch' + v_r * interval '1 microsecond';
          -- The wait, rounded up to the millisecond: to the window's end
          -- (fixed); sliding: until the previous window's weight has fallen
          -- enough, or, when this window alone is too full, until its count
          -- becomes the previous one and weighs little enough.
          -- (Each case its own statement: a fixed window does not prepare the
          -- sliding window's numeric arithmetic.)
          if v_ok then
            r_retry[v_k] := 0;
          elsif p_cost > v_lim[v_k] then
            r_retry[v_k] := -1;
          elsif v_fixed then
            r_retry[v_k] := least((v_s0 + v_w - v_t + 999) / 1000, 2147483647);
          else
            r_retry[v_k] := least(div(case when v_lim[v_k] - v_cur - p_cost >= 0
                                           then v_w - div((v_lim[v_k] - v_cur - p_cost)::numeric * v_w, v_pv)
                                                - (v_t - v_s0)
                                           else (v_w - (v_t - v_s0)) + v_w
                                                - div((v_lim[v_k] - p_cost)::numeric * v_w, v_cur)
                                      end + 999, 1000), 2147483647);
          end if;
        end if;
        v_k := v_k + 1;
      end loop;
      v_all_fit := v_fast;
      v_reported := not v_fast;
      if v_fast then
        v_expires := timestamptz 'epoch' + v_exp * interval '1 microsecond';
        r_reset[v_bind] := timestamptz 'epoch' + v_bind_r * interval '1 microsecond';
      end if;
    else
      if p_policy.algorithm = 'token_bucket' and v_salg = 'token_bucket' then
        -- A bucket written under another limit keeps the tokens it used, not
        -- its time debt (rate_limit_bucket_tat). set_rate_limit_tier and
        -- define_rate_limit_policy convert the buckets they change; this
        -- converts one written meanwhile (by a call decided on the old tier).
        -- The limits come with the state row, in the same read.
        for v_i in 1 .. v_n loop
          v_j := array_position(v_sws, v_ws[v_i]);
          if v_slim[v_j] <> v_lim[v_i] then
            v_tat[v_i] := pgshield.rate_limit_bucket_tat(v_tat[v_i], v_now_us, v_ws[v_i], v_slim[v_j], v_lim[v_i]);
          end if;
        end loop;
      end if;
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
    -- The row moved since the read, appeared, or is gone (a reset): decide
    -- again on the locked row.
    v_lock := true;
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
        v_json := v_json || case when v_i > 1 then ',' else '' end || v_heads[v_i] || r_rem[v_i]
                  || ',"used":' || r_used[v_i] || ',"reset_at":' || to_json(r_reset[v_i])
                  || ',"retry_after_ms":' || r_retry[v_i] || ',"allowed":' || r_fits[v_i] || '}';
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
  end if;  -- else every window fits: v_remaining is the binding one's, the fewest

  if p_mode in ('check', 'guard', 'guard_silent') then
    -- An assignment, not PERFORM (a query): a simple expression. The value
    -- is not needed; v_w (one window's length) is free by now.
    v_w := nextval(case when v_all_fit then p_policy.allowed_counter else p_policy.denied_counter end);
  end if;
  if not v_windows then
    -- The binding window's RateLimit header; allowed: sent with the tier's
    -- RateLimit-Policy through response.headers (after what is there), the
    -- result's windows then null; denied: the headers object, Retry-After too
    -- when a wait can help, as the result's windows.
    -- t: whole seconds until the binding window resets (v_w again free).
    if v_fast then  -- every window fitted: the reset time is at hand in microseconds
      v_w := greatest((v_bind_r - v_now_us + 999999) / 1000000, 0);
    else
      v_w := greatest(ceil(extract(epoch from r_reset[v_bind] - v_now)), 0)::bigint;
    end if;
    v_json := v_rl_heads[v_bind] || v_remaining || ';t=' || v_w;
    if not v_all_fit then
      -- Denied: the guard's answer is raised here, in PostgREST's form (a
      -- JSON message, the body; a JSON detail, the status and the headers,
      -- Retry-After when a wait can help), written as text: no result row and
      -- no jsonb built only to be printed.
      raise sqlstate 'PGRST' using
        message = format('{"code": "PT429", "message": "Too many requests", "details": %s, "hint": %s}',
          to_json(format('rate limit %s exceeded (%s)', p_policy.name, array_to_string(v_violated, ', '))),
          to_json(case when r_retry[v_bind] > 0 then format('retry after %s ms', r_retry[v_bind])
                       else 'this request can never fit the limit' end)),
        detail = '{"status": 429, "headers": {"RateLimit": "' || v_json || '", "RateLimit-Policy": '
                 || v_policy_header
                 || case when r_retry[v_bind] > 0
                         then ', "Retry-After": "' || (r_retry[v_bind]::bigint + 999) / 1000 || '"' else '' end
                 || '}}';
    elsif p_mode in ('guard', 'guard_peek') then
      v_json := '[{"RateLimit": "' || v_json || '"}, {"RateLimit-Policy": ' || v_policy_header || '}]';
      v_sent := nullif(current_setting('response.headers', true), '');
      if v_sent is not null then
        v_json := (case when jsonb_typeof(v_sent::jsonb) = 'array' then v_sent::jsonb else '[]'::jsonb end
                   || v_json::jsonb)::text;
      end if;
      v_sent := set_config('response.headers', v_json, true);
      return null;  -- allowed: the guard needs nothing more (no result row to build)
    else
      return null;
    end if;
  else
    v_json := v_json || ']';
  end if;
  return row(v_all_fit, v_lim[v_bind], v_remaining, r_reset[v_bind],
             case when v_all_fit then 0 else r_retry[v_bind] end, p_policy.name, v_tier, p_subject,
             least(greatest(p_cost, -2147483648), 2147483647)::integer, p_policy.unit,
             v_json::jsonb, v_violated)::public.rate_limit_check_result;
end
$$;

revoke all on function pgshield.rate_limit_decide(pgshield.rate_limit_policies, text, bigint, text)
  from public, anon, authenticated, service_role;

-- -------------------------------------------------------- policy decisions ----

-- Rewrites the rate_limit_policy_tiers row of one policy and tier from its
-- windows (deletes it when the tier has none left): the windows in order,
-- and the fixed parts of the answers about them (docs/data_api_guard.md has
-- the header formats).
-- Keeps the policy's count of tiers (rate_limit_policies.tiers) with it.
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
  -- How many tiers the policy has: with one, a decision does not look up
  -- the subject's tier (rate_limit_decide).
  update pgshield.rate_limit_policies p set tiers = c.n
    from (select greatest(count(*), 1)::integer as n
            from pgshield.rate_limit_policy_tiers t where t.policy = p_policy) c
   where p.name = p_policy and p.tiers <> c.n;
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
    -- A policy name has at most 63 characters: no more than 64 of a caller's
    -- string is echoed.
    raise exception using errcode = '22023', message = format('p_policy: unknown policy %L', left(p_policy, 64)),
      hint = 'list the policies with public.get_rate_limit_policies()';
  end if;
  return v_policy;
end
$$;

revoke all on function pgshield.rate_limit_policy(text) from public, anon, authenticated, service_role;

-- The subject a policy call acts on, from the caller's role:
--   trusted (service_role, owner): p_subject, which is then required;
--   authenticated: pgshield.caller_subject() (the user id; a third-party
--   provider's sub as 'sub:<sub>'), p_subject must be null or the same;
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
  v_sub text;
begin
  if p_subject is not null and length(p_subject) not between 1 and 256 then
    raise exception using errcode = '22023', message = 'p_subject must be 1 to 256 characters';
  end if;
  if v_role = 'authenticated' then
    v_sub := pgshield.caller_subject();
    if v_sub is null then
      raise exception using errcode = '42501', message = 'no user id (sub) in the JWT';
    end if;
    if p_subject is not null and p_subject <> v_sub then
      raise exception using errcode = '42501',
        message = 'p_subject is only honoured for service_role',
        hint = 'authenticated callers are always limited as themselves: omit p_subject';
    end if;
    return v_sub;
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
      message = format('p_endpoint: unknown endpoint %L for policy %L', left(p_endpoint, 256), left(p_policy, 64)),
      hint = 'omit p_endpoint, or add it with define_rate_limit_policy(p_endpoint_costs => ...)';
  end if;
  -- Any cost past the largest limit (an integer) never fits: a large
  -- multiplier is a denial with retry_after_ms -1, never a bigint overflow.
  return least(ceil(p_cost * v_multiplier), 2147483648)::bigint;
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
  v_sub text;
  v_claims jsonb;
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
      -- pgshield.caller_subject(), inline.
      v_claims := nullif(current_setting('request.jwt.claims', true), '')::jsonb;
      v_sub := nullif(coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''), v_claims ->> 'sub'), '');
      begin
        v_sub := v_sub::uuid::text;
      exception when invalid_text_representation then
        v_sub := case when length(v_sub) <= 200 then 'sub:' || v_sub else 'subh:' || md5(v_sub) end;
      end;
      if v_claims ->> 'is_anonymous' = 'true' then  -- a Supabase anonymous sign-in
        v_sub := coalesce(pgshield.anonymous_user_subject(), v_sub);
      end if;
      if v_sub is null then
        raise exception using errcode = '42501', message = 'no user id (sub) in the JWT';
      end if;
      if p_subject is not null and p_subject <> v_sub then
        raise exception using errcode = '42501',
          message = 'p_subject is only honoured for service_role',
          hint = 'authenticated callers are always limited as themselves: omit p_subject';
      end if;
      p_subject := v_sub;
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
-- their user id, pgshield.caller_subject()); anon when the policy allows
-- anonymous callers (keyed by the
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
-- denied), a negative one is refunded (never below zero), 0 (an estimate
-- that was exact) records nothing and writes nothing. Returns what a
-- request of cost 1 would get now.
-- Callers: service_role.
-- Errors: 22023 unknown policy, bad subject, p_amount null.
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
  if p_amount is null then
    raise exception using errcode = '22023', message = 'p_amount must be an integer',
      hint = 'positive records usage, negative refunds it, 0 records nothing';
  end if;
  if p_amount = 0 then
    return pgshield.rate_limit_decide(v_policy, p_subject, 1, 'peek');
  end if;
  return pgshield.rate_limit_decide(v_policy, p_subject, p_amount, 'usage');
end
$$;

revoke all on function public.record_rate_limit_usage(text, text, integer)
  from public, anon, authenticated, service_role;
grant execute on function public.record_rate_limit_usage(text, text, integer) to service_role;

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

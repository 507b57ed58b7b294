-- pgshield 0.2.0: cheaper allowed policy checks and guarded requests (issue 13).
--
-- rate_limit_decide: when every window of a fixed or sliding window policy
-- fits, the windows are judged inline with rate_limit_evaluate's arithmetic
-- for that case instead of one call per window (a refusal and token buckets
-- still go through rate_limit_evaluate); the windows of the result are built
-- as text and parsed once instead of with jsonb_build_object per window;
-- the written windows are collected with one aggregate instead of two; the
-- read takes the tier from the windows it joined, so the subject's tier is
-- looked up once (naming the lookup's result twice had the planner run it
-- twice).
-- request_guard_decide builds the headers itself, in the statement
-- guard_headers ran (its only caller; dropped), reading the clock there
-- (what pgshield.now() does) instead of calling either, for allowed and
-- denied requests in one place; when the request has no response.headers
-- yet it writes the text jsonb would print instead of building the jsonb.
-- Decisions, results, errors, headers and the order of locking are
-- unchanged.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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

-- The decision behind request_guard(): the first matching rule, the subject,
-- the rate limit decision, and the answer. The subject is auth.uid() for
-- authenticated callers, the client address (pgshield.client_address(): the
-- configured header and trusted proxy hops, never the first x-forwarded-for
-- entry) for anon, 'service_role' for service_role. Read-only transactions
-- are checked, not counted. Allowed: the rate limit headers are appended to
-- response.headers (what the project's hook set stays). Denied: SQLSTATE
-- PGRST, which PostgREST turns into HTTP 429 with the headers. The rule, its
-- policy and the options are one read.
-- Callers: request_guard (anon, authenticated, service_role).
-- Errors: PGRST (429) when the quota is used up.
create or replace function pgshield.request_guard_decide() returns void
language plpgsql volatile security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_role text := current_setting('role');
  v_method text := upper(coalesce(nullif(current_setting('request.method', true), ''), 'GET'));
  v_path text := coalesce(nullif(current_setting('request.path', true), ''), '/');
  v_rule record;
  v_policy pgshield.rate_limit_policies;
  v_subject text;
  v_res public.rate_limit_check_result;
  v_headers jsonb;
  v_sent jsonb;
begin
  if v_role = 'none' then
    v_role := session_user;
  end if;
  select r.cost, p as policy, o.allowed_headers into v_rule
    from pgshield.guard_rules r
    left join pgshield.rate_limit_policies p on p.name = r.policy
    left join pgshield.guard_options o on o.id
   where (r.role = v_role or (r.role = '*' and v_role in ('anon', 'authenticated')))
     and (r.method = '*' or r.method = v_method)
     and v_path like r.path_like
   order by r.position, r.id
   limit 1;
  if not found or v_rule.policy is null then
    return;  -- no rule, or an exempt one
  end if;
  v_policy := v_rule.policy;
  v_subject := case v_role
    when 'authenticated' then coalesce(auth.uid()::text, 'anon:' || coalesce(pgshield.client_address(), 'unknown'))
    when 'anon' then 'anon:' || coalesce(pgshield.client_address(), 'unknown')
    else v_role
  end;
  v_res := pgshield.rate_limit_decide(v_policy, v_subject, v_rule.cost,
    case when current_setting('transaction_read_only') = 'on' then 'peek' else 'check' end);
  if v_res.allowed and not coalesce(v_rule.allowed_headers, true) then
    return;
  end if;
  -- The rate limit headers, as one JSON object of header name -> value (the
  -- IETF httpapi draft's RateLimit-Policy and RateLimit, and Retry-After on a
  -- denial that can succeed later), in one statement over the windows, at
  -- pgshield.now() (read here, no call).
  select jsonb_build_object(
           'RateLimit-Policy',
           string_agg(format('"%s-%s";q=%s;w=%s%s', v_res.policy, w ->> 'name', w ->> 'limit',
                             w ->> 'window_seconds',
                             case when v_res.unit = 'requests' then ';qu="requests"' else '' end), ', '),
           'RateLimit',
           format('"%s-%s";r=%s;t=%s', v_res.policy,
                  coalesce((array_agg(w ->> 'name')
                              filter (where (w ->> 'limit')::integer = v_res."limit"
                                        and (w ->> 'reset_at')::timestamptz = v_res.reset_at))[1],
                           (array_agg(w ->> 'name'))[1]),
                  v_res.remaining,
                  greatest(ceil(extract(epoch from v_res.reset_at
                    - coalesce((select coalesce(c.frozen_at, clock_timestamp()) + c.shift from pgshield.clock c),
                               clock_timestamp()))), 0)::bigint))
         || case when not v_res.allowed and v_res.retry_after_ms > 0
                 then jsonb_build_object('Retry-After', ceil(v_res.retry_after_ms / 1000.0)::bigint::text)
                 else '{}'::jsonb end
    into v_headers
    from jsonb_array_elements(v_res.windows) w;
  if v_res.allowed then
    v_sent := nullif(current_setting('response.headers', true), '')::jsonb;
    if v_sent is null then
      -- Nothing sent yet: the text jsonb would print, without building it.
      perform set_config('response.headers', format('[{"RateLimit": %s}, {"RateLimit-Policy": %s}]',
        v_headers -> 'RateLimit', v_headers -> 'RateLimit-Policy'), true);
      return;
    end if;
    perform set_config('response.headers',
      (case when jsonb_typeof(v_sent) = 'array' then v_sent else '[]'::jsonb end
       || jsonb_build_array(jsonb_build_object('RateLimit', v_headers -> 'RateLimit'),
                            jsonb_build_object('RateLimit-Policy', v_headers -> 'RateLimit-Policy')))::text,
      true);
    return;
  end if;
  raise sqlstate 'PGRST' using
    message = jsonb_build_object(
      'code', 'PT429',
      'message', 'Too many requests',
      'details', format('rate limit %s exceeded (%s)', v_policy.name, array_to_string(v_res.violated, ', ')),
      'hint', case when v_res.retry_after_ms > 0
                   then format('retry after %s ms', v_res.retry_after_ms)
                   else 'this request can never fit the limit' end)::text,
    detail = jsonb_build_object('status', 429, 'headers', v_headers)::text;
end
$$;

revoke all on function pgshield.request_guard_decide() from public, anon, authenticated, service_role;
grant execute on function pgshield.request_guard_decide() to anon, authenticated, service_role;

-- Its statement is part of request_guard_decide now (an internal function:
-- no client calls it).
-- squawk-ignore ban-drop-function
drop function if exists pgshield.guard_headers(public.rate_limit_check_result, timestamptz);

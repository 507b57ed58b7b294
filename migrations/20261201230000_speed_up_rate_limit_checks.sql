-- pgshield 0.2.0: policy checks in fewer statements and calls (issue 13).
--
-- rate_limit_decide: the plain read also reads the clock, and an allowed
-- check is one compare-and-set upsert of every window (a row changes only if
-- it still holds the state that was read) instead of a locking insert, a
-- second read and an update. When some row has moved, the upsert has still
-- locked every window's row; the call is decided again on the locked state
-- (at a clock read again) and every row written to the outcome; a row that
-- was read but deleted since (a reset committed meanwhile) is inserted empty,
-- never with the state computed from the read. Decisions, results and the
-- windows' order of locking are unchanged.
-- rate_limit_check: authenticated and service_role callers without an
-- endpoint run the policy, subject and cost checks inline (same checks, same
-- order, same errors) instead of through three nested functions.
-- increment_rate_limit reads pgshield.clock itself (what pgshield.now()
-- does) instead of calling it; for fixed_window that reading is part of the
-- upsert (one statement per decision). A fixed window refused at that reading
-- is explained at a later one; when it fits there (the window rolled over
-- while the call waited, with the row locked), it is allowed and written.

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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
  v_alg text[];
  v_start timestamptz[];
  v_count bigint[];
  v_prev bigint[];
  v_tat numeric[];
  v_wrote integer[];
  v_e pgshield.rate_limit_eval;
  v_evals pgshield.rate_limit_eval[] := array[]::pgshield.rate_limit_eval[];
  v_all_fit boolean := true;
  v_rows integer := 0;
  v_res public.rate_limit_check_result;
  v_bind integer;
  v_remaining integer;
  v_windows jsonb := '[]'::jsonb;
  v_violated text[] := array[]::text[];
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
    from (select t.tier, w.window_seconds, w.limit_value, w.name, s.algorithm, s.window_start,
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

  if p_mode <> 'usage' then
    for v_i in 1 .. v_n loop
      v_e := pgshield.rate_limit_evaluate(p_policy.algorithm, v_lim[v_i], v_ws[v_i], p_cost, v_now_us,
        v_alg[v_i], v_start[v_i], v_count[v_i], v_prev[v_i], v_tat[v_i], false);
      v_evals := v_evals || v_e;
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
    select count(*) filter (where decided), array_agg(window_seconds) filter (where decided)
      into v_rows, v_wrote from written;
  end if;

  if p_mode = 'usage' or (p_mode = 'check' and v_all_fit and v_rows < v_n) then
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
    v_windows := v_windows || jsonb_build_object(
      'name', v_names[v_i], 'window_seconds', v_ws[v_i], 'limit', v_lim[v_i],
      'remaining', v_e.remaining, 'used', v_e.used, 'reset_at', v_e.reset_at,
      'retry_after_ms', v_e.retry_after_ms, 'allowed', v_e.fits);
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
  v_res.allowed := v_all_fit;
  v_res."limit" := v_lim[v_bind];
  v_res.remaining := v_remaining;
  v_res.reset_at := v_e.reset_at;
  v_res.retry_after_ms := case when v_all_fit then 0 else v_e.retry_after_ms end;
  v_res.policy := p_policy.name;
  v_res.tier := v_tier;
  v_res.subject := p_subject;
  v_res.cost := least(greatest(p_cost, -2147483648), 2147483647)::integer;
  v_res.unit := p_policy.unit;
  v_res.windows := v_windows;
  v_res.violated := v_violated;

  if p_mode = 'check' then
    perform nextval(case when v_all_fit then p_policy.allowed_counter else p_policy.denied_counter end);
  end if;
  return v_res;
end
$$;

revoke all on function pgshield.rate_limit_decide(pgshield.rate_limit_policies, text, bigint, text)
  from public, anon, authenticated, service_role;

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

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
--                 max(tat, now) + cost * T - now <= w; the new tat is that sum
--                 (recorded usage: at most now + 100 years).
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
      -- Recorded usage moves tat at most 100 years ahead (a longer penalty is
      -- that one): past it reset_at left the timestamp range (22008, nothing
      -- recorded) or year 9999 (no client could read the answer).
      v_r.fits := true;
      v_r.tat := least(greatest(v_tat0 + p_cost * v_t, p_now_us), p_now_us + 3155760000000000::numeric);
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

-- Whether a row increment_rate_limit has just inserted (it holds it) was
-- judged in a window that is still current, counting the allowed decision
-- if so. If not, the call read the clock before its window ended and then
-- waited for the row, which a cleanup deleted meanwhile (a late call would
-- otherwise start the ended window afresh, past its limit): the row is
-- removed again, and the call is judged anew on the clock now.
-- Callers: increment_rate_limit. Errors: none.
create or replace function pgshield.rate_limit_direct_inserted(p_key text, p_window_seconds integer)
returns boolean
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
begin
  if exists (select 1 from pgshield.rate_limit_state s
              where s.key = p_key and s.policy = '' and s.window_seconds = p_window_seconds
                and s.window_start + s.window_seconds * interval '1 second' > pgshield.now()) then
    perform nextval('pgshield.rate_limit_direct_allowed'::regclass);
    return true;
  end if;
  delete from pgshield.rate_limit_state s
   where s.key = p_key and s.policy = '' and s.window_seconds = p_window_seconds;
  return false;
end
$$;

revoke all on function pgshield.rate_limit_direct_inserted(text, integer)
  from public, anon, authenticated, service_role;

-- Consumes p_cost from key p_key if it fits in p_limit per p_window_seconds,
-- atomically: one insert ... on conflict do update ... where <fits>. A denied
-- request changes no row (the conflicting row is only locked, then read).
-- This is the hot path: PL/pgSQL pays for every statement and expression it
-- evaluates, so an allowed decision is one argument test, one clock reading,
-- one upsert that does the window arithmetic and returns the answer (and
-- counts it), and a return. A fixed window already in its current window,
-- the commonest call of all, is one plain update before any of that (an
-- update costs less than an upsert that finds its row).
-- pgshield.rate_limit_evaluate() is the reference (denials, peeks) and the
-- tests hold the two together.
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
  -- A fixed window whose row is already in the current window and has room:
  -- one update, no argument test. Rows are only ever written by calls whose
  -- arguments passed it, so only the cost needs a test here (a limit below 1
  -- or a null argument matches no row). Anything else (a new window, a
  -- missing row, another algorithm, a denial, a row already in a newer
  -- window) matches nothing and takes the general path below. A call that
  -- waited for the row is judged again on the row as the other call left it,
  -- and, on the real clock, at the time it got it (the window must still be
  -- the current one; a test clock set with set_clock is read once). In a
  -- read-only transaction the update fails (25006) before any argument test.
  if p_algorithm = 'fixed_window' then
    update pgshield.rate_limit_state s
       set count = s.count + p_cost, limit_value = p_limit,
           expires_at = s.window_start + p_window_seconds * interval '1 second'
     where s.key = p_key and s.policy = '' and s.window_seconds = p_window_seconds
       and s.algorithm = 'fixed_window' and p_cost >= 1
       and s.window_start = date_bin(p_window_seconds * interval '1 second',
                                     coalesce((select coalesce(c.frozen_at, clock_timestamp()) + c.shift
                                                 from pgshield.clock c), clock_timestamp()),
                                     timestamptz '1970-01-01 00:00:00+00')
       and s.count + p_cost <= p_limit
    returning true, p_limit, greatest(p_limit - s.count, 0)::integer, s.expires_at,
              (0 * nextval('pgshield.rate_limit_direct_allowed'::regclass))::integer,
              p_key, p_algorithm, p_window_seconds, p_cost
      into v_res;
    if found then
      return v_res;
    end if;
  end if;

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
    -- hands back the finished result. Same in the two branches below. A row
    -- it inserted (xmax 0) answers -1 instead, uncounted: the call may have
    -- read the clock before its window ended and waited for a row that a
    -- cleanup then deleted, and is judged again if that window is over.
    returning true, p_limit, greatest(p_limit - s.count, 0)::integer, s.expires_at,
              (case when s.xmax = 0 then -1 else 0 * nextval('pgshield.rate_limit_direct_allowed'::regclass) end)::integer,
              p_key, p_algorithm, p_window_seconds, p_cost
      into v_res;
    if found then
      if v_res.retry_after_ms = 0 then
        return v_res;
      end if;
      -- -1: the row was inserted, not updated (see rate_limit_direct_inserted).
      if pgshield.rate_limit_direct_inserted(p_key, p_window_seconds) then
        v_res.retry_after_ms := 0;
        return v_res;
      end if;
      return public.increment_rate_limit(p_key, p_limit, p_window_seconds, p_cost, p_algorithm);
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
              (case when s.xmax = 0 then -1 else 0 * nextval('pgshield.rate_limit_direct_allowed'::regclass) end)::integer,
              p_key, p_algorithm, p_window_seconds, p_cost
      into v_res;
    if found then
      if v_res.retry_after_ms = 0 then
        return v_res;
      end if;
      -- -1: the row was inserted, not updated (see rate_limit_direct_inserted).
      if pgshield.rate_limit_direct_inserted(p_key, p_window_seconds) then
        v_res.retry_after_ms := 0;
        return v_res;
      end if;
      return public.increment_rate_limit(p_key, p_limit, p_window_seconds, p_cost, p_algorithm);
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

-- A grant rewrites the function's catalog row and leaves its default
-- arguments compressed, which every call that relies on them (planned anew:
-- clients without prepared statements) pays to decompress. Created again
-- from its own definition, after the grants, the row is written whole and
-- they stay uncompressed; the grants stay.
do $$
begin
  execute pg_catalog.pg_get_functiondef(
    'public.increment_rate_limit(text, integer, integer, integer, text)'::pg_catalog.regprocedure);
end
$$;

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
-- zero); 0 (an estimate that was exact) records nothing and writes nothing.
-- Returns what a request of cost 1 would get now (not consumed).
-- Callers: service_role.
-- Errors: 22023 bad key, limit, window, algorithm, or p_amount null.
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
  if p_amount is null then
    raise exception using errcode = '22023', message = 'p_amount must be an integer',
      hint = 'positive records usage, negative refunds it, 0 records nothing';
  end if;
  if p_amount = 0 then
    return public.peek_rate_limit(p_key, p_limit, p_window_seconds, 1, p_algorithm);
  end if;
  v_now_us := pgshield.rate_limit_now_us();
  -- Lock the row (or create it empty), then apply, at the time the row was
  -- got (the lock may have been waited for): never in a window that ended
  -- meanwhile, never back in time.
  insert into pgshield.rate_limit_state as s
    (key, policy, window_seconds, algorithm, limit_value, window_start, count, prev_count, tat, expires_at)
  values (p_key, '', p_window_seconds, p_algorithm, p_limit, null, 0, 0, null, pgshield.now())
  on conflict (key, policy, window_seconds) do update set count = s.count where false;
  v_now_us := greatest(v_now_us, pgshield.rate_limit_now_us());
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

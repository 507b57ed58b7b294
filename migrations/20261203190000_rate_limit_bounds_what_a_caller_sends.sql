-- rate_limit: what a caller's input can cost.
-- * An unknown policy's 22023 echoed the whole p_policy (an 8 MB name came
--   back in the error and went to the server log): at most 64 characters now
--   (a policy name has at most 63).
-- * An endpoint multiplier large enough made p_cost * multiplier overflow
--   bigint (22003 on every call of that endpoint): a cost is capped just past
--   the largest limit, so such a call is a denial with retry_after_ms -1.
-- * Usage recorded on a token bucket moves its tat at most 100 years ahead:
--   a large amount on a small limit made reset_at leave the timestamp range
--   (22008, nothing recorded: the subject kept its quota) or pass year 9999
--   (committed, and no client could read a decision of that subject again).

set local lock_timeout = '5s';
set local statement_timeout = '60s';
set local search_path = pg_catalog, pg_temp;

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
